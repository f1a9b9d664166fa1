"""CapsuleTrainer: learning, checkpoints, resume equality, NaN rollback, CLI (thesis 2.5-2.6)."""
import json
import os
import re
import threading

import numpy as np
import pytest

from lab.capsules import CapsuleConfig, load
from lab.capsules.analysis import active_acs
from lab.capsules.trainer import CapsuleTrainer
from lab.checkpoint import CheckpointError, NonFiniteError, load_checkpoint


def tiny_config(**kw):
    base = dict(name="tiny", model="mixture", image_size=8, n_components=3, n_acs=2,
                template_size=3, n_distortions=2, encoder_hidden=12, decoder_hidden=8,
                batch_size=16, n_valid=16, eval_every=5, optimizer="adam",
                optimizer_kwargs={"lr": 1e-2})
    base.update(kw)
    return CapsuleConfig(**base)


def blobs(n=96, size=8, seed=0):
    """Bright Gaussian blobs at random places: a problem a tiny capsule model can learn."""
    rng = np.random.default_rng(seed)
    r = np.arange(size)
    out = np.zeros((n, size, size), dtype=np.float32)
    for i in range(n):
        c = rng.uniform(2, size - 3, 2)
        out[i] = np.exp(-((r[:, None] - c[0]) ** 2 + (r[None, :] - c[1]) ** 2) / 3.0)
    return out


@pytest.fixture(scope="module")
def data():
    x = blobs(96)
    return x[:80], x[80:]


def params_of(tr):
    return {k: p.data.copy() for k, p in tr.model.params.items()}


def test_loss_decreases(data):
    tr = CapsuleTrainer(tiny_config(), data[0], data[1], seed=0)
    before = tr.evaluate()
    losses = [tr.step()["recon"] for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    assert tr.evaluate() < before
    m = tr.history[-1]
    for key in ("loss", "recon_per_pixel", "weight_decay", "determinant", "usage",
                "code_decay", "mixture_max_y", "step_scale", "seconds"):
        assert key in m, key
    assert "valid_recon_nodropout" in tr.history[4]
    periodic = [m for m in tr.history if "valid_recon_nodropout" in m][-1]
    assert periodic["valid_recon_nodropout"] == pytest.approx(tr.evaluate(), rel=1e-6)
    intensities = tr.model.contributions(tr.valid_images)["intensities"]
    assert periodic["valid_acs_active"] == active_acs(intensities)
    assert 0 < periodic["valid_acs_active"] <= tr.config.n_acs
    max_y = tr.model.encode(tr.valid_images).mixture.max(axis=1)       # the test-time manager
    assert periodic["valid_max_y"] == pytest.approx(max_y.mean(), rel=1e-5)
    assert periodic["valid_max_y_99"] == np.mean(max_y >= 0.99)


def test_held_out_report_has_manager_decisiveness_only_for_a_mixture(data):
    single = CapsuleTrainer(tiny_config(model="single_cc", n_components=1, manager_noise=0.0),
                            data[0], data[1], seed=0)
    assert set(single.held_out_report()) == {"valid_recon_nodropout", "valid_acs_active"}
    mix = CapsuleTrainer(tiny_config(), data[0], data[1], seed=0)
    assert 1 / 3 <= mix.held_out_report()["valid_max_y"] <= 1


@pytest.mark.parametrize("optimizer", ["conservative", "adam"])
def test_resume_gives_the_same_trajectory(data, tmp_path, optimizer):
    cfg = tiny_config(optimizer=optimizer, optimizer_kwargs={})
    a = CapsuleTrainer(cfg, data[0], data[1], seed=3)
    for _ in range(8):
        a.step()
    b = CapsuleTrainer(cfg, data[0], data[1], seed=3)
    for _ in range(4):
        b.step()
    path = b.save(tmp_path / "mid.npz")
    del b
    c = CapsuleTrainer.load(path, data[0], data[1])
    assert c.step_count == 4
    for _ in range(4):
        c.step()
    pa, pc = params_of(a), params_of(c)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pc[k], err_msg=k)
    assert a.history[-1]["loss"] == c.history[-1]["loss"]


def test_checkpoint_round_trip_and_model_load(data, tmp_path):
    tr = CapsuleTrainer(tiny_config(), data[0], data[1], seed=1)
    for _ in range(3):
        tr.step()
    path = tr.save(tmp_path / "final.npz")
    arrays, meta = load_checkpoint(path)
    assert meta["step"] == 3 and meta["config"]["n_acs"] == 2
    assert any(k.startswith("opt/") for k in arrays) and "data/order" in arrays
    model = load(tmp_path)                       # a run directory works too
    np.testing.assert_array_equal(model.reconstruct(data[1]), tr.model.reconstruct(data[1]))
    code = model.encode(data[1][:2])
    assert code.mixture.shape == (2, 3)


def test_corrupted_checkpoint_is_rejected(data, tmp_path):
    tr = CapsuleTrainer(tiny_config(), data[0], data[1], seed=1)
    path = tr.save(tmp_path / "c.npz")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        CapsuleTrainer.load(path, data[0], data[1])
    (tmp_path / "t.npz").write_bytes(bytes(raw[:200]))
    with pytest.raises(CheckpointError):
        load(tmp_path / "t.npz")


def test_nan_triggers_rollback_and_step_cut(data, tmp_path):
    tr = CapsuleTrainer(tiny_config(), data[0], data[1], seed=2, good_every=2)
    for _ in range(4):
        tr.step()
    good = params_of(tr)                         # captured at step 4
    scale = tr.optimizer.step_scale
    tr.model.params["encoder.W1"].data[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        tr.save(tmp_path / "nan.npz")            # a NaN never reaches the disk
    assert not (tmp_path / "nan.npz").exists()
    m = tr.step()
    assert m["rollback"] == 1 and "non-finite" in m["rollback_reason"]
    assert tr.optimizer.step_scale == pytest.approx(scale * tr.config.nan_step_cut)
    assert len(tr.events) == 1
    now = params_of(tr)
    for k in good:
        np.testing.assert_array_equal(now[k], good[k])
    m = tr.step()                                # training goes on, finite
    assert "rollback" not in m and np.isfinite(m["loss"])
    tr.save(tmp_path / "ok.npz")
    # a divergent update (huge step) is caught after the update too
    tr.optimizer.step_scale = 1e30
    m = tr.step()
    if "rollback" in m:
        assert all(np.isfinite(p.data).all() for p in tr.model.params.values())


def test_snapshot_from_another_thread(data):
    tr = CapsuleTrainer(tiny_config(), data[0], data[1], seed=0)
    snaps = []

    def watch():
        for _ in range(5):
            snaps.append(tr.snapshot())
    t = threading.Thread(target=watch)
    t.start()
    for _ in range(5):
        tr.step()
    t.join()
    s = tr.snapshot()
    assert s["templates"].shape == (2, 1, 3, 3)
    assert s["reconstructions"].shape == s["originals"].shape == (8, 8, 8)
    assert s["step"] == 5 and len(snaps) == 5
    # a snapshot never draws from the training stream
    state = tr.stream.get_state()
    tr.snapshot()
    assert tr.stream.get_state() == state


def test_conservative_rule_fractions_are_logged(data):
    tr = CapsuleTrainer(tiny_config(optimizer="conservative", optimizer_kwargs={}),
                        data[0], data[1], seed=0)
    ms = [tr.step() for _ in range(3)]
    assert any(k.startswith("rule_rule") for k in ms[-1])
    from lab.capsules.analysis import rule_dominance
    rd = rule_dominance(tr.history)
    assert len(rd["step"]) == 3 and "rule4" in rd


def test_cli_set_overrides(capsys):
    from lab.cli import main
    from lab.commands.train_capsules import parse_overrides
    assert parse_overrides(["a=5", "b=[1, 2]", "c=adam"]) == {"a": 5, "b": [1, 2], "c": "adam"}
    assert main(["train", "capsules", "--steps", "1", "--set", "plateau_patience"]) == 2
    assert "expected KEY=JSON" in capsys.readouterr().err
    assert main(["train", "capsules", "--steps", "1", "--set", "no_such_field=1"]) == 2
    assert "unknown config keys ['no_such_field']" in capsys.readouterr().err


def test_cli_train_and_eval(tmp_path, capsys):
    if not os.environ.get("LAB_DATA_DIR"):
        pytest.skip("LAB_DATA_DIR not set (MNIST needed)")
    from lab.cli import main
    out = tmp_path / "run"
    small = ["--set", "n_components=3", "--set", "n_acs=2", "--set", "encoder_hidden=8",
             "--set", "decoder_hidden=6", "--set", "n_distortions=2", "--set", "batch_size=20",
             "--set", "n_valid=20", "--set", "eval_every=2"]
    assert main(["train", "capsules", "--config", "mnist-quick", "--steps", "3", "--out", str(out),
                 "--checkpoint-seconds", "0", "--keep-every", "2", *small]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "event" not in r] == [1, 2, 3]
    assert (out / "final.npz").exists() and list(out.glob("ckpt-*.npz"))
    assert main(["train", "capsules", "--config", "mnist-quick", "--steps", "2", "--out", str(out),
                 "--resume", "--checkpoint-seconds", "1000", "--keep-every", "2", *small]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 5          # resumed from final.npz
    # --keep-every: the states at steps 2 and 4 stay, outside the pruned ckpt-*.npz
    assert sorted(p.name for p in out.glob("snapshot-*.npz")) == ["snapshot-000000002.npz",
                                                                  "snapshot-000000004.npz"]
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["time"] >= 0) for e in events if e.get("event") == "snapshot"] == [
        (2, True), (4, True)]           # with the wall time into its run, for time-to-X curves
    assert main(["eval", "capsules", str(out / "snapshot-000000002.npz"), "--n-test", "50",
                 "--n-train", "100", "--no-kmeans", "--code-search", "20",
                 "--code-search-steps", "30"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["step"] == 2 and res["code_search"]["n_images"] == 20
    assert res["code_search"]["searched_error"] < res["code_search"]["encoder_error"]
    assert main(["eval", "capsules", str(out), "--n-test", "200", "--n-train", "500"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("recon_error_test_dropout", "recon_error_test_nodropout",
                "recon_error_test_nodropout_percent_variance", "label25_error", "kmeans10_accuracy",
                "label25_error_majority_labels"):
        assert res[key] is not None, key
    assert 0 <= res["label25_details"]["majority_agreement"] <= res["label25_details"]["n_labels_used"]
    assert res["step"] == 5
    # best.npz: the lowest held-out error seen (evaluated every 2 steps here)
    best = json.loads((out / "best.json").read_text())
    valids = [r["valid_recon_nodropout"] for r in lines if "valid_recon_nodropout" in r]
    assert best["valid_recon_nodropout"] <= min(valids) + 1e-12 and (out / "best.npz").exists()
    assert main(["eval", "capsules", str(out), "--which", "best", "--n-test", "50",
                 "--n-train", "100", "--no-kmeans"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == best["step"]
    # the linear reference: PCA with as many components as the code has numbers
    assert res["pca_same_code_size"]["n_components"] == 7 + 2    # the selected CC's pose, distortions
    assert 0 < res["pca_same_code_size"]["recon_error_test"] < res["data_variance"]


def test_fan_in_scaled_step_sizes(data):
    from lab.capsules.trainer import step_size_overrides
    from lab.optim import DEFAULT_ALPHAS
    cfg = tiny_config(encoder_hidden=40, step_fan_in_ref=16, optimizer="conservative",
                      optimizer_kwargs={})
    tr = CapsuleTrainer(cfg, data[0], data[1], seed=0)
    over = step_size_overrides(tr.model.params, "conservative", {}, 16)
    # 64 input pixels and 40 hidden units feed encoder matrices: both wider than 16
    assert over["encoder.W1"]["alphas"][2] == pytest.approx(DEFAULT_ALPHAS[2] * 16 / 64)
    assert over["encoder.W2"]["alphas"][2] == pytest.approx(DEFAULT_ALPHAS[2] * 16 / 40)
    assert over["encoder.W2"]["alphas"][0] == DEFAULT_ALPHAS[0]        # the cap is not scaled
    assert "encoder.b1" not in over and "ccr.W1" not in over           # biases, narrow matrices
    assert tr.optimizer.hyper_for("encoder.W2")["alphas"] == over["encoder.W2"]["alphas"]
    adam = step_size_overrides(tr.model.params, "adam", {"lr": 0.01}, 16)
    assert adam["encoder.W1"]["lr"] == pytest.approx(0.01 * 16 / 64)
    assert step_size_overrides(tr.model.params, "adam", {}, 0) == {}
    tr.step()


def test_encoder_step_scale(data):
    """``encoder_step_scale``: every encoder step size times the factor, with or without
    the fan-in scaling; one step equals a global ``scale_step_sizes`` for the encoder and
    leaves the decoder's at full size."""
    from lab.capsules.trainer import step_size_overrides
    from lab.optim import DEFAULT_ALPHAS
    params = CapsuleTrainer(tiny_config(encoder_hidden=40), data[0], data[1]).model.params
    half = step_size_overrides(params, "conservative", {}, 16, encoder_scale=0.5)
    assert half["encoder.b1"]["alphas"] == tuple(a * 0.5 for a in DEFAULT_ALPHAS)
    a1, a2, a3, a4 = DEFAULT_ALPHAS
    assert half["encoder.W1"]["alphas"] == pytest.approx((a1 / 2, a2 / 8, a3 / 8, a4 / 8))
    assert not any(k.startswith("ccr.") or k.startswith("acs.") for k in half)
    assert step_size_overrides(params, "sgd", {}, 0, 0.5)["encoder.W1"] == {"lr": 0.005}
    assert step_size_overrides(params, "adam", {"lr": 0.02}, 0, 0.5)["encoder.bo"] == {"lr": 0.01}
    for bad in (0.0, -1, float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="encoder_step_scale=.*: expected a number > 0"):
            tiny_config(encoder_step_scale=bad)
    cfg = dict(optimizer="conservative", optimizer_kwargs={})
    scaled = CapsuleTrainer(tiny_config(encoder_step_scale=0.5, **cfg), data[0], data[1], seed=0)
    whole = CapsuleTrainer(tiny_config(**cfg), data[0], data[1], seed=0)
    whole.optimizer.scale_step_sizes(0.5)
    start = params_of(whole)
    scaled.step()
    whole.step()
    after_s, after_w = params_of(scaled), params_of(whole)
    for k in start:
        if k.startswith("encoder."):
            np.testing.assert_array_equal(after_s[k], after_w[k], err_msg=k)
    moved = [k for k in start if not k.startswith("encoder.")
             and not np.array_equal(after_s[k] - start[k], after_w[k] - start[k])]
    assert "ccr.W1" in moved and "acs.templates" in moved


def test_resume_continues_from_the_final_state_not_an_older_checkpoint(data, tmp_path):
    """``--resume`` after a finished run goes on from its ``final.npz`` (here the only
    state: no periodic checkpoint was due), exactly as one longer run."""
    from unittest import mock

    from lab.capsules.run import train_run
    cfg = tiny_config(optimizer="conservative", optimizer_kwargs={})
    with mock.patch("lab.capsules.run.load_data", return_value={"train": (data[0], None),
                                                                "valid": (data[1], None)}):
        train_run(cfg, tmp_path / "a", steps=7, progress=False, checkpoint_seconds=1e9)
        assert not list((tmp_path / "a").glob("ckpt-*.npz"))
        summary = train_run(cfg, tmp_path / "a", steps=5, progress=False, resume=True,
                            checkpoint_seconds=1e9)
        train_run(cfg, tmp_path / "b", steps=12, progress=False, checkpoint_seconds=1e9)
    assert summary["steps"] == 12 and summary["steps_this_run"] == 5
    a, b = load(tmp_path / "a"), load(tmp_path / "b")
    for k, p in b.params.items():
        np.testing.assert_array_equal(a.params[k].data, p.data, err_msg=k)
    steps = [json.loads(x)["step"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))                  # no step logged twice


def test_resume_takes_the_checkpoints_config_and_only_schedule_overrides(data, tmp_path, capsys):
    """A resumed run keeps its checkpoint's config, seed and optimizer (a caller that
    names others is refused), may switch the plateau rule on or change eval_every
    (logged as an event, saved in later checkpoints), and refuses to change anything
    else, all before anything is loaded."""
    from unittest import mock

    from lab.capsules.configs import ResumeConfigError
    from lab.capsules.run import train_run
    from lab.cli import main
    cfg = tiny_config()
    with mock.patch("lab.capsules.run.load_data", return_value={"train": (data[0], None),
                                                                "valid": (data[1], None)}) as ld:
        train_run(cfg, tmp_path / "a", steps=3, progress=False, checkpoint_seconds=1e9, seed=2)
        for asked, named in [({"config": tiny_config(name="other")}, "--config other"),
                             ({"seed": 0}, "--seed 0 (the checkpoint's is 2)"),
                             ({"optimizer": "conservative"}, "--optimizer conservative")]:
            with pytest.raises(ResumeConfigError, match=re.escape(named)):
                train_run(**{"config": None, **asked}, out_dir=tmp_path / "a", steps=1,
                          progress=False, resume=True)
        with pytest.raises(ResumeConfigError, match="no checkpoint to resume in"):
            train_run(None, tmp_path / "typo", steps=1, progress=False, resume=True)
        assert ld.call_count == 1 and not (tmp_path / "typo").exists()
        summary = train_run(None, tmp_path / "a", steps=2, progress=False, resume=True,
                            checkpoint_seconds=1e9, seed=2,         # restated, not changed
                            resume_overrides={"plateau_patience": 4, "eval_every": 1,
                                              "encoder_step_scale": 0.5,
                                              "n_components": 3})   # restated, not changed
    assert ld.call_args.args[0].n_components == 3 and summary["config"] == "tiny"
    assert summary["seed"] == 2 and summary["optimizer"] == "adam"
    final = load_checkpoint(tmp_path / "a" / "final.npz")[1]["config"]
    assert (final["plateau_patience"], final["eval_every"], final["n_components"]) == (4, 1, 3)
    assert final["encoder_step_scale"] == 0.5
    events = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "resume_overrides", "step": 3, "plateau_patience": 4, "eval_every": 1,
            "encoder_step_scale": 0.5} in events
    resumed = CapsuleTrainer.load(tmp_path / "a" / "final.npz", data[0], data[1])
    assert resumed.optimizer.hyper_for("encoder.W1")["lr"] == pytest.approx(0.5 * 1e-2)
    assert resumed.optimizer.hyper_for("ccr.W1")["lr"] == pytest.approx(1e-2)
    assert sum("valid_recon_nodropout" in e for e in events if e.get("step", 0) > 3) == 2
    with pytest.raises(ValueError, match="only eval_every, plateau_patience"):
        CapsuleTrainer.load(tmp_path / "a" / "final.npz", data[0], data[1],
                            overrides={"batch_size": 8})
    with pytest.raises(ValueError, match="plateau_patience=-1"):
        CapsuleTrainer.load(tmp_path / "a" / "final.npz", data[0], data[1],
                            overrides={"plateau_patience": -1})
    with pytest.raises(ValueError, match="encoder_step_scale=0: expected a number > 0"):
        CapsuleTrainer.load(tmp_path / "a" / "final.npz", data[0], data[1],
                            overrides={"encoder_step_scale": 0})
    assert main(["train", "capsules", "--steps", "1", "--resume", "--out", str(tmp_path / "a"),
                 "--set", "batch_size=8"]) == 2
    assert "--set batch_size: a resumed run keeps its checkpoint's config" in capsys.readouterr().err
    for option in (["--seed", "1"], ["--config", "mnist-quick"]):     # not silently ignored
        assert main(["train", "capsules", "--steps", "1", "--resume", "--out", str(tmp_path / "a"),
                     *option]) == 2
        assert f"{' '.join(option)} (the checkpoint's is" in capsys.readouterr().err
    assert main(["train", "capsules", "--steps", "1", "--resume", "--out", str(tmp_path / "b")]) == 2
    assert "no checkpoint to resume in" in capsys.readouterr().err


def test_plateau_cuts_the_step_sizes_and_survives_a_resume(data, tmp_path, monkeypatch):
    """plateau_patience=2: after two held-out evaluations without a new best, every step
    size is halved (once per plateau); the counters go through a checkpoint, and a NaN
    rollback keeps the cut. patience 0 (the default): constant step sizes."""
    cfg = tiny_config(optimizer="conservative", optimizer_kwargs={}, eval_every=1, plateau_patience=2)
    assert tiny_config().plateau_patience == 0
    errors = iter([1.0, 0.9, 0.95, 0.91, 0.8, 0.85, 0.86, 0.7])
    tr = CapsuleTrainer(cfg, data[0], data[1], seed=0)
    monkeypatch.setattr(tr, "held_out_report", lambda: {"valid_recon_nodropout": next(errors)})
    cut, scales = [], []
    for _ in range(5):
        m = tr.step()
        cut.append(m.get("step_cut", 0))
        scales.append(tr.optimizer.step_scale)
    assert cut == [0, 0, 0, 1, 0] and scales == [1.0, 1.0, 1.0, 0.5, 0.5] and tr.step_cuts == 1
    back = CapsuleTrainer.load(tr.save(tmp_path / "p.npz"), data[0], data[1])
    monkeypatch.setattr(back, "held_out_report", lambda: {"valid_recon_nodropout": next(errors)})
    assert (back.step_cuts, back._plateau_best, back._plateau_waited) == (1, 0.8, 0)
    assert [back.step().get("step_cut", 0) for _ in range(3)] == [0, 1, 0]   # 0.85, 0.86: cut; 0.7
    assert back.optimizer.step_scale == 0.25
    back.model.params["encoder.W1"].data[0, 0] = np.nan
    monkeypatch.setattr(back, "held_out_report", lambda: {"valid_recon_nodropout": 0.5})
    assert back.step()["rollback"] == 1
    assert back.optimizer.step_scale == 0.25 * cfg.nan_step_cut        # the plateau cuts kept


def test_run_options_that_cannot_go_together(tmp_path, capsys):
    from lab.capsules.run import check_run_options, train_run
    from lab.cli import main
    with pytest.raises(ValueError, match="--minutes"):
        check_run_options(None, None)
    with pytest.raises(ValueError, match="fresh runs"):
        train_run(CapsuleConfig(), tmp_path / "run", steps=1, resume=True, host_random=True)
    assert not (tmp_path / "run").exists()          # refused before anything was written
    assert main(["train", "capsules", "--steps", "1", "--resume", "--host-random",
                 "--out", str(tmp_path / "cli")]) == 2
    assert "fresh runs" in capsys.readouterr().err
    assert main(["train", "capsules", "--steps", "1", "--keep-every", "0",
                 "--out", str(tmp_path / "cli")]) == 2
    assert "--keep-every" in capsys.readouterr().err


def test_evaluate_reports_the_training_set_errors_of_fig_2_14(data, monkeypatch):
    """The training-set errors are measured like the test set's, on the first
    TRAIN_RECON_IMAGES training images: with the test set as the training set they agree."""
    from lab.capsules import evaluate
    from lab.capsules.autoencoders import build_model
    model = build_model(tiny_config(dataset="olivetti"), seed=3)
    x = data[0]
    monkeypatch.setattr(evaluate, "TRAIN_RECON_IMAGES", 50)
    res = evaluate.evaluate_model(model, {"train": (x[:50], None), "test": (x[:50], None)})
    assert res["n_train_recon"] == 50
    for name in ("dropout", "nodropout", "dropout_percent_variance", "nodropout_percent_variance"):
        assert res[f"recon_error_train_{name}"] == res[f"recon_error_test_{name}"] > 0, name
    assert res["recon_error_test_dropout"] != res["recon_error_test_nodropout"]
    # only the first 50 of 80 training images: the same numbers again
    more = evaluate.evaluate_model(model, {"train": (x, None), "test": (x[:50], None)})
    assert {k: v for k, v in more.items() if "_train_" in k} == {
        k: v for k, v in res.items() if "_train_" in k}
    direct = float(((model.reconstruct(x[:50]) - x[:50]) ** 2).mean())
    np.testing.assert_allclose(res["recon_error_train_nodropout"], direct, rtol=1e-6)  # float32
