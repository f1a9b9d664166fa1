"""Matrix products with binary states, as sums of weight rows (CPU).

The units of a binary RBM are 0 or 1 (thesis 1.3.2), and MNIST's are mostly 0: about
13% of a binarized digit's pixels are on, and the fantasy particles of a trained model
look like digits. A product ``v @ W.T`` with such a ``v`` is, for each case, the sum of
the columns of ``W`` where ``v`` is 1, and the weight gradient ``h^T v`` adds each case's
hidden vector into the rows of ``W^T`` where ``v`` is 1. Summing ~100 rows per case
instead of multiplying by all 784 does about a seventh of a dense product's work.

Measured on the 2-core CI VM (one thread, 13% ones): a 100x784x500 product took
1.1-1.2 ms in OpenBLAS and 0.5 ms as row sums; for 250 hidden units (one of two worker
threads) 0.6 ms against 0.3 ms. A whole PCD update gains less (``benchmarks/bench_rbm.py``,
session 10: 1.51x on one thread, 1.23x on two; the hidden sample's product stays dense).

The kernels are compiled by numba (``nogil``: the RBM's worker threads run them side by
side). Without numba, or for states that are not all 0/1 (grey data, mean-field CD's
probabilities) or too dense to gain, :meth:`BinaryStates.of` returns ``None`` and the
caller uses its dense product. Each sum runs in a fixed order, whichever slice of the
hidden units a thread asks for; results differ from BLAS's in the last bits only.

The weights must be stored with the visible index outermost (``W.T`` C-contiguous, i.e.
``W`` in Fortran order, as ``sklearn.neural_network.BernoulliRBM`` also keeps them), so
that the rows summed are contiguous.
"""
from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from lab.undirected import compiled

#: The bits of 1.0 read as an integer of the same size.
_ONE_BITS = {np.float32: 0x3F800000, np.float64: 0x3FF0000000000000}

#: Above this fraction of 1s a batch takes the dense path. The row sums' time grows with
#: the 1s (at 13%: half a dense product's); near 25% they would gain little (an
#: extrapolation, not a measured crossover).
MAX_DENSITY = 0.25

_ENABLED = os.environ.get("LAB_BINARY_PRODUCTS", "1") != "0"


def _kernels():
    """The compiled kernels, or ``None`` without numba (compiled at first use, cached on
    disk by numba)."""
    return compiled.kernels(_compile)


def available() -> bool:
    """Whether the binary-state products are in use (numba present, not disabled)."""
    return _ENABLED and _kernels() is not None


def warm_up() -> None:
    """Compile (or load from numba's cache) the float32 kernels now, so that the first
    update does not pay for it: a timed run's clock starts after this (about 5 s the
    first time on the CI VM, 1.5 s from the cache)."""
    if not available():
        return
    v = np.zeros((2, 8), dtype=np.float32)
    v[0, 1] = v[1, 5] = 1
    W = np.ones((2, 8), dtype=np.float32, order="F")
    out = np.empty((2, 2), dtype=np.float32)
    states = BinaryStates.of(v)
    hidden_pre(states, W.T, 0, out, slice(0, 2))
    weight_gradient(states, out, slice(0, 2))
    weight_gradient(states, out, slice(0, 2), out=W)


@contextlib.contextmanager
def disabled():
    """Dense products only, inside the block (process-wide: for benchmarks and tests
    that compare both paths). ``LAB_BINARY_PRODUCTS=0`` does the same for a whole run."""
    global _ENABLED
    before, _ENABLED = _ENABLED, False
    try:
        yield
    finally:
        _ENABLED = before


def _compile(numba):
    jit = numba.njit(nogil=True, cache=True)

    @jit
    def row_lists(bits, one, max_ones):
        """Where each row of ``v`` is 1, from ``bits``, ``v``'s values read as integers of
        the same size (``one``: the bits of 1.0): ``(ptr, idx)`` with row r's units in
        ``idx[ptr[r]:ptr[r+1]]``; ``ptr[0] = -1`` if ``v`` holds a value other than 0/1
        (-0.0 included) or more than ``max_ones`` ones. Two passes without branches (a
        check, then ``idx[k] = i; k += v != 0``): 2.3x faster than one pass that tests
        each value (0.07 vs 0.17 ms for a 100x784 batch on the CI VM)."""
        n, d = bits.shape
        ptr = np.empty(n + 1, np.int64)
        ptr[0] = -1
        bad = False
        for r in range(n):
            row = bits[r]
            for i in range(d):
                b = row[i]
                bad |= (b != 0) & (b != one)
        if bad:
            return ptr, np.empty(0, np.int32)
        idx = np.empty(n * d, np.int32)
        k = 0
        for r in range(n):
            row = bits[r]
            for i in range(d):
                idx[k] = i
                k += row[i] != 0
            ptr[r + 1] = k
        if k > max_ones:
            return ptr, idx[:0]
        ptr[0] = 0
        return ptr, idx[:k]

    @jit
    def unit_lists(ptr, idx, n_units):
        """The transpose of ``row_lists``: for each unit, the rows where it is 1."""
        count = np.zeros(n_units + 1, np.int64)
        for k in range(idx.shape[0]):
            count[idx[k] + 1] += 1
        uptr = np.cumsum(count)
        fill = uptr[:-1].copy()
        rows = np.empty(idx.shape[0], np.int32)
        for r in range(ptr.shape[0] - 1):
            for k in range(ptr[r], ptr[r + 1]):
                i = idx[k]
                rows[fill[i]] = r
                fill[i] += 1
        return uptr, rows

    @jit
    def sum_rows(ptr, idx, src, src_lo, out, out_lo, w, scale, accumulate):
        """``out[r, out_lo:out_lo+w] (+)= scale[0] * sum of src[i, src_lo:src_lo+w] over
        i in idx[ptr[r]:ptr[r+1]]``: ``+=`` when ``accumulate``. Four rows per pass (a
        quarter of the loads and stores of the sum); the sum is complete before it
        touches ``out``, so adding into weights rounds as ``W += G`` does. Whole
        C-contiguous arrays plus offsets: numba compiles slices of them to vector code,
        column blocks of them to scalar code. (Blocking the columns to stay in L2 was
        slower on the CI VM.)"""
        tmp = np.empty(w, src.dtype)
        s = scale[0]
        for r in range(ptr.shape[0] - 1):
            tmp[:] = 0
            k, end = ptr[r], ptr[r + 1]
            while k + 3 < end:
                a = src[idx[k], src_lo:src_lo + w]
                b = src[idx[k + 1], src_lo:src_lo + w]
                c = src[idx[k + 2], src_lo:src_lo + w]
                e = src[idx[k + 3], src_lo:src_lo + w]
                for j in range(w):
                    tmp[j] += (a[j] + b[j]) + (c[j] + e[j])
                k += 4
            while k < end:
                a = src[idx[k], src_lo:src_lo + w]
                for j in range(w):
                    tmp[j] += a[j]
                k += 1
            acc = out[r, out_lo:out_lo + w]
            if accumulate:
                for j in range(w):
                    acc[j] += s * tmp[j]
            else:
                for j in range(w):
                    acc[j] = s * tmp[j]

    return {"row_lists": row_lists, "unit_lists": unit_lists, "sum_rows": sum_rows}


class BinaryStates:
    """Where a batch of binary states ``v`` (n, n_units) is 1: by case (``ptr``,
    ``idx``) and, built on first use, by unit (the cases where each unit is on)."""

    def __init__(self, ptr, idx, n_units: int):
        self.ptr, self.idx, self.n_units = ptr, idx, n_units
        self._by_unit = None
        self._lock = threading.Lock()     # worker threads may ask for by_unit at once

    @classmethod
    def of(cls, v) -> "BinaryStates | None":
        """The 1s of ``v``, or ``None`` when the dense product should be used: the
        products are disabled or unavailable, ``v`` is not a C-contiguous numpy array,
        holds values other than 0 and 1, or more than ``MAX_DENSITY`` of it is 1."""
        if not (_ENABLED and isinstance(v, np.ndarray) and v.ndim == 2
                and v.flags.c_contiguous and v.dtype in (np.float32, np.float64)):
            return None
        k = _kernels()
        if k is None:
            return None
        ints = np.int32 if v.dtype == np.float32 else np.int64
        ptr, idx = k["row_lists"](v.view(ints), ints(_ONE_BITS[v.dtype.type]),
                                  int(MAX_DENSITY * v.size))
        if ptr[0] < 0:
            return None
        return cls(ptr, idx, v.shape[1])

    @property
    def n(self) -> int:
        return self.ptr.shape[0] - 1

    @property
    def density(self) -> float:
        return self.idx.shape[0] / max(1, self.n * self.n_units)

    def rows(self, start: int, stop: int) -> "BinaryStates":
        """Cases ``start..stop-1`` (a view: their lists keep their offsets)."""
        return BinaryStates(self.ptr[start:stop + 1], self.idx, self.n_units)

    @staticmethod
    def stack(a: "BinaryStates", b: "BinaryStates") -> "BinaryStates":
        """The states of ``a``'s cases followed by ``b``'s."""
        pa = a.ptr - a.ptr[0]
        ptr = np.concatenate([pa, b.ptr[1:] - b.ptr[0] + pa[-1]])
        idx = np.concatenate([a.idx[a.ptr[0]:a.ptr[-1]], b.idx[b.ptr[0]:b.ptr[-1]]])
        return BinaryStates(ptr, idx, a.n_units)

    def by_unit(self) -> "BinaryStates":
        """The transpose: for each unit, the cases (rows) where it is 1."""
        with self._lock:
            if self._by_unit is None:
                ptr, idx = self.ptr - self.ptr[0], self.idx[self.ptr[0]:self.ptr[-1]]
                uptr, rows = _kernels()["unit_lists"](ptr, idx, self.n_units)
                self._by_unit = BinaryStates(uptr, rows, self.n)
            return self._by_unit


def weights_fit(W) -> bool:
    """Whether ``W`` (n_hidden, n_visible) is laid out for these products: its
    transpose C-contiguous (Fortran order), so each visible unit's weights are one row."""
    return isinstance(W, np.ndarray) and W.ndim == 2 and W.T.flags.c_contiguous


def _sum_rows(states, src, src_lo, out, out_lo, w, scale=1.0, accumulate=False):
    _kernels()["sum_rows"](states.ptr, states.idx, src, src_lo, out, out_lo, w,
                           np.full(1, scale, dtype=src.dtype), accumulate)


def hidden_pre(states: BinaryStates, WT, src_lo: int, out, sl: slice) -> None:
    """``out[:, sl] = v @ W[sl].T`` for the binary ``v`` of ``states``, where the
    hidden units ``sl`` are the columns ``src_lo..`` of ``WT`` (n_visible, .), a
    C-contiguous transposed weight matrix (``W.T`` of a Fortran-ordered ``W``, or a
    slice's own). ``out`` (n, n_hidden) is C-contiguous."""
    _sum_rows(states, WT, src_lo, out, sl.start, sl.stop - sl.start)


def weight_gradient(states: BinaryStates, h, sl: slice, out=None, scale: float = 1.0):
    """The transposed weight gradient ``v^T h[:, sl]`` (n_visible, |sl|) of the hidden
    units ``sl``, for the binary ``v`` of ``states`` and a C-contiguous ``h`` (n,
    n_hidden): returned, or, given ``out`` (a Fortran-ordered weight matrix (n_hidden,
    n_visible)), ``scale`` times it added to rows ``sl`` of ``out`` in place."""
    cols = states.by_unit()
    w = sl.stop - sl.start
    if out is None:
        G = np.empty((states.n_units, w), dtype=h.dtype)
        _sum_rows(cols, h, sl.start, G, 0, w)
        return G
    _sum_rows(cols, h, sl.start, out.T, sl.start, w, scale, accumulate=True)
    return None
