"""The compiled float32 sigmoid (lab.undirected.logistic) against a float64 reference."""
import numpy as np
import pytest

from lab.undirected import compiled, logistic
from lab.undirected._base import sigmoid_

pytest.importorskip("numba")


def reference(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def test_within_an_ulp_of_float64_over_its_range():
    x = np.linspace(-80, 87, 2_000_001).astype(np.float32)
    y = x.copy()
    assert logistic.sigmoid_inplace(y)
    rel = np.abs(y - reference(x)) / reference(x)
    assert rel.max() < 2e-7                          # float32's ulp at 1 is 1.2e-7


def test_extremes_and_nan():
    x = np.array([0, 100, -100, 87, -87, 88, -88, np.inf, -np.inf, np.nan], dtype=np.float32)
    y = x.copy()
    logistic.sigmoid_inplace(y)
    assert y[0] == 0.5
    assert y[1] == 1 and y[3] == 1 and y[5] == 1 and y[7] == 1
    assert y[2] == 0 and y[4] == 0 and y[6] == 0 and y[8] == 0
    assert np.isnan(y[9])


@pytest.mark.parametrize("view", [
    lambda a: a,                         # C-contiguous
    lambda a: a[:, 7:40],                # a block of columns (a worker's hidden units)
    lambda a: a[::3, 5:9],               # every third row
    lambda a: a[4],                      # one row
])
def test_views_change_only_their_own_values(view):
    rng = np.random.default_rng(0)
    a = rng.normal(0, 4, (30, 50)).astype(np.float32)
    before = a.copy()
    v = view(a)
    expected = reference(v)
    assert logistic.sigmoid_inplace(v)
    np.testing.assert_allclose(v, expected, rtol=2e-7, atol=0)
    untouched = np.ones(a.shape, bool)
    untouched.flat[view(np.arange(a.size).reshape(a.shape)).ravel()] = False
    assert np.array_equal(a[untouched], before[untouched])


def test_other_arrays_are_left_to_numpy():
    a = np.zeros((4, 6), np.float32)
    assert not logistic.sigmoid_inplace(a.T)                  # columns not contiguous
    assert not logistic.sigmoid_inplace(a[:, ::2])
    assert not logistic.sigmoid_inplace(np.zeros(3, np.float64))
    assert not logistic.sigmoid_inplace(np.zeros(0, np.float32))
    x = np.random.default_rng(1).normal(0, 3, (4, 6)).astype(np.float32).T   # sigmoid_ still works
    np.testing.assert_allclose(sigmoid_(x.copy()), reference(x), rtol=3e-7)


def test_without_numba_numpy_serves(monkeypatch):
    monkeypatch.setattr(compiled, "NUMBA", False)
    x = np.random.default_rng(2).normal(0, 3, 100).astype(np.float32)
    assert not logistic.sigmoid_inplace(x.copy())
    np.testing.assert_allclose(sigmoid_(x.copy()), reference(x), rtol=3e-7)
