"""Float64 gradient checks: central differences along random directions vs backward.

As Chainer's ``check_backward``: for a random output weighting ``w`` the scalar
``L = Σ w · f(x)`` is differentiated by backward; for each of a few random input
directions ``d`` the directional derivative ``(L(x + εd) - L(x - εd)) / 2ε`` must
match ``<∇L, d>``. Every registered op is checked this way by the test suite.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from lab.autodiff.tensor import Tensor, no_grad
from lab.backend import get_array_module, to_numpy


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence, *, eps: float = 1e-6,
              atol: float = 1e-7, rtol: float = 1e-5, n_directions: int = 3,
              seed: int = 0, wrt: Sequence[int] | None = None) -> bool:
    """Check ``fn``'s backward against central differences; raise ``GradcheckError`` if off.

    ``inputs`` are arrays (cast to float64, numpy or CuPy kept) or Tensors; ``wrt``
    picks which inputs to differentiate (default: all). Returns True when it passes.
    """
    xs = [(x.data if isinstance(x, Tensor) else x) for x in inputs]
    xp = get_array_module(*xs)
    xs = [xp.asarray(x, dtype=np.float64) for x in xs]
    wrt = list(range(len(xs))) if wrt is None else list(wrt)
    rng = np.random.default_rng(seed)

    leaves = [Tensor(x.copy(), requires_grad=(i in wrt)) for i, x in enumerate(xs)]
    y = fn(*leaves)
    if not isinstance(y, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(y).__name__}")
    if y.dtype != np.float64:
        raise GradcheckError(f"gradcheck: output dtype is {y.dtype}, expected float64 (an op lost precision)")
    w = xp.asarray(rng.standard_normal(y.shape))
    y.backward(w)

    def loss(values):
        with no_grad():
            out = fn(*[Tensor(v) for v in values])
        return float((out.data * w).sum())

    for i in wrt:
        analytic_full = leaves[i].grad
        if analytic_full is None:
            analytic_full = xp.zeros_like(xs[i])
        if analytic_full.shape != xs[i].shape:
            raise GradcheckError(f"input {i}: gradient shape {analytic_full.shape} != input shape {xs[i].shape}")
        for k in range(n_directions):
            d = xp.asarray(rng.standard_normal(xs[i].shape))
            plus = [x if j != i else x + eps * d for j, x in enumerate(xs)]
            minus = [x if j != i else x - eps * d for j, x in enumerate(xs)]
            numeric = (loss(plus) - loss(minus)) / (2 * eps)
            analytic = float((analytic_full * d).sum())
            if not np.isclose(analytic, numeric, atol=atol, rtol=rtol):
                raise GradcheckError(
                    f"input {i} (shape {tuple(xs[i].shape)}), direction {k}: backward gives "
                    f"{analytic:.10g}, central differences give {numeric:.10g} "
                    f"(|diff| {abs(analytic - numeric):.3g})")
    return True


def numerical_gradient(fn: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Element-by-element central differences of a scalar function (for small references)."""
    x = np.array(to_numpy(x), dtype=np.float64)
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for j in range(flat.size):
        old = flat[j]
        flat[j] = old + eps
        hi = fn(x)
        flat[j] = old - eps
        lo = fn(x)
        flat[j] = old
        gflat[j] = (hi - lo) / (2 * eps)
    return g
