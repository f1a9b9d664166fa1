"""`lab experiment`, `lab train rbm`, and the experiment functions on tiny stand-in data."""
import json

import numpy as np
import pytest

from lab.cli import build_parser, main
from lab.undirected import experiments as ex


def test_experiment_help_lists_every_experiment(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    text = capsys.readouterr().out
    for name in ex.EXPERIMENTS:
        assert name in text
    from lab.commands.experiment import _NAMES
    assert list(_NAMES) == list(ex.EXPERIMENTS) and _NAMES == ex.DESCRIPTIONS


def test_experiment_rejects_unknown_name(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["experiment", "fig9.9"])
    with pytest.raises(ValueError, match="unknown experiment"):
        ex.run("fig9.9")


def test_train_rbm_on_a_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "toy.npy"
    np.save(data, (rng.random((300, 10)) < 0.3).astype(np.uint8))
    out = tmp_path / "run"
    assert main(["train", "rbm", "--data", str(data), "--hidden", "4", "--updates", "20",
                 "--algorithm", "fpcd", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_updates"] == 20 and summary["eval"] == "exact"
    assert summary["test_log_likelihood"] < 0
    arrays = np.load(out / "rbm.npz")
    assert arrays["components_"].shape == (4, 10) and "fast_components_" in arrays
    assert main(["train", "rbm", "--data", str(data)]) == 2           # no bound
    assert main(["train", "rbm", "--data", str(tmp_path / "missing.npy"), "--updates", "1"]) == 2
    assert "--updates" in capsys.readouterr().err


def test_time_to_reach_interpolates_in_log_time():
    curve = [[10, 0.90], [40, 0.96], [160, 0.97]]
    assert ex.time_to_reach(curve, 0.85) == 10
    assert ex.time_to_reach(curve, 0.93) == pytest.approx(20.0)
    assert ex.time_to_reach(curve, 0.99) is None


# -- the experiment functions on tiny stand-in data -------------------------------------

@pytest.fixture
def tiny_data(monkeypatch):
    rng = np.random.default_rng(0)
    protos = rng.random((3, 16)) < 0.5

    def cases(n, seed):
        r = np.random.default_rng(seed)
        which = r.integers(0, 3, n)
        X = np.where(r.random((n, 16)) < 0.05, 1 - protos[which], protos[which]).astype(np.float32)
        return X, which

    monkeypatch.setattr(ex, "mnist_data", lambda seed=0: {
        "train": cases(300, 1), "valid": cases(100, 2), "test": cases(100, 3)})
    monkeypatch.setattr(ex, "outline_data", lambda n_train=0: {
        "train": cases(300, 4)[0], "valid": cases(50, 5)[0], "test": cases(50, 6)[0]})

    def patches():
        out = {}
        for k, split in enumerate(("train", "valid", "test")):
            from lab.undirected.mrf import unique_patterns
            rows, counts = unique_patterns(cases(200, 7 + k)[0][:, :9])
            out[split] = (rows, counts.astype(np.float64))
        out["train_entropy"] = 1.0
        return out

    monkeypatch.setattr(ex, "patch_data", patches)


def test_fig3_1_structure(tiny_data, tmp_path):
    res = ex.fig3_1(
        durations=[0.1], algorithms=["cd1", "pcd"], learning_rates={"cd1": [0.1], "pcd": [0.1, 0.3]},
        verbose=False)
    assert {r["algorithm"] for r in res["runs"]} == {"cd1", "pcd"} and len(res["runs"]) == 3
    assert all(r["test_ll"] < 0 and r["n_updates"] > 0 for r in res["runs"])
    assert set(res["curves"]) == {"cd1", "pcd"} and len(res["curves"]["pcd"]) == 1
    json.dumps(res)


def test_fig3_3_and_3_6_structure(tiny_data):
    res = ex.fig3_3(durations=[0.1], algorithms=["mfcd", "fpcd"], n_hidden=5, verbose=False)
    assert all(0 <= r["test_accuracy"] <= 1 for r in res["runs"])
    res = ex.fig3_6(durations=[0.05, 0.1], hidden_sizes=[4, 6], verbose=False)
    assert len(res["runs"]) == 8 and set(res["best_hidden"]) == {"pcd", "fpcd"}
    json.dumps(res)


def test_fig3_4_structure(tiny_data):
    res = ex.fig3_4(pl_durations=[0.1], pcd_durations=[0.1], exact_seconds=0.1, verbose=False)
    assert {r["algorithm"] for r in res["runs"]} == {"pl", "pcd", "exact"}
    assert set(res["summary"]) >= {"pl_test_ll", "pcd_test_ll", "exact_test_ll", "train_entropy"}
    assert res["thesis"]["pl_test_ll"] == -5.35


@pytest.mark.slow
def test_fig3_2_and_3_5_structure(tiny_data, monkeypatch):
    monkeypatch.setattr(ex, "quick_betas", lambda n=0: np.linspace(0, 1, 201))
    res = ex.fig3_2(quick=True, seconds=0.1, n_samples=4, n_steps=3, n_hidden=8, verbose=False)
    assert set(res["models"]) == {"pcd", "cd1"}
    assert np.asarray(res["models"]["pcd"]["samples"]).shape == (4, 16)
    res = ex.fig3_5(quick=True, durations=[0.1], algorithms=["cd1", "pcd"], verbose=False)
    assert len(res["runs"]) == 4 and all(np.isfinite(r["test_ll_ais"]) for r in res["runs"])
    json.dumps(res)


def test_experiment_settings_from_the_command_line(tiny_data, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "fig3.1", "--quick", "--quiet", "--out", str(out),
                 "--set", "durations=[0.1]", "--set", 'algorithms=["cd1", "pcd"]',
                 "--set", 'learning_rates={"pcd": [0.1, 0.3]}', "--set", "n_hidden=4"]) == 0
    res = json.loads((out / "fig3.1-quick-custom.json").read_text())
    assert res["settings"]["learning_rates"] == {"pcd": [0.1, 0.3]} and res["n_hidden"] == 4
    # the rates given replace the default for PCD only; CD-1 keeps its quick rate
    rates = sorted((r["algorithm"], r["learning_rate"]) for r in res["runs"])
    assert rates == [("cd1", ex.FIG31_LR["cd1"]), ("pcd", 0.1), ("pcd", 0.3)]
    assert not (out / "fig3.1-quick.json").exists()


@pytest.mark.parametrize("item, message", [
    ("durations", "expected KEY=VALUE"),
    ("durations=[60, 240", "must be JSON"),
    ("n_hiden=4", "has no setting n_hiden; its settings: durations, algorithms"),
    ('learning_rates={"fpdc": [0.1]}', "names ['fpdc'], which this run does not train"),
    ('learning_rates={"pcd": []}', "no rate for ['pcd']"),
])
def test_experiment_settings_errors_name_what_is_wrong(tiny_data, tmp_path, capsys, item, message):
    assert main(["experiment", "fig3.1", "--quick", "--out", str(tmp_path), "--set", item]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())        # nothing ran, nothing written
