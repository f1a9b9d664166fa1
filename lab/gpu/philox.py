"""Philox4x32-10 in numpy: the reference for ``kernels/philox.cuh`` (same bits).

The GPU kernels draw their random numbers in place from ``(seed, stream, step, index)``
(a counter-based generator: Salmon et al. 2011), so a CUDA graph replays with fresh
numbers when ``step`` lives in device memory and is advanced by the graph itself. This
module computes the same numbers on the CPU: the tests check the CUDA text against it
(a host-only nvcc harness) and the published known-answer vectors, and the GPU tests give
the CPU reference path exactly the uniforms the kernels used.
"""
from __future__ import annotations

import numpy as np

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key):
    """Philox4x32-10 of ``counter`` (4 uint32 arrays, broadcast) under ``key`` (2 uint32):
    a tuple of 4 uint32 arrays."""
    x, y, z, w = (np.asarray(c, dtype=np.uint64) & _MASK for c in counter)
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
        p0 = _M0 * x
        p1 = _M1 * z
        x, y, z, w = ((p1 >> np.uint64(32)) ^ y ^ np.uint64(k0), p1 & _MASK,
                      (p0 >> np.uint64(32)) ^ w ^ np.uint64(k1), p0 & _MASK)
    return tuple(v.astype(np.uint32) for v in (x, y, z, w))


def uniforms(seed: int, stream: int, step: int, n: int | tuple, start: int = 0) -> np.ndarray:
    """The float32 uniforms in [0, 1) that ``philox_uniform`` gives elements
    ``start .. start + size - 1`` (C order over shape ``n``) of draw ``stream`` at ``step``."""
    shape = (n,) if isinstance(n, (int, np.integer)) else tuple(n)
    index = np.arange(start, start + int(np.prod(shape, dtype=np.int64)), dtype=np.uint64)
    seed, step = int(seed) & (2**64 - 1), int(step) & (2**64 - 1)
    z = (int(stream) & 0xFFFF) | (((step >> 32) << 16) & 0xFFFFFFFF)
    x, _, _, _ = philox4x32_10((index & _MASK, index >> np.uint64(32), z, step & 0xFFFFFFFF),
                               (seed & 0xFFFFFFFF, seed >> 32))
    return ((x >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)).reshape(shape)
