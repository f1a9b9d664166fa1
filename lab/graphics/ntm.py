"""NTM and INTM (thesis figs 2.4, 2.5): the learner-friendly "nice" pose -> world->template matrix.

The nice geometric pose is six numbers ``(t0, t1, s0, s1, z, theta)`` (2.3.2,
"Summary: the learner-friendly approach"). They are the parameters of the four
elementary *world -> template* transformations, which the thesis multiplies in the
order translation, scaling, shearing, rotation, wrapped in the two fixed centring
transforms ("Choosing the origin"). In column-vector form (``q = M p``, see
``lab.graphics.frames``)::

    M = C_out · R(theta) · Z(z) · S(s0, s1) · T(t0, t1) · C_in

    C_in  = translate(-0.5, -0.5)    world point -> origin at the canvas centre
    T     = translate(t0, t1)        applied first to the world point
    S     = diag(s0, s1)             raw multipliers, not logs (2.3.2)
    Z     = [[1, z], [0, 1]]         shear: q0 += z * q1
    R     = [[cos θ, -sin θ], [sin θ, cos θ]]
    C_out = translate(+0.5, +0.5)    origin back to the template's corner

i.e. a world point is translated, scaled, sheared and rotated, in that order (the
thesis writes the same product left to right for row vectors). No matrix is inverted:
the six numbers *are* world -> template parameters, so what the eye sees is their
inverse, which the network learns without trouble (2.3.2, "Avoiding inverses"):

* The template's centre appears at world ``(0.5 - t0, 0.5 - t1)``: ``t`` is in units
  of the canvas (``t0 = -0.25`` puts it a quarter of the canvas height lower).
* ``s0 = s1 = 1`` (with ``t = z = θ = 0``) is the identity: the template stretched
  over the whole canvas (``det = s0 s1 = 1 = FILL_DETERMINANT``). The template
  appears ``1/s`` canvases large: on a 28x28 canvas an 11x11 template shows at its
  native pixel size when ``s = 28/11``. **Scales are not offset**: as the thesis says,
  the pose holds the multiplier itself, so the all-zero pose is degenerate (every
  world point looks at the template centre). ``IDENTITY_NICE`` is the identity pose;
  models should initialise their scale outputs' biases near 1 (or larger).
* ``θ > 0`` turns the *rendered* template clockwise on screen by ``θ`` (at ``θ = π/2``
  the canvas-filling render is ``np.rot90(template, k=-1)``): the world -> template
  rotation is minus the object -> world rotation, as 2.3.2 notes.
* ``z`` shears along axis 0: template row coordinate ``q0`` gains ``z`` times ``q1``.

Closed form (A = R Z S): ``A = [[c s0, s1 (c z - s)], [s s0, s1 (s z + c)]]`` and the
offset is ``A (t - 0.5) + 0.5``; it is computed directly, with a hand-written backward.
"""
from __future__ import annotations

import numpy as np

from lab.autodiff import Function, Tensor, getitem, register_op

#: The nice pose whose matrix is the identity (template fills the canvas).
IDENTITY_NICE = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)


_THREADS = 256


def _blocks(n: int) -> int:
    return max(1, min(4096, (int(n) + _THREADS - 1) // _THREADS))


class NiceToMatrix(Function):
    """(..., 6) nice poses -> (..., 3, 3) world -> template matrices (fused, thesis fig. 2.4)."""

    label = "NTM"

    def forward(self, xp, nice):
        if nice.shape[-1:] != (6,):
            raise ValueError(f"nice_to_matrix: nice must have shape (..., 6) = (t0, t1, s0, s1, z, theta), "
                             f"got {tuple(nice.shape)}")
        if not xp.issubdtype(nice.dtype, xp.floating):
            raise TypeError(f"nice_to_matrix: nice must be floating point, got {nice.dtype}")
        t0, t1, s0, s1, z, th = (nice[..., i] for i in range(6))
        c, s = xp.cos(th), xp.sin(th)
        a00, a01 = c * s0, s1 * (c * z - s)
        a10, a11 = s * s0, s1 * (s * z + c)
        u0, u1 = t0 - 0.5, t1 - 0.5
        m = xp.zeros(nice.shape[:-1] + (3, 3), dtype=nice.dtype)
        m[..., 0, 0], m[..., 0, 1], m[..., 0, 2] = a00, a01, a00 * u0 + a01 * u1 + 0.5
        m[..., 1, 0], m[..., 1, 1], m[..., 1, 2] = a10, a11, a10 * u0 + a11 * u1 + 0.5
        m[..., 2, 2] = 1.0
        self.saved = (c, s, s0, s1, z, u0, u1, a00, a01, a10, a11)
        return m

    def forward_gpu(self, xp, nice):
        """One thread per pose (``lab/gpu/kernels/ntm.cu``); keeps only the poses."""
        from lab.gpu import kernel, suffix  # noqa: PLC0415  (GPU path only)
        if nice.shape[-1:] != (6,) or nice.dtype.kind != "f":
            return self.forward(xp, nice)           # the array code raises the clear error
        self.nice = xp.ascontiguousarray(nice)
        n = self.nice.size // 6
        m = xp.empty(nice.shape[:-1] + (3, 3), dtype=nice.dtype)
        kernel("ntm.cu", f"ntm_forward_{suffix(nice.dtype)}")(
            (_blocks(n),), (_THREADS,), (self.nice, m, np.int64(n)))
        return m

    def backward_gpu(self, xp, gy):
        from lab.gpu import kernel, suffix  # noqa: PLC0415
        gy = xp.ascontiguousarray(gy, dtype=self.nice.dtype)
        n = self.nice.size // 6
        g = xp.empty(self.nice.shape, dtype=self.nice.dtype)
        kernel("ntm.cu", f"ntm_backward_{suffix(g.dtype)}")(
            (_blocks(n),), (_THREADS,), (self.nice, gy, g, np.int64(n)))
        return (g,)

    def backward(self, xp, gy):
        c, s, s0, s1, z, u0, u1, a00, a01, a10, a11 = self.saved
        gb0, gb1 = gy[..., 0, 2], gy[..., 1, 2]
        # the offset b = A u + 0.5 feeds back into A and into t
        g00 = gy[..., 0, 0] + gb0 * u0
        g01 = gy[..., 0, 1] + gb0 * u1
        g10 = gy[..., 1, 0] + gb1 * u0
        g11 = gy[..., 1, 1] + gb1 * u1
        g = xp.empty(gy.shape[:-2] + (6,), dtype=gy.dtype)
        g[..., 0] = a00 * gb0 + a10 * gb1
        g[..., 1] = a01 * gb0 + a11 * gb1
        g[..., 2] = g00 * c + g10 * s
        g[..., 3] = g01 * (c * z - s) + g11 * (s * z + c)
        g[..., 4] = (g01 * c + g11 * s) * s1
        g[..., 5] = (-g00 * s * s0 - g01 * s1 * (s * z + c) + g10 * c * s0 + g11 * s1 * (c * z - s))
        return (g,)


def _nice_cases(rng):
    def nice(*batch):
        n = rng.standard_normal(batch + (6,)) * 0.5
        n[..., 2:4] += 1.0
        return n
    return [(lambda x: nice_to_matrix(x), [nice(4)]),
            (lambda x: nice_to_matrix(x), [nice(2, 3)]),
            (lambda x: nice_to_matrix(x), [nice()])]


@register_op("nice_to_matrix", _nice_cases)
def nice_to_matrix(nice) -> Tensor:
    """NTM (thesis fig. 2.4): nice poses ``(..., 6)`` -> world->template matrices ``(..., 3, 3)``.

    ``nice = (t0, t1, s0, s1, z, theta)``: world->template translation (canvas
    units), raw scale multipliers, shear and rotation (radians), composed as
    ``C_out R(θ) Z(z) S(s) T(t) C_in`` around the frame centres (see the module
    docstring for what each does to the rendered image). ``IDENTITY_NICE`` gives the
    identity (template fills the canvas); the all-zero pose is degenerate (s = 0).
    """
    return NiceToMatrix()(nice)


def _igeo_cases(rng):
    def case(x):
        m, i = igeo_nice_to_igeo(x)
        return m.sum(axis=-1) * 0.3 + i[..., None]
    n = rng.standard_normal((3, 2, 7)) * 0.5
    n[..., 2:4] += 1.0
    return [(case, [n])]


@register_op("igeo_nice_to_igeo", _igeo_cases)
def igeo_nice_to_igeo(nice7) -> tuple[Tensor, Tensor]:
    """INTM (thesis fig. 2.5): iGeoNice ``(..., 7)`` -> ``(matrix (..., 3, 3), intensity (...))``.

    The first six values are the nice geometric pose (``nice_to_matrix``), the seventh
    the intensity multiplier, passed through unchanged (the model applies its own
    non-negativity, e.g. softplus10, before or after as it chooses: 2.4.4).
    """
    shape = nice7.shape if hasattr(nice7, "shape") else np.shape(nice7)
    if tuple(shape[-1:]) != (7,):
        raise ValueError(f"igeo_nice_to_igeo: nice7 must have shape (..., 7) = "
                         f"(t0, t1, s0, s1, z, theta, intensity), got {tuple(shape)}")
    return nice_to_matrix(getitem(nice7, (Ellipsis, slice(0, 6)))), getitem(nice7, (Ellipsis, 6))


def _det_cases(rng):
    m = rng.standard_normal((4, 3, 3))
    return [(lambda x: determinant(x), [m]), (lambda x: determinant(x), [rng.standard_normal((2, 3, 3, 3))])]


@register_op("determinant", _det_cases)
def determinant(matrix) -> Tensor:
    """det of the linear (2x2) part of ``(..., 3, 3)`` matrices -> ``(...)``.

    For a world -> template matrix from ``nice_to_matrix`` this is ``s0 * s1``; it is
    ``FILL_DETERMINANT`` (1) when the template is exactly as large as the output, the
    threshold of the thesis's determinant penalty α max(0, s - det)² (2.4).
    """
    a, b = getitem(matrix, (Ellipsis, 0, 0)), getitem(matrix, (Ellipsis, 0, 1))
    c, d = getitem(matrix, (Ellipsis, 1, 0)), getitem(matrix, (Ellipsis, 1, 1))
    return a * d - b * c
