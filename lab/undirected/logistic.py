"""The logistic sigmoid 1 / (1 + exp(-x)) in place, for float32 arrays on the CPU (numba).

Every binary unit's probability in an RBM or MRF is a sigmoid of its input (thesis 1.3.2),
so a PCD update of the 784x500 MNIST RBM takes about 180,000 of them. numpy's float32
``exp`` runs at about 2.5 ns per value on the CI VM (it is not vectorized there); this
kernel computes ``exp`` from a polynomial that LLVM vectorizes (AVX2: 8 lanes) and does
the whole sigmoid in one pass, 1.7-2.4x faster than ``_base.sigmoid_``'s four numpy
passes on the CI VM (0.12 vs 0.20-0.30 ms for 100,000 values).

Accuracy: relative error at most 1.5e-7 (about one float32 ulp) for x >= -80, against a
float64 reference; numpy's float32 sigmoid is within 2.3e-7. For x <= -87 the result is
exactly 0 (numpy's: 0 or a subnormal below 1e-38); NaN stays NaN.

``exp(z) = 2^k * p(f)``: ``k = round(z / ln 2)``, ``f = z - k ln 2`` (ln 2 split in two for
an exact product), ``p`` the degree-7 polynomial of Cephes' ``expf``, and ``2^k`` made by
writing ``k + 127`` into a float's exponent bits.
"""
from __future__ import annotations

import numpy as np

from lab.undirected import compiled

#: exp's argument is clamped to +-87 (2^k stays a normal float32).
_CLAMP = 87.0


def _build(numba):
    from llvmlite import ir  # noqa: PLC0415 (numba's own dependency)
    from numba import types  # noqa: PLC0415
    from numba.extending import intrinsic  # noqa: PLC0415

    @intrinsic
    def bits_as_float32(typingctx, bits):
        """The float32 whose bit pattern is the int32 ``bits``."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())
        return types.float32(types.int32), codegen

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def sigmoid_rows(flat, n_rows, row_stride, width):
        """Rows ``r*row_stride .. r*row_stride+width-1`` of the 1-D float32 ``flat``,
        for r < n_rows, replaced by their sigmoid."""
        log2e = np.float32(1.4426950408889634)
        ln2_hi = np.float32(0.693359375)
        ln2_lo = np.float32(-2.12194440e-4)
        one = np.float32(1.0)
        big = np.float32(_CLAMP)
        for r in range(n_rows):
            row = flat[r * row_stride:r * row_stride + width]
            for j in range(width):
                z = -row[j]
                zc = big if z > big else z           # a NaN passes both tests unchanged
                zc = -big if zc < -big else zc
                k = np.floor(zc * log2e + np.float32(0.5))
                f = zc - k * ln2_hi - k * ln2_lo
                p = np.float32(1.9875691500e-4)
                p = p * f + np.float32(1.3981999507e-3)
                p = p * f + np.float32(8.3334519073e-3)
                p = p * f + np.float32(4.1665795894e-2)
                p = p * f + np.float32(1.6666665459e-1)
                p = p * f + np.float32(5.0000001201e-1)
                p = p * f * f + f + one
                e = p * bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))
                row[j] = np.float32(0.0) if z >= big else one / (one + e)

    return {"sigmoid_rows": sigmoid_rows}


def warm_up() -> None:
    """Compile the kernel (or load it from numba's cache) now, not in a timed update."""
    sigmoid_inplace(np.zeros(8, dtype=np.float32))


def sigmoid_inplace(x) -> bool:
    """``x[...] = 1 / (1 + exp(-x))`` if ``x`` is a float32 numpy array whose last axis is
    contiguous and whose rows are evenly spaced (C-contiguous, or a 2-D slice of columns
    such as ``H[:, a:b]``); returns whether it did (False: numba missing or another
    array, and ``x`` is untouched)."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.size and x.flags.writeable):
        return False
    if x.flags.c_contiguous:
        n_rows, row_stride, width = 1, x.size, x.size
    elif x.ndim == 2 and x.strides[1] == 4 and x.strides[0] % 4 == 0 and x.strides[0] >= 4 * x.shape[1]:
        n_rows, row_stride, width = x.shape[0], x.strides[0] // 4, x.shape[1]
    else:
        return False
    k = compiled.kernels(_build)
    if k is None:
        return False
    # one 1-D view from the first value to the last, over the rows and the gaps between
    flat = x.reshape(-1) if n_rows == 1 else np.lib.stride_tricks.as_strided(
        x, shape=((n_rows - 1) * row_stride + width,), strides=(4,))
    k["sigmoid_rows"](flat, n_rows, row_stride, width)
    return True
