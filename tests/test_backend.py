"""lab.backend: device choice, clear GPU errors, seeded streams on numpy."""
import json
import sys
import types

import numpy as np
import pytest

import lab.backend as backend


def test_cpu_is_the_default(monkeypatch):
    monkeypatch.delenv("LAB_DEVICE", raising=False)
    b = backend.get_backend()
    assert b.name == "cpu" and b.xp is np


def test_environment_variable_picks_the_device(monkeypatch):
    monkeypatch.setenv("LAB_DEVICE", "cpu")
    assert backend.get_backend().name == "cpu"
    monkeypatch.setenv("LAB_DEVICE", "tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        backend.get_backend()


def _fake_cupy(monkeypatch, works: bool):
    """A cupy module that imports but (like CuPy without a GPU) fails at first use."""
    fake = types.ModuleType("cupy")

    def arange(*a, **k):
        if not works:
            raise RuntimeError("CUDA driver version is insufficient")
        return np.arange(*a, **k)

    fake.arange = arange
    fake.float32 = np.float32
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_cupy_probe", None)
    return fake


def test_gpu_asked_for_but_unusable_gives_a_clear_error(monkeypatch):
    _fake_cupy(monkeypatch, works=False)
    with pytest.raises(backend.GPUUnavailableError, match="cannot run a kernel.*insufficient"):
        backend.get_backend("gpu")
    assert backend.get_backend("auto").name == "cpu"
    assert not backend.gpu_available()


def test_gpu_missing_cupy_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import raises ImportError
    monkeypatch.setattr(backend, "_cupy_probe", None)
    with pytest.raises(backend.GPUUnavailableError, match="cannot be imported"):
        backend.get_backend("gpu")


def test_working_cupy_is_chosen(monkeypatch):
    fake = _fake_cupy(monkeypatch, works=True)
    b = backend.get_backend("gpu")
    assert b.name == "gpu" and b.xp is fake
    assert backend.get_backend("auto").name == "gpu"


def test_the_probe_runs_once(monkeypatch):
    calls = []
    fake = _fake_cupy(monkeypatch, works=True)
    original = fake.arange
    fake.arange = lambda *a, **k: calls.append(1) or original(*a, **k)
    backend.get_backend("gpu")
    backend.get_backend("gpu")
    assert len(calls) == 1


def test_array_module_of_numpy_and_to_numpy():
    a = np.ones(3)
    assert backend.get_array_module(a, 1.0) is np
    assert backend.to_numpy(a) is a


def test_stream_is_reproducible_and_dtypes_follow_the_request():
    a, b = backend.RandomStream(5), backend.RandomStream(5)
    np.testing.assert_array_equal(a.uniform((3, 4)), b.uniform((3, 4)))
    assert a.uniform((2,)).dtype == np.float32
    assert a.normal((2,), dtype=np.float64).dtype == np.float64
    assert not np.array_equal(backend.RandomStream(6).uniform((5,)), backend.RandomStream(5).uniform((5,)))


def test_stream_bernoulli_statistics():
    s = backend.RandomStream(0)
    p = np.full((20000,), 0.3)
    x = s.bernoulli(p)
    assert set(np.unique(x)) <= {0.0, 1.0}
    assert abs(x.mean() - 0.3) < 0.01


def test_stream_state_round_trips_through_json():
    s = backend.RandomStream(11)
    s.uniform((10,))
    state = json.loads(json.dumps(s.get_state()))
    expected = s.normal((4,))
    t = backend.RandomStream(0)
    t.set_state(state)
    np.testing.assert_array_equal(t.normal((4,)), expected)
    with pytest.raises(ValueError, match="cannot restore"):
        t.set_state({"kind": "gpu", "seed": 1, "draws": 0})


@pytest.mark.gpu
def test_real_gpu_backend_streams():
    b = backend.get_backend("gpu")
    s = b.rng(3)
    x = s.uniform((1000,))
    assert type(x).__module__.startswith("cupy")
    assert 0.4 < float(x.mean()) < 0.6
