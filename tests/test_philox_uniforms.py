"""The RBMs' compiled Philox uniforms (lab.undirected.philox_uniforms) against the numpy
Philox4x32-10 of lab.gpu.philox (itself checked against the published known answers)."""
import numpy as np
import pytest

from lab.backend import RandomStream
from lab.gpu.philox import philox4x32_10
from lab.undirected import compiled, philox_uniforms

pytest.importorskip("numba")


def reference(key, n):
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    words = philox4x32_10((blocks & np.uint64(0xFFFFFFFF), blocks >> np.uint64(32), 0, 0),
                          (key & 0xFFFFFFFF, key >> 32))
    bits = np.stack(words, axis=1).reshape(-1)[:n]          # block b gives elements 4b..4b+3
    return (bits >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 2047, 2048, 2049, 78_400])
@pytest.mark.parametrize("key", [0, 0x0123456789ABCDEF, 2**63 - 1])
def test_bits_match_the_numpy_reference(key, n):
    assert np.array_equal(philox_uniforms.philox_uniforms(key, n), reference(key, n))


def test_shape_range_and_moments():
    u = philox_uniforms.philox_uniforms(12345, (400, 784))
    assert u.shape == (400, 784) and u.dtype == np.float32
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.002 and abs(u.var() - 1 / 12) < 0.001
    counts = np.histogram(u, bins=16, range=(0, 1))[0]
    expected = u.size / 16
    assert ((counts - expected) ** 2 / expected).sum() < 50   # chi-square, 15 dof: p ~ 1e-5
    # neighbours within a block and across blocks are uncorrelated
    flat = u.reshape(-1) - 0.5
    for lag in (1, 2, 3, 4, 784):
        assert abs(np.mean(flat[:-lag] * flat[lag:])) / (1 / 12) < 0.01


def test_draws_follow_the_stream_state():
    a, b = RandomStream(7), RandomStream(7)
    x1, x2 = philox_uniforms.draw(a, (5, 9)), philox_uniforms.draw(a, (5, 9))
    assert not np.array_equal(x1, x2)                        # a fresh key per draw
    state = b.get_state()
    assert np.array_equal(philox_uniforms.draw(b, (5, 9)), x1)
    c = RandomStream(0)
    c.set_state(state)                                       # a restored stream replays
    assert np.array_equal(philox_uniforms.draw(c, (5, 9)), x1)


def test_other_streams_and_dtypes_use_stream_uniform(monkeypatch):
    s = RandomStream(3)
    x64 = philox_uniforms.draw(s, (4,), np.float64)
    assert x64.dtype == np.float64 and np.array_equal(x64, RandomStream(3).uniform((4,), dtype=np.float64))
    monkeypatch.setattr(compiled, "NUMBA", False)
    assert np.array_equal(philox_uniforms.draw(RandomStream(3), (6,)), RandomStream(3).uniform((6,)))
