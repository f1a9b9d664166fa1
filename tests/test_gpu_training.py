"""Training on the GPU against the CPU (marked ``gpu``: skipped without a device; they
passed on an H100 on 2026-11-27): the BinaryRBM estimator's fused PCD/FPCD update against
the array reference with the same uniforms, its learning against the CPU estimator's, exact
log Z routed to the device kernel, and the capsule model's loss and gradients on CuPy
against numpy for a tiny config."""
import numpy as np
import pytest

from lab.backend import get_backend, to_numpy

pytestmark = pytest.mark.gpu


def _binary_data(n=200, nv=36, seed=0):
    """Bars: a few prototype patterns with flipped bits (an RBM with few hidden units learns them)."""
    rng = np.random.default_rng(seed)
    protos = (rng.random((4, nv)) < 0.4)
    x = protos[rng.integers(0, 4, n)]
    flip = rng.random((n, nv)) < 0.05
    return (x ^ flip).astype(np.float32)


@pytest.mark.parametrize("algorithm", ["pcd", "fpcd"])
def test_rbm_fused_update_matches_reference_update(algorithm):
    from lab.undirected import BinaryRBM
    from lab.undirected.gpu_update import reference_update
    X = _binary_data(20)
    rbm = BinaryRBM(16, algorithm=algorithm, learning_rate=0.05, batch_size=20, n_fantasy=20,
                    weight_decay=1e-3, learning_rate_schedule="constant", random_state=0, device="gpu")
    rbm._gpu_graph = False
    rbm.partial_fit(X)                                 # initialise + one fused update
    assert rbm._gpu_update is not None
    before = {k: to_numpy(getattr(rbm, k)).copy() for k in
              ("components_", "intercept_visible_", "intercept_hidden_", "fantasy_particles_")}
    fast = None
    if algorithm == "fpcd":
        fast = tuple(to_numpy(getattr(rbm, k)).copy() for k in
                     ("fast_components_", "fast_intercept_visible_", "fast_intercept_hidden_"))
    u_h, u_v = rbm._gpu_update.uniforms()
    rbm.partial_fit(X)
    W, b, c, particles, new_fast = reference_update(
        before["components_"], before["intercept_visible_"], before["intercept_hidden_"],
        before["fantasy_particles_"], X, u_h, u_v, fast=fast, lr=0.05, fast_lr=0.05,
        fast_decay=rbm.fast_decay, weight_decay=1e-3)
    assert (to_numpy(rbm.fantasy_particles_) != particles).mean() < 0.01   # near-ties only
    for got, want in ((rbm.components_, W), (rbm.intercept_visible_, b), (rbm.intercept_hidden_, c)):
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-4, atol=1e-6)
    if fast is not None:
        np.testing.assert_allclose(to_numpy(rbm.fast_components_), new_fast[0], rtol=1e-4, atol=1e-6)
    assert rbm.n_updates_ == 2 and rbm._n_seen == 40


def test_rbm_gpu_learns_like_the_cpu_and_exact_log_z_on_the_device():
    from lab.undirected import BinaryRBM
    from lab.undirected.partition import rbm_log_partition
    X = _binary_data(400)
    lls = {}
    for device in ("cpu", "gpu"):
        rbm = BinaryRBM(10, algorithm="fpcd", learning_rate=0.05, batch_size=20, n_updates=400,
                        visible_bias_init="data", random_state=1, device=device).fit(X)
        lz = rbm.log_partition("exact")
        ref = rbm_log_partition(*(to_numpy(a).astype(np.float64) for a in
                                  (rbm.components_, rbm.intercept_visible_, rbm.intercept_hidden_)))
        assert lz.value == pytest.approx(ref, abs=1e-6)
        lls[device] = rbm.score(X)
        assert np.isfinite(lls[device])
    # different random streams: the same learning, not the same numbers
    assert abs(lls["gpu"] - lls["cpu"]) < 1.0, lls


def _tiny_capsules(**kw):
    from lab.capsules import CapsuleConfig
    base = dict(name="tiny", model="mixture", image_size=12, n_components=3, n_acs=3,
                template_size=5, n_distortions=2, encoder_hidden=24, decoder_hidden=16,
                batch_size=16, n_valid=16, eval_every=5, optimizer="conservative")
    base.update(kw)
    return CapsuleConfig(**base)


def _images(n, size=12, seed=0):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gpu_check import stand_in_images
    return stand_in_images(n, size=size, seed=seed)


@pytest.mark.parametrize("model", ["mixture", "ac"])
def test_capsule_loss_and_gradients_gpu_equal_cpu(model):
    from lab.capsules import build_model
    cfg = _tiny_capsules(model=model, **({"n_components": 1, "n_distortions": 0} if model == "ac" else {}))
    x = _images(16)
    cpu = build_model(cfg, seed=0)
    gpu = build_model(cfg, seed=0, backend=get_backend("gpu"))
    lc, terms_c, _ = cpu.loss(x, train=False)
    lg, terms_g, _ = gpu.loss(x, train=False)
    assert type(lg.data).__module__.startswith("cupy")
    assert lg.item() == pytest.approx(lc.item(), rel=1e-4)
    for k in terms_c:
        assert terms_g[k] == pytest.approx(terms_c[k], rel=1e-3, abs=1e-9), k
    lc.backward()
    lg.backward()
    a = np.concatenate([to_numpy(gpu.params[k].grad).ravel() for k in sorted(cpu.params)])
    b = np.concatenate([cpu.params[k].grad.ravel() for k in sorted(cpu.params)])
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-3


def test_capsule_trainer_on_the_gpu_trains_and_checkpoints(tmp_path):
    from lab.capsules.trainer import CapsuleTrainer
    x = _images(96)
    tr = CapsuleTrainer(_tiny_capsules(), x[:80], x[80:], seed=0, device="gpu", sync_every=5)
    ms = [tr.step() for _ in range(30)]
    checked = [m for m in ms if "loss" in m]
    assert len(checked) == 6 and all(np.isfinite(m["loss"]) for m in checked)
    assert not tr.events
    path = tr.save(tmp_path / "g.npz")
    back = CapsuleTrainer.load(path, x[:80], x[80:], device="cpu")
    np.testing.assert_array_equal(back.model.params["encoder.W1"].data,
                                  to_numpy(tr.model.params["encoder.W1"].data))
    assert np.isfinite(back.step()["loss"])


def test_capsule_trainer_graph_replays_its_checks_and_counts_rules_eagerly():
    """The recorded step replays on checks too (they read its outputs); only the
    optimizer's rule-counting step (every 10th check) runs eagerly."""
    from lab.capsules.trainer import CapsuleTrainer
    x = _images(96)
    eager, graphed = (CapsuleTrainer(_tiny_capsules(), x[:80], None, seed=0, device="gpu",
                                     sync_every=5, graph=g) for g in (False, True))
    checks = {"eager": [], "graph": []}
    for _ in range(55):
        for who, tr in (("eager", eager), ("graph", graphed)):
            m = tr.step()
            if "loss" in m:
                checks[who].append((m["step"], m["loss"], "rule_rule3" in m))
    assert graphed.graph_info() == {"captures": 1, "replays": 51, "error": None}
    for (se, le, re), (sg, lg, rg) in zip(checks["eager"], checks["graph"]):
        assert se == sg and re == rg == (se == 50)
        assert np.isfinite(lg)
    for (_, le, _), (_, lg, _) in list(zip(checks["eager"], checks["graph"]))[:2]:
        assert lg == pytest.approx(le, rel=1e-3)            # the replayed check's own loss


def test_rbm_ais_on_the_gpu_brackets_exact_log_z():
    """BinaryRBM(device="gpu").log_partition("ais") takes the batched, graph-replayed AIS
    (lab.undirected.gpu_update) and its interval holds the exact value."""
    from lab.undirected import BinaryRBM
    from lab.undirected.ais import quick_betas
    X = _binary_data(400)
    rbm = BinaryRBM(16, algorithm="pcd", learning_rate=0.05, batch_size=20, n_fantasy=20, n_updates=300,
                    random_state=2, device="gpu").fit(X)
    exact = rbm.log_partition("exact").value
    est = rbm.log_partition("ais", n_runs=500, betas=quick_betas(3000), random_state=4)
    assert est.lower <= exact <= est.upper, (est, exact)
    assert abs(est.value - exact) < 0.5
