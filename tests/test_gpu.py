"""GPU kernels against the CPU path on the same inputs (marked ``gpu``: skipped without a
device). The checks are benchmarks/gpu_check.py's sections at small sizes, so the test
suite and the one-shot device script judge with the same code; the dry run of that
script (no CuPy) is tested here too and runs everywhere."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_gpu_check_dry_run(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--cpu-dry-run", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dry_run"] and res["card"] == "cpu-dry-run"
    # only a missing torch may stop a section in the dry run
    assert all("torch is not installed" in v for v in res["errors"].values()), res["errors"]
    assert all(c["ok"] for s in res["checks"].values() for c in s.values() if isinstance(c, dict))
    assert "ais" in res["timings"] and "log_z_small" in res["timings"]
    printed = capsys.readouterr().out
    assert printed.rstrip().splitlines()[-1].startswith("wrote ")
    assert "checks:" in printed


def test_gpu_learning_gap_dry_run(tmp_path, capsys):
    import gpu_learning_gap  # noqa: PLC0415
    assert gpu_learning_gap.main(["--cpu-dry-run", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "gpu_learning_gap_dry.json").read_text())
    for mode in ("sync_every_1", "sync_every_10"):     # numpy stands in: identical to the CPU
        checks = res["train_follow"][mode]["checks"]["train_follow"]
        assert checks and all(c["ok"] and c["rel_err"] == 0 for c in checks.values()), checks
    for run in ("gpu_graph", "gpu_eager", "gpu_host"):
        assert sorted(res[run]["curve"]) == sorted(res[run]["acs_active"]) == ["2", "4", "6"]
    np.testing.assert_equal(res["gpu_graph"]["curve"], res["gpu_eager"]["curve"])
    late = res["gpu_graph"]["late_follow"]          # from the first run's last state
    assert late["ok"] and late["from_step"] == 6 and late["valid_rel_diff"] == 0
    assert [r["drift_gpu"] for r in late["rows"]] == [0.0] * 4
    assert all(r["drift_control"] > 0 for r in late["rows"])
    assert "late_follow" not in res["gpu_eager"]
    assert any(k.startswith("mnist-thesis") for k in res["cpu_curves"])
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("wrote ")


def test_gpu_thesis_run_dry_run(tmp_path, capsys):
    import gpu_thesis_run  # noqa: PLC0415
    assert gpu_thesis_run.main(["--cpu-dry-run", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "gpu_thesis_run_dry.json").read_text())
    assert res["overrides"] == {} and res["config"]["plateau_patience"] == 0   # the preset's
    steps = [p["step"] for p in res["held_out_curve"]]
    assert steps and steps == sorted(steps) and all(s % 5 == 0 for s in steps)
    assert res["train"]["steps"] == 40 == steps[-1] and res["train"]["images_per_second"] > 0
    assert list(res["first_crossings"]) == [str(t) for t in gpu_thesis_run.THRESHOLDS]
    assert all(0 < p["valid_max_y"] <= 1 and 0 <= p["valid_max_y_99"] <= 1 for p in res["held_out_curve"])
    assert "first_decisive_manager" in res
    for which in ("final", "best"):
        ev = res[f"eval_{which}"]
        assert ev["n_test"] == 200 and 0 < ev["recon_error_test_nodropout"] < 1
        assert 0 <= ev["label25_error"] <= 1
    assert res["eval_final"]["step"] == res["train"]["steps"]
    assert res["eval_best"]["step"] == res["train"]["best"]["step"] and "code_search" not in res["eval_best"]
    search = res["eval_final"]["code_search"]          # the encoder's share of the error
    assert search["n_images"] == 50 and search["searched_error"] < search["encoder_error"]
    # every snapshot (each 10th step in the dry run) evaluated, and the final state
    snapshot_steps = [s["step"] for s in res["snapshots"]]
    assert snapshot_steps == [10, 20, 30, 40]      # the last one is the final state
    curve = res["label25_curve"]
    assert [p["step"] for p in curve] == sorted({*snapshot_steps, res["train"]["steps"]})
    assert curve[-1]["label25_error"] == res["eval_final"]["label25_error"]
    assert all(0 < a["time_s"] < b["time_s"] for a, b in zip(curve, curve[1:]))
    assert list(res["label25_first_crossings"]) == [str(t) for t in gpu_thesis_run.LABEL25_THRESHOLDS]
    printed = capsys.readouterr().out.rstrip().splitlines()
    assert printed[-1].startswith("wrote ") and printed[-2].startswith("thesis (2.6.2")
    assert any(line.startswith("final (step") and "25-label error" in line for line in printed)
    assert any(line.startswith("manager: a y_i >= 0.99") for line in printed)


def test_gpu_thesis_run_first_crossings():
    import gpu_thesis_run  # noqa: PLC0415
    curve = [{"step": 200, "time_s": 1.0, "valid_recon_nodropout": 0.05},
             {"step": 400, "time_s": 2.0, "valid_recon_nodropout": 0.029},
             {"step": 600, "time_s": 3.0, "valid_recon_nodropout": 0.031},
             {"step": 800, "time_s": 4.0, "valid_recon_nodropout": 0.02}]
    hits = gpu_thesis_run.first_crossings(curve, (0.04, 0.03, 0.02, 0.0069))
    assert hits == {"0.04": {"step": 400, "time_s": 2.0}, "0.03": {"step": 400, "time_s": 2.0},
                    "0.02": {"step": 800, "time_s": 4.0}, "0.0069": None}


def test_gpu_check_rejects_unknown_section():
    with pytest.raises(SystemExit):
        gpu_check.main(["--cpu-dry-run", "--sections", "nope"])


def _small_ctx():
    ctx = gpu_check.Ctx(dry=False)
    ctx.render = dict(B=12, K=3, T=6, H=14)
    ctx.rbm = dict(nv=64, nh=32, n=16)
    ctx.logz_small = (40, 10)
    ctx.logz_big = (40, 12)
    ctx.inner, ctx.outer = 2, 2
    ctx.train_config = ("mnist-quick", dict(batch_size=32, encoder_hidden=64, decoder_hidden=32))
    ctx.train_seconds, ctx.train_images, ctx.cpu_train_steps = 1.0, 128, 1
    ctx.rbm_estimator = dict(nh=64, n=400, cpu_updates=3, gpu_updates=20)
    return ctx


@pytest.mark.gpu
@pytest.mark.parametrize("section", [name for name, _ in gpu_check.SECTIONS])
def test_gpu_section(section):
    ctx = _small_ctx()
    res = {"checks": {}, "timings": {}, "errors": {}}
    dict(gpu_check.SECTIONS)[section](ctx, res)
    failed = {f"{s}/{k}": c for s, cs in res["checks"].items() for k, c in cs.items()
              if isinstance(c, dict) and not c["ok"]}
    assert not failed, failed
    assert res["checks"], "no checks ran"
