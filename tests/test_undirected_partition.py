"""Exact log Z (enumeration, split scheme) and AIS against brute force."""
import itertools
import math

import numpy as np
import pytest

from lab.undirected import BinaryRBM, ais_log_partition, mrf_log_partition, rbm_log_partition
from lab.undirected.ais import quick_betas
from lab.undirected.partition import log_sum_enumerated, mrf_moments, state_table


def brute_rbm_log_z(W, b, c):
    """log of the sum of exp(-E(v, h)) over every joint state."""
    H, V = W.shape
    vs = state_table(V)
    hs = state_table(H)
    neg_e = (hs @ W @ vs.T) + (hs @ c)[:, None] + (vs @ b)[None, :]
    m = neg_e.max()
    return m + math.log(np.exp(neg_e - m).sum())


def brute_mrf(W, b):
    S = state_table(len(b))
    L = S @ b + 0.5 * np.einsum("si,ij,sj->s", S, W, S, optimize=False)
    m = L.max()
    P = np.exp(L - m)
    Z = P.sum()
    P /= Z
    # einsum without BLAS: multithreaded BLAS crawls on a loaded two-core machine
    return m + math.log(Z), S.T @ P, np.einsum("si,sj,s->ij", S, S, P, optimize=False)


def random_rbm(rng, H, V, scale):
    return rng.normal(0, scale, (H, V)), rng.normal(0, scale, V), rng.normal(0, scale, H)


@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 60.0])
@pytest.mark.parametrize("H,V", [(3, 5), (6, 4), (7, 7)])
def test_rbm_log_z_matches_joint_brute_force(H, V, scale):
    rng = np.random.default_rng(H * 100 + V + int(scale))
    W, b, c = random_rbm(rng, H, V, scale)
    expected = brute_rbm_log_z(W, b, c)
    tol = 1e-9 * max(1.0, abs(expected))
    for enum in ("hidden", "visible"):
        for method in ("direct", "split"):
            got = rbm_log_partition(W, b, c, enumerate=enum, method=method)
            # the split scheme multiplies in float32: ~1e-7 per group of three units
            atol = tol if method == "direct" else 1e-5
            assert got == pytest.approx(expected, abs=atol, rel=1e-9), (enum, method)


@pytest.mark.parametrize("scale", [0.3, 3.0, 40.0, 400.0])
def test_split_scheme_matches_direct_on_wide_models(scale):
    # 14 enumerated units over 60 others: exercises the float32 bundles, the float64
    # fallback and (for the largest weights) the direct fallback of the split scheme
    rng = np.random.default_rng(int(scale * 10))
    W, b, c = random_rbm(rng, 14, 60, scale)
    direct = rbm_log_partition(W, b, c, method="direct")
    split = rbm_log_partition(W, b, c, method="split", threads=2)
    assert split == pytest.approx(direct, rel=1e-8, abs=1e-5)


def test_split_scheme_single_thread_equals_threaded():
    rng = np.random.default_rng(5)
    W, b, c = random_rbm(rng, 17, 50, 1.0)
    a = rbm_log_partition(W, b, c, method="split", threads=1)
    t = rbm_log_partition(W, b, c, method="split", threads=2)
    assert a == pytest.approx(t, rel=1e-12)


def test_visible_and_hidden_enumeration_agree_on_larger_model():
    rng = np.random.default_rng(11)
    W, b, c = random_rbm(rng, 14, 15, 1.5)
    h = rbm_log_partition(W, b, c, enumerate="hidden")
    v = rbm_log_partition(W, b, c, enumerate="visible")
    assert h == pytest.approx(v, rel=1e-10)


def test_float32_parameters_are_accepted():
    rng = np.random.default_rng(1)
    W, b, c = (a.astype(np.float32) for a in random_rbm(rng, 5, 6, 1.0))
    expected = brute_rbm_log_z(W.astype(np.float64), b.astype(np.float64), c.astype(np.float64))
    assert rbm_log_partition(W, b, c) == pytest.approx(expected, rel=1e-10)


def test_enumeration_refuses_huge_layers():
    W = np.zeros((40, 40))
    with pytest.raises(ValueError, match="AIS"):
        rbm_log_partition(W, np.zeros(40), np.zeros(40))
    with pytest.raises(ValueError, match="enumerate"):
        rbm_log_partition(W[:3, :4], np.zeros(4), np.zeros(3), enumerate="both")
    with pytest.raises(ValueError, match="shape"):
        log_sum_enumerated(np.zeros((3, 4)), np.zeros(2), np.zeros(4))


@pytest.mark.parametrize("n,scale", [(6, 1.0), (9, 4.0), (17, 0.7), (17, 5.0)])
def test_mrf_log_z_and_moments_match_brute_force(n, scale):
    rng = np.random.default_rng(n)
    A = rng.normal(0, scale, (n, n))
    W = np.triu(A, 1) + np.triu(A, 1).T
    b = rng.normal(0, scale, n)
    z, mean, second = brute_mrf(W, b)
    assert mrf_log_partition(W, b) == pytest.approx(z, rel=1e-11)
    z2, mean2, second2 = mrf_moments(W, b, threads=2)
    assert z2 == pytest.approx(z, rel=1e-11)
    np.testing.assert_allclose(mean2, mean, atol=1e-10)
    np.testing.assert_allclose(second2, second, atol=1e-10)


def _trained_toy_rbm(n_hidden=12, n_visible=20):
    # structured enough that AIS has work to do
    rng = np.random.default_rng(3)
    protos = rng.random((4, n_visible)) < 0.5
    X = protos[rng.integers(0, 4, 400)]
    X = np.where(rng.random(X.shape) < 0.05, 1 - X, X).astype(np.float32)
    return BinaryRBM(n_hidden, algorithm="pcd", learning_rate=0.1, n_updates=300, random_state=0,
                     visible_bias_init="data").fit(X)


def test_ais_interval_contains_exact_log_z():
    rbm = _trained_toy_rbm()
    exact = rbm.log_partition("exact").value
    est = rbm.log_partition("ais", n_runs=100, betas=quick_betas(2000), random_state=1)
    assert est.lower <= exact <= est.upper, (est, exact)
    assert abs(est.value - exact) < 0.5


@pytest.mark.slow
def test_ais_full_schedule_on_25_hidden_model():
    # the full schedule of 14,501 temperatures (about 0.3 ms each here)
    rbm = _trained_toy_rbm(n_hidden=25, n_visible=16)
    exact = rbm.log_partition("exact").value
    est = rbm.log_partition("ais", n_runs=50, random_state=2)
    assert est.lower <= exact <= est.upper, (est, exact)
    assert est.upper - est.lower < 0.5


def test_ais_default_schedule_and_bad_schedule():
    from lab.undirected import default_betas
    betas = default_betas()
    assert betas[0] == 0 and betas[-1] == 1 and len(betas) == 14501
    assert np.all(np.diff(betas) > 0)
    steps = np.diff(betas)
    assert steps[0] == pytest.approx(1e-3) and steps[-1] == pytest.approx(1e-5)
    assert quick_betas(100)[-1] == 1.0
    with pytest.raises(ValueError, match="betas"):
        ais_log_partition(np.zeros((2, 3)), np.zeros(3), np.zeros(2), np.full(3, 0.5),
                          betas=[0.0, 0.7, 0.5, 1.0])


def test_ais_exact_for_model_without_weights():
    # with W = 0 and b equal to the base rate's biases, every importance weight is exact
    rng = np.random.default_rng(0)
    p = rng.uniform(0.1, 0.9, 8)
    b = np.log(p / (1 - p))
    c = rng.normal(0, 1, 3)
    res = ais_log_partition(np.zeros((3, 8)), b, c, p, n_runs=10, betas=quick_betas(50),
                            random_state=0)
    exact = brute_rbm_log_z(np.zeros((3, 8)), b, c)
    assert res.log_z == pytest.approx(exact, abs=1e-4)


def test_state_table_bit_order():
    S = state_table(3)
    assert S.shape == (8, 3)
    assert list(map(tuple, S.astype(int)))[:4] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    assert set(itertools.product([0, 1], repeat=3)) == set(map(tuple, S.astype(int)))
