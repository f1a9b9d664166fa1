"""Products with binary states as row sums (lab.undirected.binary_products) against
numpy's dense products, and RBM training with and without them."""
import numpy as np
import pytest

from lab.undirected import BinaryRBM, ClassificationRBM
from lab.undirected import binary_products as bp
from lab.undirected import compiled, logistic, philox_uniforms

pytest.importorskip("numba")


def binary(rng, n, d, density, dtype=np.float32):
    return (rng.random((n, d)) < density).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.13, 0.25])
def test_products_match_dense(dtype, density):
    rng = np.random.default_rng(0)
    n, n_vis, n_hid = 23, 37, 19
    v = binary(rng, n, n_vis, density, dtype)
    W = np.asfortranarray(rng.normal(size=(n_hid, n_vis)).astype(dtype))
    states = bp.BinaryStates.of(v)
    assert states is not None and states.density == pytest.approx(v.mean())
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for sl in (slice(0, n_hid), slice(3, 11), slice(18, 19)):
        out = np.full((n, n_hid), 7, dtype=dtype)
        bp.hidden_pre(states, W.T, sl.start, out, sl)
        np.testing.assert_allclose(out[:, sl], v @ W[sl].T, **tol)
        assert np.all(out[:, :sl.start] == 7) and np.all(out[:, sl.stop:] == 7)   # only sl written
        h = rng.random((n, n_hid)).astype(dtype)
        np.testing.assert_allclose(bp.weight_gradient(states, h, sl), v.T @ h[:, sl], **tol)
        W2 = W.copy(order="F")
        bp.weight_gradient(states, h, sl, out=W2, scale=-0.5)
        expect = W.copy()
        expect[sl] += -0.5 * (h[:, sl].T @ v)
        np.testing.assert_allclose(W2, expect, **tol)


def test_states_rows_stack_and_transpose():
    rng = np.random.default_rng(1)
    a, b = binary(rng, 9, 14, 0.2), binary(rng, 6, 14, 0.1)
    sa, sb = bp.BinaryStates.of(a), bp.BinaryStates.of(b)
    for states, v in ((sa.rows(2, 7), a[2:7]), (bp.BinaryStates.stack(sa.rows(3, 9), sb), np.vstack([a[3:], b]))):
        assert states.n == v.shape[0]
        for r in range(v.shape[0]):
            assert list(states.idx[states.ptr[r]:states.ptr[r + 1]]) == list(np.flatnonzero(v[r]))
        cols = states.by_unit()
        for i in range(v.shape[1]):
            assert list(cols.idx[cols.ptr[i]:cols.ptr[i + 1]]) == list(np.flatnonzero(v[:, i]))


def test_dense_path_is_chosen_when_row_sums_do_not_apply():
    rng = np.random.default_rng(2)
    v = binary(rng, 10, 20, 0.1)
    assert bp.BinaryStates.of(v * 0.5) is None                       # grey values
    assert bp.BinaryStates.of(binary(rng, 10, 20, 0.6)) is None       # too dense to gain
    assert bp.BinaryStates.of(np.asfortranarray(v)) is None           # rows not contiguous
    assert bp.BinaryStates.of(v.astype(np.int8)) is None
    assert bp.BinaryStates.of(v) is not None
    with bp.disabled():
        assert bp.BinaryStates.of(v) is None and not bp.available()
    assert bp.available()
    assert not bp.weights_fit(np.ones((3, 4))) and bp.weights_fit(np.ones((3, 4), order="F"))


def toy(n=300, d=30, seed=0):
    rng = np.random.default_rng(seed)
    protos = rng.random((4, d)) < 0.15
    X = protos[rng.integers(0, 4, n)].copy()
    flip = rng.random(X.shape) < 0.03
    return (X ^ flip).astype(np.float32)


CASES = [dict(algorithm="pcd"), dict(algorithm="pcd", weight_decay=1e-2),
         dict(algorithm="fpcd", fast_learning_rate=0.05), dict(algorithm="pcd", momentum=0.5),
         dict(algorithm="cd", cd_k=2), dict(algorithm="mfcd")]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_rbm_training_with_row_sums_matches_dense(kw):
    X = toy()
    params = dict(n_hidden=40, learning_rate=0.1, batch_size=25, n_fantasy=25, n_updates=30,
                  random_state=3, n_jobs=1, **kw)
    calls = []
    original = bp.hidden_pre

    def counting(*args):
        calls.append(1)
        return original(*args)

    bp_hidden_pre, bp.hidden_pre = bp.hidden_pre, counting
    try:
        rows = BinaryRBM(**params).fit(X)
    finally:
        bp.hidden_pre = bp_hidden_pre
    assert calls, "the row-sum products were not used"
    with bp.disabled():
        dense = BinaryRBM(**params).fit(X)
    # the same random numbers drive both; the sums differ in the last bits only, so the
    # sampled states agree and the parameters stay close
    np.testing.assert_allclose(rows.components_, dense.components_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rows.intercept_hidden_, dense.intercept_hidden_, rtol=1e-4, atol=1e-5)
    if rows.fantasy_particles_ is not None:
        assert np.mean(rows.fantasy_particles_ != dense.fantasy_particles_) < 0.01
    assert rows.components_.flags.f_contiguous


def test_row_sums_do_not_depend_on_the_thread_split():
    rng = np.random.default_rng(4)
    v = binary(rng, 30, 50, 0.15)
    W = np.asfortranarray(rng.normal(size=(40, 50)).astype(np.float32))
    h = rng.random((30, 40)).astype(np.float32)
    states = bp.BinaryStates.of(v)
    whole, parts = np.empty((30, 40), np.float32), np.empty((30, 40), np.float32)
    bp.hidden_pre(states, W.T, 0, whole, slice(0, 40))
    for sl in (slice(0, 13), slice(13, 14), slice(14, 40)):
        bp.hidden_pre(states, W.T, sl.start, parts, sl)
    assert np.array_equal(whole, parts)
    G = bp.weight_gradient(states, h, slice(0, 40))
    assert np.array_equal(G[:, 13:], bp.weight_gradient(states, h, slice(13, 40)))


def test_weights_assigned_in_c_order_are_relaid_and_training_continues():
    X = toy()
    a = BinaryRBM(n_hidden=20, algorithm="pcd", learning_rate=0.1, batch_size=25, n_fantasy=25,
                  random_state=5, n_jobs=1)
    b = BinaryRBM(**a.get_params())
    for rbm in (a, b):
        rbm.partial_fit(X[:25])
    b.components_ = np.ascontiguousarray(b.components_)      # e.g. loaded from a file
    for k in range(1, 6):
        a.partial_fit(X[25 * k:25 * (k + 1)])
        b.partial_fit(X[25 * k:25 * (k + 1)])
    assert b.components_.flags.f_contiguous
    assert np.array_equal(a.components_, b.components_)


def test_classification_rbm_labels_ride_along():
    rng = np.random.default_rng(6)
    X = toy(200, 30, seed=6)
    y = rng.integers(0, 3, 200)
    params = dict(n_hidden=30, learning_rate=0.1, batch_size=20, n_fantasy=20, n_updates=25,
                  random_state=7, n_jobs=1)
    rows = ClassificationRBM(**params).fit(X, y)
    with bp.disabled():
        dense = ClassificationRBM(**params).fit(X, y)
    np.testing.assert_allclose(rows.components_, dense.components_, rtol=1e-4, atol=1e-5)


def test_without_numba_the_dense_products_serve(monkeypatch):
    X = toy()
    params = dict(n_hidden=20, algorithm="pcd", learning_rate=0.1, batch_size=25, n_fantasy=25,
                  n_updates=10, random_state=8, n_jobs=1)
    with bp.disabled(), monkeypatch.context() as m:
        m.setattr(logistic, "sigmoid_inplace", lambda x: False)     # numpy's sigmoid
        m.setattr(philox_uniforms, "available", lambda stream, dtype: False)   # and uniforms
        dense = BinaryRBM(**params).fit(X)
    monkeypatch.setattr(compiled, "NUMBA", False)          # as if `import numba` had failed
    assert not bp.available() and bp.BinaryStates.of(X[:5]) is None
    assert not logistic.sigmoid_inplace(np.zeros(3, np.float32))
    missing = BinaryRBM(**params).fit(X)
    assert np.array_equal(missing.components_, dense.components_)
