"""Explicit depth modelling (thesis 2.7.2): an output model with a soft z-buffer.

The thesis proposes, and left unfinished, giving every AC a second "template" whose
pixels say how far in front the AC's pixel is, so that "the final value of every
reconstruction pixel is determined almost exclusively by just one of the ACs": a
segmentation, and dark objects in front of bright ones become possible (maxSemiSoft
lets the brightest AC win, 2.3.3).

Our version (a choice; the thesis gives no formula): the depth template is rendered
with the AC's geometry (intensity 1) to ``d_k(p) >= 0`` (softplus10 templates, zero
outside the template), and with weights ``w_k = exp(β d_k) - 1`` (zero where the AC
is absent)

    out(p) = Σ_k w_k a_k / (1 + Σ_k w_k)

The ``1`` is an empty background layer at depth 0 with value 0. The largest depth
dominates as ``β`` grows (β = 10 by default, like softplus10's sharpness); where no
AC draws the output is exactly 0. It is computed with the largest exponent factored
out, so it never overflows.
"""
from __future__ import annotations

from lab.autodiff import Tensor, exp, max, maximum  # noqa: A004
from lab.autodiff import sum as tsum

#: β of the soft z-buffer.
DEPTH_SHARPNESS = 10.0


def explicit_depth(values: Tensor, depths: Tensor, sharpness: float = DEPTH_SHARPNESS,
                   axis: int = 1) -> Tensor:
    """Combine contributions ``values`` by their rendered ``depths`` (same shape, e.g.
    (B, K, H, W)) over ``axis``: Σ w a / (1 + Σ w) with w = exp(β d) - 1."""
    z = depths * sharpness
    m = maximum(max(z, axis=axis, keepdims=True), 0.0)   # exp(-m) <= 1, exp(z - m) <= 1
    base = exp(-m)
    w = exp(z - m) - base                                   # (exp(z) - 1) / exp(m)
    num = tsum(w * values, axis=axis)
    den = tsum(w, axis=axis) + tsum(base, axis=axis)       # base has size 1 on axis
    return num / den


def render_output(acs, matrices: Tensor, intensities: Tensor, kind: str) -> dict:
    """ACR then OM: ``{"output" (B,H,W), "contributions" (B,K,H,W)}`` (+ ``depths`` for
    ``kind="explicit_depth"``; other kinds go to ``lab.graphics.output_model``)."""
    from lab.graphics import output_model  # noqa: PLC0415
    if kind == "explicit_depth":
        values, depths = acs.render_with_depth(matrices, intensities)
        return {"output": explicit_depth(values, depths), "contributions": values,
                "depths": depths}
    contributions = acs.render(matrices, intensities)
    return {"output": output_model(contributions, kind), "contributions": contributions}
