"""Training algorithms: gradients, FPCD == PCD at fast rate 0, likelihood goes up, seeds."""
import numpy as np
import pytest

from lab.undirected import BinaryRBM, ClassificationRBM, FullyVisibleMRF
from lab.undirected import algorithms as alg
from lab.undirected import philox_uniforms
from lab.undirected.mrf import mrf_pl_gradient, mrf_pseudo_log_likelihood, unique_patterns
from lab.undirected.partition import mrf_log_partition, mrf_log_potential


def toy_data(n=500, n_visible=12, n_protos=3, noise=0.05, seed=0, labels=False):
    """Noisy copies of a few random binary prototypes (and, optionally, which one)."""
    rng = np.random.default_rng(seed)
    protos = rng.random((n_protos, n_visible)) < 0.5
    which = rng.integers(0, n_protos, n)
    X = np.where(rng.random((n, n_visible)) < noise, 1 - protos[which], protos[which])
    return (X.astype(np.float32), which) if labels else X.astype(np.float32)


def exact_mean_ll(rbm, X):
    return rbm.score(X)


def check_gradient(f, params, grads, rng, eps=1e-6, n_dirs=3):
    """Directional finite differences (central) against an analytic gradient."""
    for _ in range(n_dirs):
        dirs = [rng.normal(size=p.shape) for p in params]
        plus = f(*[p + eps * d for p, d in zip(params, dirs)])
        minus = f(*[p - eps * d for p, d in zip(params, dirs)])
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, dirs))
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_rbm_pl_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    H, V = 4, 7
    W, b, c = rng.normal(0, 1, (H, V)), rng.normal(0, 1, V), rng.normal(0, 1, H)
    v = (rng.random((6, V)) < 0.4).astype(np.float64)
    grads = alg.pl_gradient(v, W, b, c, np, max_elements=60)      # several chunks
    check_gradient(lambda W_, b_, c_: alg.pseudo_log_likelihood(v, W_, b_, c_),
                   [W, b, c], grads, rng)


def test_rbm_pl_is_sum_of_exact_conditionals():
    rng = np.random.default_rng(1)
    H, V = 3, 5
    W, b, c = rng.normal(0, 1, (H, V)), rng.normal(0, 1, V), rng.normal(0, 1, H)
    v = (rng.random((4, V)) < 0.5).astype(np.float64)
    fe = lambda x: alg.free_energy(x, W, b, c, np)                  # noqa: E731
    total = 0.0
    for i in range(V):
        flip = v.copy()
        flip[:, i] = 1 - flip[:, i]
        total += np.mean(-fe(v) - np.logaddexp(-fe(v), -fe(flip)))
    assert alg.pseudo_log_likelihood(v, W, b, c) == pytest.approx(total, rel=1e-12)


def test_mrf_pl_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    n = 6
    A = rng.normal(0, 1, (n, n))
    W = np.triu(A, 1) + np.triu(A, 1).T
    b = rng.normal(0, 1, n)
    V = (rng.random((9, n)) < 0.5).astype(np.float64)
    G, gb = mrf_pl_gradient(V, W, b)
    assert np.allclose(G, G.T) and np.all(np.diag(G) == 0)
    iu = np.triu_indices(n, 1)

    def f(w_upper, b_):
        M = np.zeros((n, n))
        M[iu] = w_upper
        return mrf_pseudo_log_likelihood(V, M + M.T, b_)

    check_gradient(f, [W[iu], b], [G[iu], gb], rng)


def test_mrf_exact_gradient_is_likelihood_gradient():
    rng = np.random.default_rng(3)
    X = toy_data(200, n_visible=7, seed=3)
    mrf = FullyVisibleMRF(algorithm="exact", learning_rate=0.0, n_updates=1, random_state=0).fit(X)
    A = rng.normal(0, 0.5, (7, 7))
    W = np.triu(A, 1) + np.triu(A, 1).T
    b = rng.normal(0, 0.5, 7)
    mrf.coupling_, mrf.intercept_ = W.astype(np.float32), b.astype(np.float32)
    from lab.undirected.mrf import data_statistics
    G, gb = mrf._gradient(stats=data_statistics(X))
    iu = np.triu_indices(7, 1)

    def ll(w_upper, b_):
        M = np.zeros((7, 7))
        M[iu] = w_upper
        M = M + M.T
        return float(np.mean(mrf_log_potential(X, M, b_)) - mrf_log_partition(M, b_))

    # float32 parameters inside the estimator: compare at float64 with a looser tolerance
    W64, b64 = mrf.coupling_.astype(np.float64), mrf.intercept_.astype(np.float64)
    eps = 1e-5
    for _ in range(3):
        dW, db = rng.normal(size=len(iu[0])), rng.normal(size=7)
        num = (ll(W64[iu] + eps * dW, b64 + eps * db) - ll(W64[iu] - eps * dW, b64 - eps * db)) / (2 * eps)
        ana = float((G[iu] * dW).sum() + (gb * db).sum())
        assert ana == pytest.approx(num, rel=1e-4, abs=1e-6)


def _fit(algorithm, seed=0, **kw):
    X = toy_data()
    params = dict(n_hidden=8, algorithm=algorithm, learning_rate=0.1, n_updates=40, batch_size=20,
                  n_fantasy=20, random_state=seed)
    params.update(kw)
    return BinaryRBM(**params).fit(X)


def test_fpcd_with_zero_fast_rate_is_pcd_bit_for_bit():
    pcd = _fit("pcd", weight_decay=1e-3)
    fpcd = _fit("fpcd", fast_learning_rate=0.0, weight_decay=1e-3)
    for name in ("components_", "intercept_visible_", "intercept_hidden_", "fantasy_particles_"):
        a, b = getattr(pcd, name), getattr(fpcd, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert pcd.random_stream_.get_state() == fpcd.random_stream_.get_state()
    assert not np.any(fpcd.fast_components_)
    # a nonzero fast rate makes a difference, and the overlay decays towards zero
    fast = _fit("fpcd", fast_learning_rate=0.1)
    assert not np.array_equal(fast.components_, pcd.components_)
    assert np.any(fast.fast_components_)


def test_fpcd_follows_the_pseudocode_for_one_update():
    X = toy_data(20)
    rbm = BinaryRBM(5, algorithm="fpcd", learning_rate=0.3, fast_learning_rate=0.7, n_fantasy=4,
                    learning_rate_schedule="constant", random_state=3)
    rbm.partial_fit(X)                      # initializes, then one update
    rbm.partial_fit(X)
    W, b, c = rbm.components_.copy(), rbm.intercept_visible_.copy(), rbm.intercept_hidden_.copy()
    dW, db, dc = (rbm.fast_components_.copy(), rbm.fast_intercept_visible_.copy(),
                  rbm.fast_intercept_hidden_.copy())
    v_neg = rbm.fantasy_particles_.copy()
    state = rbm.random_stream_.get_state()
    rbm.partial_fit(X)
    # replay steps 1-7 by hand with the same random numbers
    stream = type(rbm.random_stream_)(0)
    stream.set_state(state)
    sig = lambda x: 1 / (1 + np.exp(-x))                        # noqa: E731
    h_pos = sig(X @ W.T + c)                                    # 2: slow weights
    h_neg = sig(v_neg @ (W + dW).T + (c + dc))                  # 3: fast weights
    h_s = (philox_uniforms.draw(stream, h_neg.shape) < h_neg).astype(np.float32)
    p_v = sig(h_s @ (W + dW) + (b + db))                        # 4: Gibbs with fast weights
    v_new = (philox_uniforms.draw(stream, p_v.shape) < p_v).astype(np.float32)
    gW = h_pos.T @ X / len(X) - h_neg.T @ v_neg / len(v_neg)    # 5
    np.testing.assert_array_equal(rbm.fantasy_particles_, v_new)
    np.testing.assert_allclose(rbm.components_, W + 0.3 * gW, atol=2e-6)           # 6
    np.testing.assert_allclose(rbm.fast_components_, dW * 0.95 + 0.7 * gW, atol=2e-6)  # 7


@pytest.mark.parametrize("algorithm,kw", [
    ("cd", {}), ("cd", {"cd_k": 3}), ("mfcd", {}), ("pl", {}), ("pcd", {}), ("fpcd", {}),
    ("pcd", {"momentum": 0.5, "weight_decay": 1e-4}),
])
def test_every_rbm_trainer_raises_exact_likelihood(algorithm, kw):
    X = toy_data()
    init = BinaryRBM(8, n_updates=0, random_state=0).fit(X)
    rbm = _fit(algorithm, n_updates=300, batch_size=50, n_fantasy=50, **kw)
    before, after = exact_mean_ll(init, X), exact_mean_ll(rbm, X)
    assert after > before + 1.0, (algorithm, before, after)
    assert rbm.n_updates_ == 300


@pytest.mark.parametrize("algorithm,lr", [("pl", 0.5), ("pcd", 0.2), ("exact", 1.0)])
def test_every_mrf_trainer_raises_exact_likelihood(algorithm, lr):
    X = toy_data(n_visible=10)
    init = FullyVisibleMRF(n_updates=0).fit(X)
    mrf = FullyVisibleMRF(algorithm=algorithm, learning_rate=lr, n_updates=150, batch_size=50,
                          random_state=0).fit(X)
    before, after = init.score(X), mrf.score(X)
    assert after > before + 1.0, (algorithm, before, after)
    W = mrf.coupling_
    assert np.array_equal(W, W.T) and not np.any(np.diag(W))


def test_mrf_exact_lbfgs_reaches_the_maximum_likelihood():
    X = toy_data(300, n_visible=8, noise=0.1)
    slow = FullyVisibleMRF(algorithm="exact", learning_rate=0.3, momentum=0.5,
                           learning_rate_schedule="constant", n_updates=300).fit(X)
    fast = FullyVisibleMRF(algorithm="exact", exact_optimizer="lbfgs", bias_init="data",
                           n_updates=60).fit(X)
    assert fast.n_updates_ <= 60
    assert fast.score(X) >= slow.score(X) - 1e-3
    W = fast.coupling_
    assert np.array_equal(W, W.T) and not np.any(np.diag(W))
    with pytest.raises(ValueError, match="exact_optimizer"):
        FullyVisibleMRF(algorithm="exact", exact_optimizer="newton", n_updates=1).fit(X)


def test_mrf_weighted_patterns_equal_repeated_rows():
    X = toy_data(300, n_visible=9, noise=0.1)
    rows, counts = unique_patterns(X)
    assert counts.sum() == len(X) and len(rows) < len(X)
    a = FullyVisibleMRF(algorithm="exact", learning_rate=0.5, n_updates=20).fit(X)
    b = FullyVisibleMRF(algorithm="exact", learning_rate=0.5, n_updates=20).fit(rows, sample_weight=counts)
    np.testing.assert_allclose(a.coupling_, b.coupling_, atol=1e-5)
    assert a.score(X) == pytest.approx(b.score(rows, sample_weight=counts), abs=1e-6)
    # weighted PL sampling runs and learns
    c = FullyVisibleMRF(algorithm="pl", learning_rate=0.5, n_updates=100, random_state=0)
    c.fit(rows, sample_weight=counts)
    assert c.score(X) > FullyVisibleMRF(n_updates=0).fit(X).score(X)


def test_mrf_partial_fit_and_sampling():
    X = toy_data(100, n_visible=6)
    mrf = FullyVisibleMRF(algorithm="pcd", learning_rate=0.1, random_state=0)
    for _ in range(5):
        mrf.partial_fit(X)
    assert mrf.n_updates_ == 5 and mrf.learning_rate_ == 0.1
    S = mrf.sample(10, n_sweeps=3, random_state=1)
    assert S.shape == (10, 6) and set(np.unique(S)) <= {0.0, 1.0}
    assert np.isfinite(mrf.pseudo_log_likelihood(X))


@pytest.mark.parametrize("algorithm", ["cd", "mfcd", "pl", "pcd", "fpcd"])
def test_seed_reproducibility(algorithm):
    a, b = _fit(algorithm, seed=7), _fit(algorithm, seed=7)
    assert np.array_equal(a.components_, b.components_)
    assert np.array_equal(a.intercept_visible_, b.intercept_visible_)
    c = _fit(algorithm, seed=8)
    assert not np.array_equal(a.components_, c.components_)


def test_binarize_resamples_each_minibatch():
    rng = np.random.default_rng(0)
    P = rng.uniform(0, 1, (200, 10)).astype(np.float32)
    rbm = BinaryRBM(4, binarize=True, n_updates=5, random_state=0).fit(P)
    assert rbm.n_updates_ == 5
    with pytest.raises(ValueError, match="binary"):
        BinaryRBM(4, n_updates=5).fit(P)


def test_linear_decay_schedule_and_state():
    X = toy_data(100)
    rbm = BinaryRBM(4, learning_rate=0.2, n_updates=10, batch_size=10, random_state=0).fit(X)
    assert rbm.n_updates_ == 10
    assert rbm.learning_rate_ == pytest.approx(0.2 * (1 - 9 / 10))     # the last update's rate
    assert rbm.progress_ == 1.0 and rbm.current_learning_rate_ == 0.0
    # partial_fit continues the same schedule, and a background loop can read it
    rbm2 = BinaryRBM(4, learning_rate=0.2, n_updates=10, random_state=0)
    rates = []
    for _ in range(4):
        rbm2.partial_fit(X[:10])
        rates.append(rbm2.learning_rate_)
    assert rates == pytest.approx([0.2, 0.18, 0.16, 0.14])
    # wall-time bound
    timed = BinaryRBM(4, max_seconds=0.3, batch_size=10, random_state=0).fit(X)
    assert 0.3 <= timed.train_seconds_ < 2.0 and timed.n_updates_ > 0
    assert timed.progress_ == 1.0


def test_classification_rbm_predicts_the_exact_conditional():
    X = toy_data(300, n_visible=6, n_protos=3, seed=5)
    y = (X[:, 0] + 2 * X[:, 1]).astype(int) % 3
    clf = ClassificationRBM(5, algorithm="pcd", learning_rate=0.1, n_updates=200, random_state=0)
    clf.fit(X, y)
    # brute force p(y | x): sum over all hidden states of exp(-E(x, y, h))
    K = 3
    W = clf.components_.astype(np.float64)
    b = clf.intercept_visible_.astype(np.float64)
    c = clf.intercept_hidden_.astype(np.float64)
    hs = ((np.arange(2 ** 5)[:, None] >> np.arange(5)) & 1).astype(np.float64)
    x = X[:20].astype(np.float64)
    logits = np.empty((20, K))
    for k in range(K):
        v = np.concatenate([x, np.tile(np.eye(K)[k], (20, 1))], axis=1)
        neg_e = v @ W.T @ hs.T + (hs @ c)[None, :] + (v @ b)[:, None]
        logits[:, k] = np.logaddexp.reduce(neg_e, axis=1)
    expected = np.exp(logits - np.logaddexp.reduce(logits, axis=1, keepdims=True))
    np.testing.assert_allclose(clf.predict_proba(X[:20]), expected, atol=1e-10)
    assert np.array_equal(clf.predict(X[:20]), clf.classes_[expected.argmax(1)])
    assert clf.score(X, y) > 0.6
    assert clf.label_components_.shape == (5, 3) and clf.intercept_label_.shape == (3,)


@pytest.mark.parametrize("algorithm", ["cd", "mfcd", "pcd", "fpcd"])
def test_classification_rbm_learns_with_every_algorithm(algorithm):
    X, which = toy_data(400, n_visible=12, n_protos=4, noise=0.1, seed=9, labels=True)
    y = np.array(["abcd"[i] for i in which])
    clf = ClassificationRBM(16, algorithm=algorithm, learning_rate=0.3, n_updates=300,
                            batch_size=40, n_fantasy=40, random_state=1).fit(X, y)
    assert clf.score(X, y) > 0.8, algorithm
    assert set(clf.predict(X[:5])) <= set("abcd")
    if algorithm in ("pcd", "fpcd"):
        part = clf.fantasy_particles_[:, -4:]
        assert np.all(part.sum(axis=1) == 1)      # the label unit stays one-hot


def test_classification_partial_fit():
    X = toy_data(50, n_visible=5)
    y = np.arange(50) % 2
    clf = ClassificationRBM(3, random_state=0)
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y)
    clf.partial_fit(X, y, classes=[0, 1])
    clf.partial_fit(X, y)
    assert clf.n_updates_ == 2
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X, y + 5)


@pytest.mark.parametrize("algorithm", ["cd", "mfcd", "pcd", "fpcd"])
def test_worker_threads_match_single_thread(algorithm):
    # the layer-parallel update draws the same random numbers in the same order
    X = toy_data(200, n_visible=13)
    kw = dict(n_hidden=9, algorithm=algorithm, learning_rate=0.1, n_updates=30, batch_size=20,
              n_fantasy=20, cd_k=2, random_state=4)
    one = BinaryRBM(n_jobs=1, **kw).fit(X)
    two = BinaryRBM(n_jobs=2, **kw).fit(X)
    np.testing.assert_allclose(one.components_, two.components_, atol=1e-5)
    again = BinaryRBM(n_jobs=2, **kw).fit(X)
    assert np.array_equal(two.components_, again.components_)


def test_worker_threads_keep_the_softmax_group_whole():
    X, which = toy_data(200, n_visible=7, n_protos=3, labels=True, seed=2)
    kw = dict(n_hidden=6, algorithm="pcd", learning_rate=0.2, n_updates=40, batch_size=20,
              n_fantasy=20, random_state=0)
    one = ClassificationRBM(n_jobs=1, **kw).fit(X, which)
    two = ClassificationRBM(n_jobs=2, **kw).fit(X, which)
    assert two.n_jobs_ in (1, 2)
    np.testing.assert_allclose(one.components_, two.components_, atol=1e-5)
    assert np.all(two.fantasy_particles_[:, -3:].sum(axis=1) == 1)
