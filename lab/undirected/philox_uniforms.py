"""Float32 uniforms for the RBMs' Gibbs sampling on the CPU: Philox4x32-10, compiled by
numba, keyed by the estimator's random stream.

Each Gibbs step of an RBM update samples every unit from a uniform (thesis 1.3.2): about
128,000 per PCD update of the 784x500 MNIST RBM. numpy's ``Generator.random`` makes them
one at a time (0.35 ms per 78,400 on the CI VM); Philox4x32-10 (Salmon et al. 2011, the
counter-based generator the GPU kernels use, ``lab/gpu/philox.py``) makes four per
counter and vectorizes: 0.12 ms. One draw = one 64-bit key taken from the stream, then
counters 0, 1, 2, ... (block ``b`` gives elements ``4b .. 4b+3``), so the stream's saved
state still restores a run exactly, and the numbers do not depend on how threads split
the work. The float is ``(word >> 8) * 2^-24``, in [0, 1) as numpy's float32 uniforms.

Without numba, for float64, or on the GPU, :func:`draw` is ``stream.uniform``: the same
distribution, other numbers.
"""
from __future__ import annotations

import numpy as np

from lab.undirected import compiled

#: Philox blocks computed per pass before their words are interleaved into the output.
_CHUNK = 512


def _build(numba):
    @numba.njit(nogil=True, cache=True)
    def philox_fill(out, key):
        """``out[4b + q] = word q of Philox4x32-10((b, b >> 32, 0, 0), key) as a float``."""
        n = out.shape[0]
        m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
        w0, w1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
        mask, s32 = np.uint64(0xFFFFFFFF), np.uint64(32)
        scale = np.float32(2.0 ** -24)
        key0, key1 = np.uint64(key) & mask, np.uint64(key) >> s32
        n_blocks = (n + 3) // 4
        planes = np.empty((4, _CHUNK), np.float32)     # word q of each block, vectorized
        for b0 in range(0, n_blocks, _CHUNK):
            count = min(_CHUNK, n_blocks - b0)
            for j in range(count):
                b = np.uint64(b0 + j)
                x, y, z, w = b & mask, b >> s32, np.uint64(0), np.uint64(0)
                k0, k1 = key0, key1
                for _ in range(10):
                    p0 = m0 * x
                    p1 = m1 * z
                    x = (p1 >> s32) ^ y ^ k0
                    y = p1 & mask
                    z = (p0 >> s32) ^ w ^ k1
                    w = p0 & mask
                    k0 = (k0 + w0) & mask
                    k1 = (k1 + w1) & mask
                planes[0, j] = np.float32(np.uint32(x) >> np.uint32(8)) * scale
                planes[1, j] = np.float32(np.uint32(y) >> np.uint32(8)) * scale
                planes[2, j] = np.float32(np.uint32(z) >> np.uint32(8)) * scale
                planes[3, j] = np.float32(np.uint32(w) >> np.uint32(8)) * scale
            base = 4 * b0
            for i in range(min(4 * count, n - base)):
                out[base + i] = planes[i & 3, i >> 2]

    return {"philox_fill": philox_fill}


def philox_uniforms(key: int, shape) -> np.ndarray:
    """The float32 uniforms of ``key``, in C order over ``shape`` (numba required)."""
    out = np.empty(shape, dtype=np.float32)
    compiled.kernels(_build)["philox_fill"](out.reshape(-1), np.uint64(key))
    return out


def available(stream, dtype) -> bool:
    """Whether :func:`draw` uses Philox for this stream and dtype: a ``RandomStream`` on
    the CPU, float32, numba present (other objects with a ``uniform`` method, e.g. tests'
    scripted streams, are asked for their uniforms)."""
    backend = getattr(stream, "backend", None)
    return (np.dtype(dtype) == np.float32 and backend is not None and backend.name == "cpu"
            and compiled.kernels(_build) is not None)


def draw(stream, shape, dtype=np.float32):
    """Uniforms in [0, 1) of ``shape``: Philox under a key drawn from ``stream`` where
    :func:`available`, else ``stream.uniform``."""
    if not available(stream, dtype):
        return stream.uniform(shape, dtype=dtype)
    return philox_uniforms(int(stream.integers(0, 2**63)), shape)


def warm_up() -> None:
    """Compile the kernel (or load it from numba's cache) now, not in a timed update."""
    if compiled.kernels(_build) is not None:
        philox_uniforms(0, 4)
