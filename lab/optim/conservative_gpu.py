"""The conservative optimizer's per-element update (thesis 2.5.3) as one CUDA kernel.

On the GPU, ``ConservativeOptimizer._update`` in plain array code is about 17 launches
per parameter (the ``g**2`` averages, their maximum, the four-rule factor, the clip,
the subtraction); for the 21 parameters of ``mnist-thesis`` that is ~350 launches and
about a third of a training step. :func:`fused_update` runs ``kernels/optim.cu``
instead: the same arithmetic in the same order and rounding, one launch per parameter,
so the GPU optimizer equals the numpy one bit for bit (its per-element function is
checked on the host against numpy in ``tests/test_gpu_kernels.py``, the kernel on a
device in ``tests/test_optim.py``).

Only for steps that do not count the winning rules (the optimizer counts every
``record_every`` steps with the array code) and after the averages' high start.
Importing this module does not import CuPy.
"""
from __future__ import annotations

import numpy as np

MAX_AVERAGES = 6          # kernels/optim.cu
_THREADS = 256
_coefficients: dict = {}  # (device, alphas, gammas) -> device float64[16]


def coefficients(alphas, gammas) -> tuple[np.ndarray, int]:
    """``(coef, mask)``: the kernel's 16 doubles (alpha1..4, then keep_k = 1 - 1/gamma_k
    and w_k = 1/gamma_k for six averages, unused ones 0) and the bit mask of the
    averages with gamma = 1."""
    if len(gammas) > MAX_AVERAGES:
        raise ValueError(f"at most {MAX_AVERAGES} averages, got {len(gammas)}")
    coef = np.zeros(16, np.float64)
    coef[:4] = alphas
    mask = 0
    for k, gamma in enumerate(gammas):
        if gamma == 1.0:
            mask |= 1 << k
        coef[4 + k] = 1.0 - 1.0 / gamma
        coef[10 + k] = 1.0 / gamma
    return coef, mask


def fused_update(data, g, avgs, gammas, alphas, update_first: bool) -> None:
    """One conservative step in place on ``data`` and the averages ``avgs`` (contiguous
    CuPy arrays of one float dtype and shape); ``alphas`` already scaled by the step
    scale."""
    import cupy  # noqa: PLC0415  (GPU path only)
    from lab.gpu import kernel, suffix  # noqa: PLC0415
    gammas = tuple(float(x) for x in gammas)
    alphas = tuple(float(a) for a in alphas)
    key = (cupy.cuda.Device().id, alphas, gammas)
    if key not in _coefficients:
        if len(_coefficients) > 256:
            _coefficients.clear()
        coef, mask = coefficients(alphas, gammas)
        _coefficients[key] = (cupy.asarray(coef), mask)
    coef, mask = _coefficients[key]
    ptrs = list(avgs) + [np.uint64(0)] * (MAX_AVERAGES - len(avgs))
    n = data.size
    blocks = max(1, min(4096, (n + _THREADS - 1) // _THREADS))
    kernel("optim.cu", f"conservative_update_{suffix(data.dtype)}")(
        (blocks,), (_THREADS,),
        (g, data, *ptrs, np.int64(n), np.int32(len(avgs)), np.int32(mask), np.int32(bool(update_first)), coef))
