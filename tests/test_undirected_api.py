"""Estimator conventions and input checking for the undirected models."""
import inspect
import json

import numpy as np
import pytest

from lab.undirected import BinaryRBM, ClassificationRBM, FullyVisibleMRF, NotFittedError


def binary(n=40, d=6, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.4).astype(np.float32)


@pytest.mark.parametrize("cls", [BinaryRBM, ClassificationRBM, FullyVisibleMRF])
def test_get_params_comes_from_the_signature(cls):
    est = cls()
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert list(est.get_params()) == names
    assert est.get_params()["random_state"] is None
    est.set_params(learning_rate=0.5)
    assert est.learning_rate == 0.5 and "learning_rate=0.5" in repr(est)
    with pytest.raises(ValueError, match="invalid parameter"):
        est.set_params(nonsense=1)
    # __init__ only stores: nothing learned yet
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(est))


def test_binary_rbm_documented_signature():
    params = BinaryRBM().get_params()
    for name in ("n_hidden", "algorithm", "cd_k", "learning_rate", "batch_size", "n_fantasy",
                 "fast_learning_rate", "fast_decay", "weight_decay", "momentum", "n_updates",
                 "max_seconds", "random_state", "device", "verbose"):
        assert name in params
    assert params["fast_decay"] == pytest.approx(19 / 20)
    assert params["batch_size"] == 100 and params["n_fantasy"] == 100


def test_learned_attributes_and_shapes():
    X = binary()
    rbm = BinaryRBM(5, algorithm="fpcd", n_fantasy=7, n_updates=3, random_state=0).fit(X)
    assert rbm.fit(X) is rbm
    assert rbm.components_.shape == (5, 6) and rbm.components_.dtype == np.float32
    assert rbm.intercept_hidden_.shape == (5,) and rbm.intercept_visible_.shape == (6,)
    assert rbm.fantasy_particles_.shape == (7, 6)
    assert rbm.fast_components_.shape == (5, 6)
    assert rbm.transform(X).shape == (40, 5)
    assert rbm.gibbs(X).shape == (40, 6)
    assert rbm.sample(4, n_steps=2).shape == (4, 6)
    assert rbm.sample(9, n_steps=1, init="fantasy").shape == (9, 6)
    assert rbm.sample(3, n_steps=1, return_mean=True).shape == (3, 6)
    ll = rbm.score_samples(X)
    assert ll.shape == (40,) and np.all(ll < 0)
    snap = rbm.snapshot()
    assert snap["n_updates"] == 3 and snap["fast_components_"].shape == (5, 6)
    json.dumps(rbm.random_stream_.get_state())
    pcd = BinaryRBM(5, algorithm="cd", n_updates=1).fit(X)
    assert pcd.fantasy_particles_ is None and pcd.fast_components_ is None


def test_exact_log_likelihood_sums_to_one():
    X = binary(d=5)
    rbm = BinaryRBM(3, n_updates=20, learning_rate=0.5, random_state=0).fit(X)
    allv = ((np.arange(32)[:, None] >> np.arange(5)) & 1).astype(np.float32)
    assert np.exp(rbm.score_samples(allv)).sum() == pytest.approx(1.0, rel=1e-9)
    mrf = FullyVisibleMRF(algorithm="exact", n_updates=5, learning_rate=0.5).fit(X)
    assert np.exp(mrf.score_samples(allv)).sum() == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("bad,match", [
    (np.zeros(6, np.float32), "2-D"),
    (np.zeros((2, 3, 6), np.float32), "2-D"),
    (np.zeros((0, 6), np.float32), "no samples"),
    (np.full((4, 6), 0.5, np.float32), "binary"),
    (np.array([[0, 1, np.nan, 0, 1, 1]], np.float32), "NaN"),
    (np.array([[0, 1, np.inf, 0, 1, 1]], np.float32), "NaN or infinite"),
    (np.array([["a"] * 6]), "numeric"),
])
@pytest.mark.parametrize("cls", [BinaryRBM, FullyVisibleMRF])
def test_bad_input_gives_clear_errors(cls, bad, match):
    with pytest.raises(ValueError, match=match):
        cls(n_updates=1).fit(bad)


def test_bad_input_after_fitting():
    rbm = BinaryRBM(3, n_updates=1).fit(binary())
    with pytest.raises(ValueError, match="6"):
        rbm.partial_fit(binary(d=7))
    with pytest.raises(ValueError, match="features"):
        rbm.score_samples(binary(d=5))
    with pytest.raises(ValueError, match="binary"):
        rbm.score_samples(np.full((2, 6), 0.3))
    clf = ClassificationRBM(3, n_updates=2).fit(binary(), np.arange(40) % 3)
    with pytest.raises(ValueError, match="shape"):
        clf.fit(binary(), np.arange(39))
    with pytest.raises(ValueError, match="features"):
        clf.predict(binary(d=4))
    with pytest.raises(ValueError, match="two classes"):
        ClassificationRBM(3).fit(binary(), np.zeros(40))


@pytest.mark.parametrize("kw,match", [
    ({"algorithm": "cd2"}, "algorithm"),
    ({"n_hidden": 0}, "n_hidden"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"fast_decay": 1.5}, "fast_decay"),
    ({"momentum": 1.0}, "momentum"),
    ({"learning_rate_schedule": "cosine"}, "schedule"),
    ({"random_state": "seed"}, "random_state"),
    ({"device": "tpu"}, "device"),
])
def test_bad_hyperparameters_fail_at_fit(kw, match):
    with pytest.raises(ValueError, match=match):
        BinaryRBM(**{"n_updates": 1, **kw}).fit(binary())


def test_pl_rejected_for_classification_and_unknown_mrf_algorithm():
    with pytest.raises(ValueError, match="pl"):
        ClassificationRBM(3, algorithm="pl", n_updates=1).fit(binary(), np.arange(40) % 2)
    with pytest.raises(ValueError, match="algorithm"):
        FullyVisibleMRF(algorithm="cd", n_updates=1).fit(binary())


def test_not_fitted_errors():
    for call in (lambda: BinaryRBM().transform(binary()),
                 lambda: BinaryRBM().score_samples(binary()),
                 lambda: ClassificationRBM().predict(binary()),
                 lambda: FullyVisibleMRF().score(binary())):
        with pytest.raises(NotFittedError, match="fit"):
            call()


def test_ais_method_through_score_samples():
    X = binary(200, d=8)
    rbm = BinaryRBM(4, n_updates=100, learning_rate=0.2, random_state=0).fit(X)
    from lab.undirected.ais import quick_betas
    exact = rbm.score(X)
    approx = rbm.score(X, method="ais", betas=quick_betas(500), random_state=0)
    assert approx == pytest.approx(exact, abs=0.05)
    with pytest.raises(ValueError, match="method"):
        rbm.score(X, method="guess")


def test_hyperparameters_can_change_between_partial_fits():
    X = binary(60)
    rbm = BinaryRBM(4, algorithm="cd", learning_rate=0.1, random_state=0)
    rbm.partial_fit(X)
    rbm.set_params(algorithm="fpcd", n_fantasy=5, momentum=0.5, learning_rate=0.05)
    rbm.partial_fit(X)
    assert rbm.fantasy_particles_.shape == (5, 6) and rbm.fast_components_ is not None
    assert rbm.learning_rate_ == 0.05 and rbm.n_updates_ == 2
    rbm.set_params(momentum=0.0, algorithm="pcd")
    rbm.partial_fit(X)
    assert rbm.n_updates_ == 3
