"""Annealed importance sampling for the log partition function of a binary RBM
(Salakhutdinov & Murray 2008), used for the full-size models of thesis 3.3.5.

The path runs from a base-rate model A (no weights, visible biases ``b_A`` fitted to the
training data's pixel means) to the RBM B through the intermediate distributions

    p*_beta(v) = exp((1 - beta) b_A.v + beta b_B.v) prod_j (1 + exp(beta (c_j + W_j.v)))

(the joint ``p_A^(1-beta) p_B^beta`` with both hidden layers summed out). Each run
starts with an exact sample of A, and at every inverse temperature ``beta_k`` adds
``log p*_k(v) - log p*_(k-1)(v)`` to its log weight and then makes one Gibbs transition
that leaves ``p_k`` invariant. ``Z_B / Z_A`` is estimated by the mean weight.

The difference of log p* between neighbouring temperatures is formed directly (in
float64), not as a difference of two large numbers, so the 14,500 tiny increments do not
drown in rounding.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from lab.backend import DEFAULT_FLOAT, get_array_module, to_numpy
from lab.undirected._base import make_stream, sigmoid_
from lab.undirected.algorithms import bernoulli
from lab.undirected.parallel import blas_single_thread


def default_betas() -> np.ndarray:
    """The schedule of Salakhutdinov & Murray (2008): steps of 1e-3 up to 0.5, 1e-4 up
    to 0.9 and 1e-5 up to 1 (14,501 inverse temperatures including 0 and 1)."""
    return np.concatenate([np.linspace(0.0, 0.5, 500, endpoint=False),
                           np.linspace(0.5, 0.9, 4000, endpoint=False),
                           np.linspace(0.9, 1.0, 10000, endpoint=False), [1.0]])


def quick_betas(n: int = 1450) -> np.ndarray:
    """The same shape of schedule with ``n`` steps (for quick experiments and tests)."""
    full = default_betas()
    idx = np.unique(np.round(np.linspace(0, len(full) - 1, n + 1)).astype(int))
    return full[idx]


@dataclass(frozen=True)
class AISResult:
    log_z: float                # estimate of log Z_B
    lower: float                # log(Zhat - 3 sigma), -inf when that is not positive
    upper: float                # log(Zhat + 3 sigma)
    log_z_base: float           # exact log Z_A
    log_weights: np.ndarray     # per run, float64
    n_betas: int
    seconds: float


def base_rate_biases(data_mean, smoothing: float = 1e-3):
    """Visible biases of the base-rate model: the log-odds of the (clipped) pixel means."""
    p = np.clip(np.asarray(to_numpy(data_mean), dtype=np.float64), smoothing, 1 - smoothing)
    return np.log(p) - np.log1p(-p)


def ais_log_partition(W, b, c, base_rate, *, n_runs: int = 100, betas=None, stream=None,
                      random_state=None) -> AISResult:
    """Estimate log Z of the RBM ``(W, b, c)`` (W: n_hidden x n_visible).

    ``base_rate``: the training data's pixel means (the base model's visible biases are
    their log-odds). ``n_runs`` chains run as one batch. Returns an :class:`AISResult`
    with the ±3σ interval ``log(Zhat ± 3 std(w) / sqrt(n_runs))``.
    """
    if get_array_module(W) is np:
        with blas_single_thread():      # thin products: one BLAS thread is fastest
            return _ais(W, b, c, base_rate, n_runs, betas, stream, random_state)
    # CuPy: all runs in one batch, two fused kernels per temperature replayed as a CUDA
    # graph (lab.undirected.gpu_update; checked against exact log Z on an H100)
    from lab.undirected.gpu_update import ais_log_partition_gpu  # noqa: PLC0415
    if stream is None:
        from lab.backend import backend_of  # noqa: PLC0415
        stream = make_stream(random_state, backend_of(W))
    seed = int(stream.integers(0, 2**63 - 1))
    return ais_log_partition_gpu(W, b, c, base_rate, n_runs=n_runs, betas=betas, seed=seed, graph=True)


def _ais(W, b, c, base_rate, n_runs, betas, stream, random_state) -> AISResult:
    start = time.perf_counter()
    xp = get_array_module(W)
    betas = default_betas() if betas is None else np.asarray(betas, dtype=np.float64)
    if betas[0] != 0.0 or betas[-1] != 1.0 or np.any(np.diff(betas) <= 0):
        raise ValueError("betas must increase strictly from 0 to 1")
    if stream is None:
        from lab.backend import backend_of  # noqa: PLC0415
        stream = make_stream(random_state, backend_of(W))
    Wf = xp.asarray(W, dtype=DEFAULT_FLOAT)
    bB = xp.asarray(b, dtype=DEFAULT_FLOAT)
    cB = xp.asarray(c, dtype=DEFAULT_FLOAT)
    bA64 = base_rate_biases(base_rate)
    bA = xp.asarray(bA64, dtype=DEFAULT_FLOAT)
    n_hidden = Wf.shape[0]
    # log Z_A: independent visible units, plus the B hidden units at beta = 0 (free)
    log_z_base = float(np.logaddexp(0, bA64).sum() + n_hidden * math.log(2.0))
    db = xp.asarray(np.asarray(to_numpy(b), np.float64) - bA64)   # b_B - b_A, float64

    v = bernoulli(xp.tile(xp.asarray(1 / (1 + np.exp(-bA64)), dtype=DEFAULT_FLOAT),
                          (n_runs, 1)), stream)
    log_w = xp.zeros(n_runs, dtype=xp.float64)
    prev = 0.0
    for beta in betas[1:]:
        beta = float(beta)
        x = v @ Wf.T
        x += cB                                           # (runs, hidden), float32
        x64 = x.astype(xp.float64)
        # log p*_k(v) - log p*_(k-1)(v)
        log_w += (beta - prev) * (v.astype(xp.float64) @ db)
        log_w += (xp.logaddexp(0, beta * x64) - xp.logaddexp(0, prev * x64)).sum(axis=1)
        prev = beta
        # Gibbs transition leaving p_k invariant
        x *= beta
        h = bernoulli(sigmoid_(x, xp), stream)
        pre = h @ Wf
        pre *= beta
        pre += (1 - beta) * bA + beta * bB
        v = bernoulli(sigmoid_(pre, xp), stream)
    return ais_result(to_numpy(log_w), log_z_base, len(betas), time.perf_counter() - start)


def ais_result(log_w, log_z_base: float, n_betas: int, seconds: float) -> AISResult:
    """log Z and its ±3σ interval from the runs' importance log weights ``log_w``: the
    mean weight and its standard error, computed stably in log space."""
    log_w = np.asarray(log_w, dtype=np.float64)
    mx = float(log_w.max())
    w = np.exp(log_w - mx)
    mean = w.mean()
    sigma = w.std() / math.sqrt(len(w))
    log_r = mx + math.log(mean)
    upper = mx + math.log(mean + 3 * sigma)
    lower = mx + math.log(mean - 3 * sigma) if mean - 3 * sigma > 0 else -math.inf
    return AISResult(log_z=log_z_base + log_r, lower=log_z_base + lower, upper=log_z_base + upper,
                     log_z_base=log_z_base, log_weights=log_w, n_betas=n_betas, seconds=seconds)
