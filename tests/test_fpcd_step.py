"""FPCD's steps 6-7 in one pass (lab.undirected.fpcd_step) against the numpy statements."""
import numpy as np
import pytest

from lab.undirected import BinaryRBM, compiled, fpcd_step

pytest.importorskip("numba")


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3, np.float64(2.5e-5)])
@pytest.mark.parametrize("sl", [slice(0, 7), slice(2, 5)])
def test_matches_numpy_bit_for_bit(weight_decay, sl):
    rng = np.random.default_rng(0)
    W = np.asfortranarray(rng.normal(0, 0.1, (7, 11)).astype(np.float32))
    F = np.asfortranarray(rng.normal(0, 0.1, (7, 11)).astype(np.float32))
    G = np.ascontiguousarray(rng.normal(0, 0.01, (11, sl.stop - sl.start)).astype(np.float32)).T
    lr, decay, flr = np.float64(0.05), 0.95, 0.07
    f = np.float32
    W_np, F_np = W.copy(order="F"), F.copy(order="F")
    F_np[sl] = F_np[sl] * f(decay) + f(flr / lr) * G
    if weight_decay:
        W_np[sl] *= f(1.0 - lr * weight_decay)
    W_np[sl] += G
    assert fpcd_step.apply(W, F, sl, G, lr, weight_decay, decay, flr)
    assert np.array_equal(W, W_np) and np.array_equal(F, F_np)


def test_other_layouts_are_left_to_numpy(monkeypatch):
    W = np.zeros((3, 4), np.float32)                              # C order
    F = np.zeros((3, 4), np.float32, order="F")
    G = np.zeros((4, 3), np.float32).T
    assert not fpcd_step.apply(W, F, slice(0, 3), G, 0.1, 0.0, 0.95, 0.1)
    assert not fpcd_step.apply(np.asfortranarray(W), F, slice(0, 3), np.zeros((3, 4), np.float32),
                               0.1, 0.0, 0.95, 0.1)
    monkeypatch.setattr(compiled, "NUMBA", False)
    assert not fpcd_step.apply(np.asfortranarray(W), F, slice(0, 3), G, 0.1, 0.0, 0.95, 0.1)


def test_fpcd_training_is_the_same_with_and_without_the_kernel(monkeypatch):
    X = (np.random.default_rng(1).random((200, 30)) < 0.2).astype(np.float32)
    params = dict(n_hidden=12, algorithm="fpcd", learning_rate=0.1, fast_learning_rate=0.2,
                  weight_decay=1e-3, batch_size=20, n_fantasy=20, n_updates=30, random_state=2,
                  n_jobs=2)
    fused = BinaryRBM(**params).fit(X)
    monkeypatch.setattr(fpcd_step, "apply", lambda *a: False)
    numpy_steps = BinaryRBM(**params).fit(X)
    for name in ("components_", "fast_components_", "fantasy_particles_"):
        assert np.array_equal(getattr(fused, name), getattr(numpy_steps, name)), name
