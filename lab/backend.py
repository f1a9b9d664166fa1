"""The one place that picks the array module: numpy on the CPU, CuPy on a GPU.

Every other module asks here for ``xp`` (Chainer's idea: one code path serves numpy
and CuPy) instead of importing CuPy itself, so the CPU path never needs CuPy.
Thesis section 2.5.2 explains why the GPU matters; this module only makes the
choice explicit and fails loudly when a GPU was asked for but cannot run.

Choosing the device:
    ``get_backend("cpu")`` / ``get_backend("gpu")``, or the environment variable
    ``LAB_DEVICE`` (``cpu``, ``gpu`` or ``auto``) when no argument is given.
    ``auto`` takes the GPU when CuPy can really run a kernel, else the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The default floating point type for models; float64 is used for gradient checks.
DEFAULT_FLOAT = np.float32

DEVICES = ("cpu", "gpu", "auto")


class GPUUnavailableError(RuntimeError):
    """A GPU was asked for, but CuPy is missing or cannot run a kernel here."""


_cupy_probe: tuple[Any, str | None] | None = None


def _probe_cupy() -> tuple[Any, str | None]:
    """Import CuPy and run one tiny kernel; return (module or None, reason)."""
    global _cupy_probe
    if _cupy_probe is None:
        try:
            import cupy  # noqa: PLC0415  (optional dependency)
        except Exception as exc:  # ImportError, or a broken CUDA install
            _cupy_probe = (None, f"CuPy cannot be imported ({type(exc).__name__}: {exc})")
        else:
            try:
                # CuPy imports without a GPU and fails at first use: make that use now.
                value = float((cupy.arange(3, dtype=cupy.float32) * 2).sum())
                if value != 6.0:
                    raise RuntimeError(f"test kernel returned {value}, expected 6.0")
            except Exception as exc:
                _cupy_probe = (None, f"CuPy is installed but cannot run a kernel "
                                     f"({type(exc).__name__}: {exc})")
            else:
                _cupy_probe = (cupy, None)
    return _cupy_probe


def gpu_available() -> bool:
    """True when CuPy is installed and a CUDA kernel really runs."""
    return _probe_cupy()[0] is not None


@dataclass(frozen=True)
class Backend:
    """An array module with its device name: ``xp`` is numpy or cupy."""

    name: str
    xp: Any

    def asarray(self, a, dtype=None):
        """Move ``a`` to this backend (a copy only when needed)."""
        if self.name == "gpu":
            return self.xp.asarray(a, dtype=dtype)
        return np.asarray(to_numpy(a), dtype=dtype)

    def rng(self, seed: int | None = None) -> "RandomStream":
        return RandomStream(seed, self)

    def synchronize(self) -> None:
        if self.name == "gpu" and self.xp is not np:    # (numpy stands in for CuPy in CPU checks)
            self.xp.cuda.get_current_stream().synchronize()


CPU = Backend("cpu", np)


def get_backend(device: str | None = None) -> Backend:
    """Return the backend for ``device`` (``cpu``, ``gpu``, ``auto``; default ``$LAB_DEVICE`` or cpu).

    Raises ``GPUUnavailableError`` with the reason when ``gpu`` is asked for and CuPy
    cannot run, and ``ValueError`` for an unknown device name.
    """
    if device is None:
        device = os.environ.get("LAB_DEVICE", "cpu") or "cpu"
    device = str(device).lower()
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}"
                         " (argument or LAB_DEVICE)")
    if device == "cpu":
        return CPU
    cupy, reason = _probe_cupy()
    if cupy is None:
        if device == "auto":
            return CPU
        raise GPUUnavailableError(f"device 'gpu' was asked for but is not usable: {reason}. "
                                  "Install the CuPy wheel for your CUDA version "
                                  "(pip install cupy-cuda12x or cupy-cuda13x) or use device='cpu'.")
    return Backend("gpu", cupy)


def get_array_module(*arrays) -> Any:
    """numpy, or cupy when any argument is a CuPy array (without importing CuPy)."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy  # noqa: PLC0415
            return cupy
    return np


def to_numpy(a) -> np.ndarray:
    """A numpy copy/view of ``a`` whatever device it lives on (for snapshots, plots, files)."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def backend_of(a) -> Backend:
    """The backend an array lives on."""
    xp = get_array_module(a)
    return CPU if xp is np else Backend("gpu", xp)


class RandomStream:
    """A seeded random stream that works on numpy and CuPy with the same calls.

    On the CPU it wraps ``numpy.random.Generator(PCG64(seed))`` and its state can be
    saved and restored exactly (``get_state``/``set_state``, JSON-able), which the
    checkpoints use. On the GPU it wraps ``cupy.random.default_rng(seed)``; there the
    state is the seed plus a draw counter and a restore replays the counter
    (reproducible, but resume equality is only promised on the CPU).

    On the GPU, draws the host needs (minibatch permutations, scalar integers) come
    from a companion numpy generator keyed by the same seed, so they never wait for the
    device; ``set_state`` there re-keys both generators from ``(seed, draws)``: a restored
    run is deterministic, though not the continuation of the saved one.
    """

    def __init__(self, seed: int | None = None, backend: Backend | None = None):
        self.backend = backend or CPU
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.seed = int(seed)
        self._draws = 0
        self._make()

    #: Draw with numpy on the host (and upload) even on the GPU: ``HostRandomStream``.
    _numpy_draws = False

    @property
    def _device_draws(self) -> bool:
        return self.backend.name == "gpu" and not self._numpy_draws

    def _deliver(self, a):
        """A host draw on this stream's device (numpy draws only travel on the GPU)."""
        return self.backend.asarray(a) if self._numpy_draws and self.backend.name == "gpu" else a

    def _make(self, key=None) -> None:
        if self._device_draws:
            # cupy's default_rng takes an int seed; (seed, draws) keys a restored stream
            dev_seed = self.seed if key is None else int(np.random.SeedSequence(key).generate_state(1)[0])
            self._gen = self.backend.xp.random.default_rng(dev_seed)
            host_key = [self.seed, 1] if key is None else list(key) + [1]
            self._host = np.random.Generator(np.random.PCG64(np.random.SeedSequence(host_key)))
        else:
            self._gen = self._host = np.random.Generator(np.random.PCG64(self.seed))

    @property
    def xp(self):
        return self.backend.xp

    def _count(self, shape) -> None:
        self._draws += 1

    def uniform(self, shape, low=0.0, high=1.0, dtype=DEFAULT_FLOAT):
        """Uniform floats in [low, high)."""
        self._count(shape)
        u = self._gen.random(shape, dtype=np.float64 if dtype == np.float64 else np.float32)
        if low != 0.0 or high != 1.0:
            u = u * (high - low) + low
        return self._deliver(u.astype(dtype, copy=False))

    def normal(self, shape, scale=1.0, dtype=DEFAULT_FLOAT):
        self._count(shape)
        z = self._gen.standard_normal(shape, dtype=np.float64 if dtype == np.float64 else np.float32)
        return self._deliver((z * scale).astype(dtype, copy=False) if scale != 1.0
                             else z.astype(dtype, copy=False))

    def bernoulli(self, p, dtype=DEFAULT_FLOAT):
        """A 0/1 sample with probabilities ``p`` (any shape), as ``dtype``."""
        p = self.xp.asarray(p)
        u = self.uniform(p.shape, dtype=np.float64 if p.dtype == np.float64 else np.float32)
        return (u < p).astype(dtype)

    def integers(self, low, high=None, size=None):
        """Random integers; on the GPU a scalar (``size=None``) is drawn on the host."""
        self._count(size)
        if self.backend.name == "gpu" and size is None:
            return self._host.integers(low, high)
        return self._deliver(self._gen.integers(low, high, size=size))

    def permutation(self, n: int):
        """A random permutation of ``range(n)`` on the CPU (used for minibatch order)."""
        self._count(n)
        if self.backend.name == "gpu":   # CuPy's Generator has no permutation; the order lives on the host
            return self._host.permutation(n)
        return self._gen.permutation(n)

    def get_state(self) -> dict:
        """A JSON-able description of the state."""
        if self._device_draws:
            return {"kind": "gpu", "seed": self.seed, "draws": self._draws}
        return {"kind": "cpu", "seed": self.seed, "draws": self._draws,
                "pcg64": _jsonable(self._gen.bit_generator.state)}

    def set_state(self, state: dict) -> None:
        """Restore ``get_state()`` output: exactly on the CPU; on the GPU by re-keying the
        generators from the state's ``(seed, draws)`` (deterministic, not a continuation)."""
        if self._device_draws:
            self.seed = int(state["seed"])
            self._draws = int(state.get("draws", 0))
            self._make(key=[self.seed, self._draws])
            return
        if state.get("kind") == "cpu" and (self.backend.name == "cpu" or self._numpy_draws):
            self.seed = int(state["seed"])
            self._draws = int(state["draws"])
            self._gen = self._host = np.random.Generator(np.random.PCG64())
            self._gen.bit_generator.state = _from_jsonable(state["pcg64"])
            return
        raise ValueError(f"cannot restore a {state.get('kind')!r} random state on the "
                         f"{self.backend.name} backend exactly")


class HostRandomStream(RandomStream):
    """The CPU stream's draws, number for number, delivered on any backend.

    Draws come from ``numpy.random.Generator(PCG64(seed))`` on the host, exactly as a
    CPU ``RandomStream(seed)`` makes them, and are uploaded to ``backend``; its state is
    the CPU stream's (a CPU run resumed from it continues exactly). A GPU run given this
    stream sees the same dropout masks, manager noise and minibatch order as the CPU run
    with the same seed, so the two can be compared step for step (what is left is float
    rounding). Slower than the device generator: for checks, not for training."""

    _numpy_draws = True


def _jsonable(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif isinstance(v, (np.integer, int)):
            out[k] = str(int(v))  # 128-bit integers do not survive JSON floats
        else:
            out[k] = v
    return out


def _from_jsonable(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out[k] = _from_jsonable(v)
        elif isinstance(v, str) and v.lstrip("-").isdigit():
            out[k] = int(v)
        else:
            out[k] = v
    return out
