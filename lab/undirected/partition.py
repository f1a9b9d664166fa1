"""Exact log partition functions by enumeration (thesis 3.3.2 and 3.3.4).

RBM: ``log Z = logsumexp_s [bias_s . s + sum_i softplus(bias_i + (s A)_i)]`` where ``s``
runs over all states of the smaller layer (the other layer is summed out analytically).
The 784x25 MNIST model of fig 3.1 has 2^25 hidden states times 784 softplus terms:
2.6e10 transcendental evaluations, about five minutes of plain numpy on two cores.

The CPU path here ("split") turns most of that work into small matrix products:

* split the enumerated units into two halves, ``s = (s1, s2)``, so every other-layer
  input is ``x_i = p_i(s1) + q_i(s2)`` (tables of 2^12 and 2^13 rows);
* group the other layer's units in threes; for a group ``g`` the product
  ``prod_{i in g} (1 + e^{p_i} e^{q_i})`` expands into a sum over the 8 subsets ``S`` of
  ``g`` of ``e^{P_S(s1)} e^{Q_S(s2)}`` -- a matrix product with inner dimension 8;
* scale each row/column by its largest term (kept aside in float64), so the float32
  products lie in [e^-bound, 8]; multiply a bundle of groups together and take one
  ``log2`` per bundle. Every term is positive, so nothing cancels.

Where a group's dynamic range could underflow float32 the group falls back to float64
products, and beyond that to direct softplus sums: the result stays exact (to rounding)
for any weights. Two worker threads each run single-threaded BLAS (``threadpoolctl``
when installed), which beats one call with two BLAS threads for these thin products.

The fully visible MRF (3.3.4) uses the same split: ``L(a, b) = r(a) + c(b) + a^T W_ab b``
is one thin matrix product per chunk, and the exact moments (for the exact likelihood
gradient) are a few more products against the resulting probability table.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lab.backend import get_array_module
from lab.undirected.parallel import blas_single_thread, cpu_count

#: Above this many enumerated units the exact sum is refused (use AIS instead).
MAX_ENUMERATED_UNITS = 32

_LN2 = math.log(2.0)
_GROUP = 3            # other-layer units per matrix-product group (inner dimension 8)
_BUNDLE_MAX = 32      # groups multiplied before one log2: products stay below 2^96
_F32_SAFE = 80.0      # a float32 bundle whose product can fall below e^-80 is split up
_F64_SAFE = 650.0     # beyond this a group's products could underflow float64


def state_table(n: int, xp=np, dtype=np.float64, start: int = 0, stop: int | None = None):
    """All binary states of ``n`` units (rows ``start..stop``), unit ``i`` = bit ``i``."""
    stop = 2 ** n if stop is None else stop
    idx = xp.arange(start, stop, dtype=xp.int64)
    return ((idx[:, None] >> xp.arange(n, dtype=xp.int64)[None, :]) & 1).astype(dtype)


def default_threads() -> int:
    return max(1, min(cpu_count(), 8))


def _map_chunks(work, starts, threads: int | None) -> list:
    """``[work(s) for s in starts]``, on a thread pool when BLAS could be pinned to one thread."""
    threads = default_threads() if threads is None else max(1, int(threads))
    with blas_single_thread() as limited:
        if threads > 1 and limited:
            with ThreadPoolExecutor(threads) as pool:
                return list(pool.map(work, starts))
        return [work(s) for s in starts]


# ----------------------------------------------------------------------------------
# RBM
# ----------------------------------------------------------------------------------


def rbm_log_partition(W, b, c, *, enumerate: str = "auto", method: str = "auto",
                      threads: int | None = None) -> float:
    """Exact ``log Z`` of a binary RBM with weights ``W`` (n_hidden, n_visible),
    visible biases ``b`` and hidden biases ``c``.

    ``enumerate``: ``"auto"`` (the smaller layer), ``"hidden"`` or ``"visible"``.
    ``method``: ``"direct"`` (chunked softplus sums, works on numpy and CuPy),
    ``"split"`` (the CPU matrix-product scheme of this module's docstring) or
    ``"auto"`` (split on the CPU for 16 or more enumerated units, else direct).
    """
    xp = get_array_module(W)
    W = xp.asarray(W)
    n_hidden, n_visible = W.shape
    if enumerate == "auto":
        enumerate = "hidden" if n_hidden <= n_visible else "visible"
    if enumerate == "hidden":
        A, bias_enum, bias_other = W, c, b
    elif enumerate == "visible":
        A, bias_enum, bias_other = W.T, b, c
    else:
        raise ValueError(f"enumerate must be 'auto', 'hidden' or 'visible', got {enumerate!r}")
    return log_sum_enumerated(A, bias_enum, bias_other, method=method, threads=threads)


def log_sum_enumerated(A, bias_enum, bias_other, *, method: str = "auto",
                       threads: int | None = None) -> float:
    """``log sum_s exp(bias_enum . s + sum_i softplus(bias_other_i + (s A)_i))`` over all
    binary ``s`` of length ``A.shape[0]``."""
    xp = get_array_module(A)
    n = int(A.shape[0])
    if n > MAX_ENUMERATED_UNITS:
        raise ValueError(f"exact enumeration of 2^{n} states is out of reach "
                         f"(limit 2^{MAX_ENUMERATED_UNITS}); estimate log Z with AIS instead")
    if A.shape != (n, bias_other.shape[0]) or bias_enum.shape != (n,):
        raise ValueError(f"shape mismatch: A {A.shape}, bias_enum {bias_enum.shape}, "
                         f"bias_other {bias_other.shape}")
    if method == "auto":
        method = "split" if (xp is np and n >= 16) else "direct"
    if method == "direct":
        if xp is np:
            with blas_single_thread():
                return _log_sum_direct(A, bias_enum, bias_other)
        return _log_sum_direct(A, bias_enum, bias_other)
    if method == "split":
        if xp is not np:
            raise ValueError("method='split' is the CPU scheme; use method='direct' on the GPU")
        return _log_sum_split(np.asarray(A, np.float64), np.asarray(bias_enum, np.float64),
                              np.asarray(bias_other, np.float64), threads)
    raise ValueError(f"method must be 'auto', 'direct' or 'split', got {method!r}")


def _log_sum_direct(A, bias_enum, bias_other) -> float:
    """Chunked float64 enumeration: low bits tabulated once, high bits as offsets."""
    xp = get_array_module(A)
    A = A.astype(xp.float64)
    bias_enum = bias_enum.astype(xp.float64)
    bias_other = bias_other.astype(xp.float64)
    n, m = A.shape
    low_bits = min(n, max(0, int(math.log2(max(1, (1 << 22) // max(1, m))))))
    S_low = state_table(low_bits, xp)
    X_low = S_low @ A[:low_bits]
    e_low = S_low @ bias_enum[:low_bits]
    high = n - low_bits
    S_high = state_table(high, xp)
    partial = xp.empty(2 ** high, dtype=xp.float64)
    for k in range(2 ** high):
        s = S_high[k]
        X = X_low + (bias_other + s @ A[low_bits:])[None, :]
        L = e_low + s @ bias_enum[low_bits:] + xp.logaddexp(0.0, X).sum(axis=1)
        mx = L.max()
        partial[k] = mx + xp.log(xp.exp(L - mx).sum())
    mx = partial.max()
    return float(mx + xp.log(xp.exp(partial - mx).sum()))


def _subset_matrix(k: int) -> np.ndarray:
    """(k, 2^k) indicator: column S has ones at the members of subset S."""
    return ((np.arange(2 ** k)[None, :] >> np.arange(k)[:, None]) & 1).astype(np.float64)


def _log_sum_split(A, bias_enum, bias_other, threads) -> float:
    n, m = A.shape
    n1 = n // 2
    S1, S2 = state_table(n1), state_table(n - n1)
    p = bias_other[None, :] + S1 @ A[:n1]          # (2^n1, m)
    q = S2 @ A[n1:]                                # (2^n2, m)
    # Move each unit's offset between the halves so both ranges are centred alike:
    # smaller per-half maxima mean smaller scale factors and fewer fallbacks.
    shift = 0.5 * (0.5 * (p.max(0) + p.min(0)) - 0.5 * (q.max(0) + q.min(0)))
    p -= shift
    q += shift
    row = S1 @ bias_enum[:n1]
    col = S2 @ bias_enum[n1:]
    groups = [np.arange(i, min(i + _GROUP, m)) for i in range(0, m, _GROUP)]
    U, Vt, alpha, beta = [], [], [], []
    for g in groups:
        M = _subset_matrix(len(g))
        P = p[:, g] @ M
        Q = q[:, g] @ M
        a = P.max(axis=1)
        bq = Q.max(axis=1)
        row += a
        col += bq
        alpha.append(a)
        beta.append(bq.max())
        U.append(np.exp(P - a[:, None]).astype(np.float32))
        Vt.append(np.ascontiguousarray(np.exp(Q - bq[:, None]).T.astype(np.float32)))
    alpha = np.stack(alpha)                        # (n_groups, 2^n1)
    beta = np.asarray(beta)                        # (n_groups,)
    n_rows, n_cols = p.shape[0], q.shape[0]
    rows_per_chunk = max(1, min(n_rows, (1 << 19) // n_cols))

    wide_cols: dict[int, np.ndarray] = {}   # float64 column tables, made on first need

    def wide_factor(gi, rows):
        """The scaled group factor in float64 (for groups whose range is too wide for float32)."""
        g = groups[gi]
        M = _subset_matrix(len(g))
        if gi not in wide_cols:
            Q = q[:, g] @ M
            wide_cols[gi] = np.ascontiguousarray(np.exp(Q - Q.max(1, keepdims=True)).T)
        P = p[rows][:, g] @ M
        return np.exp(P - alpha[gi, rows][:, None]) @ wide_cols[gi]

    def direct_log2(gi, rows):
        """log2 of the scaled group factor by direct softplus sums (pathological ranges)."""
        g = groups[gi]
        x = p[rows][:, None, g] + q[None, :, g]                  # (r, n_cols, k)
        f = np.logaddexp(0.0, x).sum(axis=2)
        f -= alpha[gi, rows][:, None]
        f -= (q[:, g] @ _subset_matrix(len(g))).max(1)[None, :]
        return f / _LN2

    def work(start):
        rows = slice(start, min(start + rows_per_chunk, n_rows))
        r = rows.stop - rows.start
        acc = np.zeros((r, n_cols), np.float64)
        prod = np.empty((r, n_cols), np.float32)
        tmp = np.empty((r, n_cols), np.float32)
        prod64 = None
        bounds = alpha[:, rows].max(axis=1) + beta
        n32 = b32 = n64 = b64 = 0
        for gi in range(len(groups)):
            bound = bounds[gi]
            if bound <= _F32_SAFE:
                # float32 bundle: products stay within [e^-80, 2^96]
                if n32 and (b32 + bound > _F32_SAFE or n32 >= _BUNDLE_MAX):
                    np.log2(prod, out=prod)
                    acc += prod
                    n32 = b32 = 0
                if n32 == 0:
                    np.matmul(U[gi][rows], Vt[gi], out=prod)
                else:
                    np.matmul(U[gi][rows], Vt[gi], out=tmp)
                    prod *= tmp
                n32 += 1
                b32 += bound
            elif bound <= _F64_SAFE:
                # float64 bundle: products stay within [e^-650, 2^300]
                if n64 and (b64 + bound > _F64_SAFE or n64 >= 100):
                    acc += np.log2(prod64)
                    n64 = b64 = 0
                if n64 == 0:
                    prod64 = wide_factor(gi, rows)
                else:
                    prod64 *= wide_factor(gi, rows)
                n64 += 1
                b64 += bound
            else:
                acc += direct_log2(gi, rows)
        if n32:
            np.log2(prod, out=prod)
            acc += prod
        if n64:
            acc += np.log2(prod64)
        acc *= _LN2
        acc += row[rows, None]
        acc += col[None, :]
        mx = acc.max()
        acc -= mx
        return mx + math.log(np.exp(acc).sum())

    parts = np.asarray(_map_chunks(work, range(0, n_rows, rows_per_chunk), threads))
    mx = parts.max()
    return float(mx + math.log(np.exp(parts - mx).sum()))


def rbm_free_energy(V, W, b, c):
    """``F(v) = -b.v - sum_j softplus(c_j + W_j.v)`` per row of ``V`` (float64)."""
    xp = get_array_module(V)
    V = V.astype(xp.float64)
    return -(V @ b.astype(xp.float64)) - xp.logaddexp(
        0.0, V @ W.T.astype(xp.float64) + c.astype(xp.float64)).sum(axis=1)


# ----------------------------------------------------------------------------------
# Fully visible MRF
# ----------------------------------------------------------------------------------

def mrf_log_potential(V, W, b):
    """``-E(v) = b.v + 1/2 v^T W v`` per row (W symmetric with zero diagonal), float64."""
    xp = get_array_module(V)
    V = V.astype(xp.float64)
    W = W.astype(xp.float64)
    return V @ b.astype(xp.float64) + 0.5 * ((V @ W) * V).sum(axis=1)


def mrf_log_partition(W, b, *, threads: int | None = None) -> float:
    """Exact ``log Z`` of a fully visible binary MRF (up to 30 units)."""
    return _mrf_enumerate(W, b, moments=False, threads=threads)[0]


def mrf_moments(W, b, *, threads: int | None = None, dtype=np.float64):
    """Exact ``(log Z, E[v], E[v v^T])`` of a fully visible binary MRF.

    ``dtype=np.float32`` halves the time of the big probability table (about 1e-6
    relative error: plenty for a gradient; keep float64 for reported likelihoods)."""
    return _mrf_enumerate(W, b, moments=True, threads=threads, dtype=dtype)


def _mrf_enumerate(W, b, *, moments: bool, threads, dtype=np.float64):
    xp = get_array_module(W)
    W = xp.asarray(W, dtype=xp.float64)
    b = xp.asarray(b, dtype=xp.float64)
    n = int(b.shape[0])
    if W.shape != (n, n):
        raise ValueError(f"W must be ({n}, {n}), got {W.shape}")
    if n > 30:
        raise ValueError(f"exact enumeration of 2^{n} states is out of reach (limit 2^30)")
    if n <= 16 or xp is not np:
        return _mrf_direct(W, b, moments)
    n_a = n // 2
    A, B = state_table(n_a), state_table(n - n_a)
    W_aa, W_bb, W_ab = W[:n_a, :n_a], W[n_a:, n_a:], W[:n_a, n_a:]
    ra = A @ b[:n_a] + 0.5 * ((A @ W_aa) * A).sum(1)
    rb = B @ b[n_a:] + 0.5 * ((B @ W_bb) * B).sum(1)
    AW = (A @ W_ab).astype(dtype)                           # (2^n_a, n_b)
    Bt = np.ascontiguousarray(B.T, dtype=dtype)
    ra, rb = ra.astype(dtype), rb.astype(dtype)
    rows_per_chunk = max(1, (1 << 19) // B.shape[0])

    def work(start):
        rows = slice(start, min(start + rows_per_chunk, A.shape[0]))
        L = AW[rows] @ Bt
        L += ra[rows, None]
        L += rb[None, :]
        mx = L.max()
        np.subtract(L, mx, out=L)
        np.exp(L, out=L)
        out = {"max": float(mx), "sum": float(L.sum(dtype=np.float64))}
        if moments:
            pa = L.sum(axis=1, dtype=np.float64)
            pb = L.sum(axis=0, dtype=np.float64)
            Ar = A[rows]
            out["ea"] = Ar.T @ pa
            out["eaa"] = Ar.T @ (pa[:, None] * Ar)
            out["eb"] = B.T @ pb
            out["ebb"] = B.T @ (pb[:, None] * B)
            out["eab"] = Ar.T @ (L @ Bt.T).astype(np.float64)
        return out

    parts = _map_chunks(work, range(0, A.shape[0], rows_per_chunk), threads)
    mx = max(pt["max"] for pt in parts)
    scales = [math.exp(pt["max"] - mx) for pt in parts]
    total = sum(s * pt["sum"] for s, pt in zip(scales, parts))
    log_z = float(mx + math.log(total))
    if not moments:
        return log_z, None, None
    mean = np.zeros(n)
    second = np.zeros((n, n))
    for s, pt in zip(scales, parts):
        w = s / total
        mean[:n_a] += w * pt["ea"]
        mean[n_a:] += w * pt["eb"]
        second[:n_a, :n_a] += w * pt["eaa"]
        second[n_a:, n_a:] += w * pt["ebb"]
        second[:n_a, n_a:] += w * pt["eab"]
    second[n_a:, :n_a] = second[:n_a, n_a:].T
    return log_z, mean, second


def _mrf_direct(W, b, moments):
    xp = get_array_module(W)
    n = int(b.shape[0])
    S = state_table(n, xp)
    L = mrf_log_potential(S, W, b)
    mx = L.max()
    P = xp.exp(L - mx)
    total = P.sum()
    log_z = float(mx + xp.log(total))
    if not moments:
        return log_z, None, None
    P = P / total
    mean = S.T @ P
    second = S.T @ (P[:, None] * S)
    return log_z, mean, second
