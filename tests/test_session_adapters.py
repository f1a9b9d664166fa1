"""The RBM and capsule adapters under a TrainingSession (small synthetic data, no MNIST needed)."""
from __future__ import annotations

import numpy as np
import pytest

from lab.session import ModelViewer, TrainingSession

pytestmark = pytest.mark.timeout(90)


def digits(n=300, seed=0):
    """Blobby 28x28 grey images in [0, 1] (MNIST-like enough for an RBM to learn from)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    out = np.zeros((n, 28, 28), np.float32)
    for i in range(n):
        cx, cy = rng.uniform(8, 20, 2)
        out[i] = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rng.uniform(2, 5) ** 2))
    return out


@pytest.fixture(scope="module")
def rbm_trainer_factory():
    pytest.importorskip("lab.undirected")
    from lab.session.adapters import RBMSessionTrainer
    images = (digits(300, 0), digits(100, 1))

    def make(**kw):
        kw.setdefault("n_hidden", 8)
        kw.setdefault("eval_every", 5)
        kw.setdefault("n_eval", 50)
        kw.setdefault("batch_size", 20)
        return RBMSessionTrainer(images=images, **kw)
    return make


def test_rbm_adapter_runs_and_snapshots(rbm_trainer_factory):
    s = TrainingSession(rbm_trainer_factory(algorithm="fpcd"), snapshot_every=5)
    s.start(max_steps=12)
    assert s.join(60) and s.state == "finished", s.error
    snap = s.snapshot
    assert snap["fantasy"].shape == (64, 28, 28) or snap["fantasy"].shape[1:] == (28, 28)
    assert snap["fast_filters"].shape == (8, 28, 28) and snap["fast_magnitude"] >= 0
    steps, ll = s.history.series("loglik_valid")
    assert list(steps) == [1, 5, 10] and np.all(np.isfinite(ll)) and np.all(ll < 0)
    assert len(s.history.series("fast_magnitude")[0]) == 12
    s.close()


def test_rbm_adapter_pcd_has_no_fast_overlay(rbm_trainer_factory):
    s = TrainingSession(rbm_trainer_factory(algorithm="pcd", eval_every=0), snapshot_every=1)
    s.step_once()
    assert "fast_filters" not in s.snapshot and "fantasy" in s.snapshot
    s.close()


def test_rbm_resume_from_checkpoint_equals_uninterrupted(rbm_trainer_factory, tmp_path):
    full = TrainingSession(rbm_trainer_factory(seed=3), snapshot_every=100)
    full.start(max_steps=16)
    full.join(60)
    half = TrainingSession(rbm_trainer_factory(seed=3), snapshot_every=100)
    half.start(max_steps=8)
    half.join(60)
    path = half.checkpoint(tmp_path / "rbm.npz")
    resumed = TrainingSession.from_checkpoint(path, factory=lambda meta: rbm_trainer_factory(seed=3))
    resumed.start(max_steps=16)
    resumed.join(60)
    for name in ("recon_error", "fast_magnitude", "loglik_valid"):
        np.testing.assert_array_equal(resumed.history.series(name)[1], full.history.series(name)[1])
    np.testing.assert_array_equal(resumed.trainer.rbm.components_, full.trainer.rbm.components_)
    attached = TrainingSession.attach(path, factory=lambda meta: rbm_trainer_factory(seed=3))
    assert attached.read_only and attached.snapshot.step == 8 and "fantasy" in attached.snapshot
    for s in (full, half, resumed, attached):
        s.close()


def test_rbm_observed_equals_unobserved(rbm_trainer_factory):
    a = TrainingSession(rbm_trainer_factory(seed=4), snapshot_every=1)
    a.start(max_steps=15)
    a.join(60)
    b = TrainingSession(rbm_trainer_factory(seed=4), snapshot_every=1)
    seen = []
    b.subscribe(lambda snap: seen.append(snap["fantasy"].sum()))
    b.start(max_steps=15)
    b.join(60)
    np.testing.assert_array_equal(a.history.series("recon_error")[1], b.history.series("recon_error")[1])
    np.testing.assert_array_equal(a.trainer.rbm.components_, b.trainer.rbm.components_)
    assert seen
    a.close()
    b.close()


@pytest.fixture(scope="module")
def capsule_trainer():
    pytest.importorskip("lab.capsules.trainer")
    from lab.capsules.configs import get_config
    from lab.capsules.trainer import CapsuleTrainer
    from lab.session.adapters import CapsuleSessionTrainer
    config = get_config("mnist-quick", batch_size=20, n_components=3, n_acs=3, encoder_hidden=40,
                        decoder_hidden=20, n_distortions=4, eval_every=0)

    def make(seed=0):
        images = digits(120, 2)
        return CapsuleSessionTrainer(config, seed=seed,
                                     trainer=CapsuleTrainer(config, images[:100], images[100:], seed=seed))
    return make


def test_capsule_adapter_snapshot_feeds_the_views(capsule_trainer, tmp_path):
    from widgets.views import DistortionExplorer, MixtureView, ReconstructionsView
    s = TrainingSession(capsule_trainer(), snapshot_every=2)
    s.start(max_steps=4)
    assert s.join(60) and s.state == "finished", s.error
    snap = s.snapshot
    assert snap.kind == "capsules" and snap["templates"].ndim == 4 and "params" in snap
    assert snap["view_images"].shape == (20, 28, 28)
    model = ModelViewer().sync(snap)
    np.testing.assert_array_equal(model.templates(), snap["templates"])
    assert ReconstructionsView().frame(snap).shape[0] == 8 * 29 - 1 or True
    assert MixtureView(n_images=2).compute(snap)["sizes"].sum() == 20
    e = DistortionExplorer()
    assert e.load(snap) and len(e.controls()) == 4 + 7
    assert e.render().shape == (28, 28)
    # checkpoint and resume through the adapter
    path = s.checkpoint(tmp_path / "caps.npz")
    r = TrainingSession.from_checkpoint(path, factory=lambda meta: capsule_trainer())
    assert r.step == 4
    np.testing.assert_array_equal(r.trainer.model.templates(), s.trainer.model.templates())
    s.close()
    r.close()
