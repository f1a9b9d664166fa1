"""MIGP (thesis fig. 2.8): multiply iGeo poses, CC-in-world with AC-in-CC.

A composite capsule's pose (2.3.4) maps the world to the CC's own frame; an atomic
capsule's pose inside it maps the CC frame to the AC's template. All matrices here
are in the renderer's direction (world -> template, see ``lab.graphics.frames``), so
with column vectors the world point meets the CC matrix first::

    world -> AC template  =  (CC frame -> AC template) @ (world -> CC frame)
                          =  ac_in_cc_matrix @ cc_in_world_matrix

and intensities multiply (the AC's nominal intensity is relative to its CC's). Both
frames are unit squares centred at (0.5, 0.5), so NTM's centring transforms of the
two poses cancel in the product: an AC at the identity pose inside a CC is drawn
exactly where the CC is.
"""
from __future__ import annotations

import numpy as np

from lab.autodiff import Tensor, matmul, mul, register_op, reshape


def _shape(x):
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _compose_cases(rng):
    def mats(*batch):
        m = np.zeros(batch + (3, 3))
        m[..., :2, :] = rng.standard_normal(batch + (2, 3))
        m[..., 2, 2] = 1.0
        return m

    def both(a, b, c, d):
        m, i = compose(a, b, c, d)
        return m.sum(axis=-1) + i[..., None]
    return [(both, [mats(3), rng.standard_normal(3), mats(3, 4), rng.standard_normal((3, 4))]),
            (both, [mats(2, 1), rng.standard_normal((2, 1)), mats(2, 5), rng.standard_normal((2, 5))])]


@register_op("compose", _compose_cases)
def compose(cc_in_world_matrix, cc_intensity, ac_in_cc_matrix, ac_intensity) -> tuple[Tensor, Tensor]:
    """MIGP (fig. 2.8): ``(ac_in_cc_matrix @ cc_in_world_matrix, ac_intensity * cc_intensity)``.

    All matrices are world -> template direction ``(..., 3, 3)``; the result is the
    AC-in-world (world -> AC template) matrix that ``render_templates`` takes.
    Batch shapes broadcast (numpy rules); as a convenience a CC batch ``(B, 3, 3)``
    with intensity ``(B,)`` against ACs ``(B, K, 3, 3)`` / ``(B, K)`` is read as one CC
    per row (it is expanded to ``(B, 1, 3, 3)`` / ``(B, 1)``).
    """
    cs, ci, as_, ai = (_shape(x) for x in (cc_in_world_matrix, cc_intensity, ac_in_cc_matrix, ac_intensity))
    for name, s in (("cc_in_world_matrix", cs), ("ac_in_cc_matrix", as_)):
        if s[-2:] != (3, 3):
            raise ValueError(f"compose: {name} must have shape (..., 3, 3), got {s}")
    if len(cs) == len(as_) - 1 and cs[:-2] == as_[:-3]:
        cc_in_world_matrix = reshape(cc_in_world_matrix, cs[:-2] + (1, 3, 3))
        if ci == cs[:-2]:
            cc_intensity = reshape(cc_intensity, ci + (1,))
    return matmul(ac_in_cc_matrix, cc_in_world_matrix), mul(ac_intensity, cc_intensity)
