"""OM (thesis 2.3.3): output models that combine the capsules' per-pixel suggestions.

``output_model(contributions, kind, axis=1)`` reduces the capsule axis of
``(B, K, H, W)`` contributions to ``(B, H, W)``. Kinds (``OUTPUT_MODELS``):

``sum``            Σ_k a_k, "the most intuitive way".
``max``            max_k a_k: only the dominant capsule decides (its gradient only).
``max_soft``       log Σ_k exp(a_k), as the thesis writes it (no baseline removed).
``max_semi_soft``  log Σ_k exp(100 a_k) / 100 - log(K) / 100: the thesis's best for
                   MNIST, with its all-zero baseline subtracted ("one small
                   modification"), so all-zero suggestions give exactly 0. Computed
                   as ``m + log(mean_k exp(100 (a_k - m))) / 100`` with ``m = max_k a_k``:
                   no overflow for any finite input, and exactly 0 at zero (the mean
                   of K ones is exactly 1).
``sigmoid_sum``    σ(Σ_k a_k), an alternative the thesis lists (it "did not work very well").
``sum_clip``       min(Σ_k a_k, 1). The thesis prints "max(Σ a, 1)", which would never
                   output less than 1; clipping the sum at full intensity is the
                   evident intent, so that is what this is.
``sum_clip_soft``  the "softened version of the latter": Σa - softplus10(Σa - 1)
                   + softplus10(-1), i.e. a smooth min(Σa, 1) (sharpness 10, as the
                   thesis's softplus10 of 2.4.4) shifted to be exactly 0 at Σa = 0.
"""
from __future__ import annotations

import numpy as np

from lab.autodiff import Function, Tensor, max as ad_max, logsumexp, register_op, sigmoid
from lab.autodiff import softplus10, sum as ad_sum
from lab.graphics.threads import parallel_map

#: Sharpness of maxSemiSoft (thesis 2.3.3: exp(a * 100)).
SEMI_SOFT_SHARPNESS = 100.0


class MaxSemiSoft(Function):
    """log(mean_k exp(β a_k)) / β over one axis, stable and exactly 0 at a = 0.

    Computed in chunks of the leading axis so that the work arrays stay in cache; the
    softmax weights (the whole backward) are kept.
    """

    label = "maxSemiSoft"

    #: Elements per chunk of the leading axis.
    CHUNK = 1 << 16

    def __init__(self, axis, sharpness):
        self.axis, self.beta = axis, float(sharpness)

    def forward(self, xp, a):
        ax = self.ax = self.axis % a.ndim
        # view as (outer, K, inner) with the reduced axis in the middle
        outer = int(np.prod(a.shape[:ax], dtype=np.int64))
        K = a.shape[ax]
        inner = int(np.prod(a.shape[ax + 1:], dtype=np.int64))
        a3 = a.reshape(outer, K, inner)
        weights = xp.empty_like(a3)
        y = xp.empty((outer, inner), dtype=a.dtype)
        step = max(1, self.CHUNK // max(1, K * inner))

        def chunk(i):
            j = min(outer, i + step)
            x, w, out = a3[i:j], weights[i:j], y[i:j]
            m = x.max(axis=1)
            xp.subtract(x, m[:, None], out=w)
            w *= self.beta
            xp.exp(w, out=w)                      # every entry in (0, 1], the max is exactly 1
            s = w.sum(axis=1)
            w /= s[:, None]                       # softmax weights: the gradient
            s /= K                                # log(s / K) is exactly 0 when all a_k are equal
            xp.log(s, out=out)
            out /= self.beta
            out += m

        parallel_map(chunk, range(0, outer, step))        # on the render threads (disjoint slices)
        self.weights = weights
        return y.reshape(a.shape[:ax] + a.shape[ax + 1:])

    def backward(self, xp, gy):
        w = self.weights
        g = gy.reshape(w.shape[0], 1, w.shape[2])
        return ((w * g).reshape(self.inputs[0].shape),)

    # -- CuPy: the same arithmetic on whole arrays (no chunks, no threads: one launch each)
    def forward_gpu(self, xp, a):  # pragma: no cover - needs a GPU
        ax = self.ax = self.axis % a.ndim
        K = a.shape[ax]
        m = a.max(axis=ax, keepdims=True)
        w = a - m
        w *= self.beta
        xp.exp(w, out=w)
        s = w.sum(axis=ax, keepdims=True)
        w /= s
        self.weights = w
        s /= K
        y = xp.log(s)
        y /= self.beta
        y += m
        return y.reshape(a.shape[:ax] + a.shape[ax + 1:])

    def backward_gpu(self, xp, gy):  # pragma: no cover - needs a GPU
        return (self.weights * xp.expand_dims(gy, self.ax),)


def _semi_cases(rng):
    return [(lambda a: max_semi_soft(a), [rng.standard_normal((2, 4, 3, 3)) * 0.05]),
            (lambda a: max_semi_soft(a, axis=-1), [rng.standard_normal((3, 5)) * 0.02]),
            (lambda a: max_semi_soft(a, sharpness=1.0), [rng.standard_normal((2, 3, 4))])]


@register_op("max_semi_soft", _semi_cases)
def max_semi_soft(contributions, axis=1, sharpness=SEMI_SOFT_SHARPNESS) -> Tensor:
    """maxSemiSoft (thesis 2.3.3) minus its all-zero baseline: ``log(mean exp(β a)) / β``.

    Equal to ``log Σ exp(β a) / β - log(K) / β``; exactly 0 for all-zero input, finite
    for any finite input (shifted by the max); β = 100 as in the thesis.
    """
    return MaxSemiSoft(axis, sharpness)(contributions)


def _sum_clip(a, axis):
    from lab.autodiff import minimum  # noqa: PLC0415
    return minimum(ad_sum(a, axis=axis), 1.0)


def _sum_clip_soft(a, axis):
    s = ad_sum(a, axis=axis)
    return s - softplus10(s - 1.0) + float(np.log1p(np.exp(-10.0)) / 10.0)


OUTPUT_MODELS = {
    "sum": lambda a, axis: ad_sum(a, axis=axis),
    "max": lambda a, axis: ad_max(a, axis=axis),
    "max_soft": lambda a, axis: logsumexp(a, axis=axis),
    "max_semi_soft": lambda a, axis: max_semi_soft(a, axis=axis),
    "sigmoid_sum": lambda a, axis: sigmoid(ad_sum(a, axis=axis)),
    "sum_clip": _sum_clip,
    "sum_clip_soft": _sum_clip_soft,
}


def _om_cases(rng):
    cases = []
    for kind in OUTPUT_MODELS:
        a = rng.uniform(0.0, 0.3, (2, 3, 4, 5))
        if kind == "sum_clip":
            a = rng.uniform(0.0, 0.2, (2, 3, 4, 5))
            a[0] += 0.3                              # half the sums above 1, none near 1
        cases.append((lambda x, kind=kind: output_model(x, kind), [a]))
    return cases


@register_op("output_model", _om_cases)
def output_model(contributions, kind="max_semi_soft", axis=1) -> Tensor:
    """OM (thesis 2.3.3): combine ``(B, K, H, W)`` capsule contributions over ``axis`` -> ``(B, H, W)``.

    ``kind``: one of ``OUTPUT_MODELS`` (sum, max, max_soft, max_semi_soft,
    sigmoid_sum, sum_clip, sum_clip_soft); see the module docstring.
    """
    try:
        fn = OUTPUT_MODELS[kind]
    except KeyError:
        raise ValueError(f"output_model: unknown kind {kind!r}; expected one of "
                         f"{', '.join(OUTPUT_MODELS)}") from None
    return fn(contributions, axis)
