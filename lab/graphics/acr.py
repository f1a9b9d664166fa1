"""ACR (thesis fig. 2.3): atomic capsule rendering as one fused autodiff op.

``render_templates(templates, world_to_template, intensity, size)`` draws every
atomic capsule's learned template onto its own canvas: output pixel ``p`` (a world
point, see ``lab.graphics.frames``) shows ``intensity * template(M p)``, where the
template between its pixel points is bilinearly interpolated and zero outside them
(thesis 2.3.2, "The renderer-friendly approach"; fig. 2.15).

The thesis spent much effort on this op's CUDA kernels (2.5.2) because rendering and
its gradient dominate the compute time. Here it is one ``Function`` with a
hand-written backward, vectorized over all ``B * K`` canvases:

forward
    template coordinates ``u`` (rows) and ``v`` (columns) of every output pixel are
    separable sums ``U[bk, i] + V[bk, j]``; after clipping into a zero border they are
    split into an integer cell and a fraction ``(wu, wv)``; each cell's bilinear
    polynomial ``c0 + c1 wv + c2 wu + c3 wu wv`` (a table built once from the
    zero-padded templates) is gathered by a flat index.
backward
    templates: the four polynomial coefficients' gradients ``(g, g wv, g wu, g wu wv)``
    are scattered onto the cell table with ``np.add.at`` and mapped back to pixels;
    matrices: the spatial derivatives ``dval/dwu = c2 + c3 wv`` and ``dval/dwv =
    c1 + c3 wu`` times ``d(u, v)/dM`` (a product with the pixel coordinates);
    intensities: ``Σ gy · value``.

Clipping keeps coordinates inside a border of two zero template pixels, where value
and derivatives vanish, so no validity masks are needed. Work is done in chunks of
canvases so that intermediates stay in cache. Float32 inputs are computed in
float32; any float64 input makes the whole op float64 (used by the gradient checks).
"""
from __future__ import annotations

import numpy as np

from lab.autodiff import Function, Tensor, register_op
from lab.graphics.frames import as_size, pixel_centres

_PAD = 2  # zero template pixels on each side (coordinates are clipped into this border)

#: Canvases per chunk: about 2**16 output pixels, so a chunk's arrays stay in L2 cache.
CHUNK_PIXELS = 1 << 16


def _scatter_add(xp, target, index, values):
    """``target[index] += values`` for 1-D arrays (repeated indices add)."""
    if xp is np:
        np.add.at(target, index, values)
    else:  # pragma: no cover - GPU path (later issue)
        import cupyx  # noqa: PLC0415
        cupyx.scatter_add(target, index, values)


class RenderTemplates(Function):
    """Fused ACR: templates (K,T0,T1), world->template (B,K,3,3), intensity (B,K) -> (B,K,H,W)."""

    label = "ACR"

    def __init__(self, size):
        self.size = as_size(size)

    # -- input checks ------------------------------------------------------------
    @staticmethod
    def _check(xp, templates, m, intensity):
        for name, a in (("templates", templates), ("world_to_template", m), ("intensity", intensity)):
            if not xp.issubdtype(a.dtype, xp.floating):
                raise TypeError(f"render_templates: {name} must be floating point, got {a.dtype}")
        if templates.ndim != 3:
            raise ValueError(f"render_templates: templates must have shape (K, T0, T1), got {tuple(templates.shape)}")
        k = templates.shape[0]
        if m.ndim != 4 or m.shape[1:] != (k, 3, 3):
            raise ValueError(f"render_templates: world_to_template must have shape (B, K={k}, 3, 3), "
                             f"got {tuple(m.shape)}")
        if intensity.shape != m.shape[:2]:
            raise ValueError(f"render_templates: intensity must have shape (B, K) = {tuple(m.shape[:2])}, "
                             f"got {tuple(intensity.shape)}")

    # -- forward -----------------------------------------------------------------
    def forward(self, xp, templates, m, intensity):
        self._check(xp, templates, m, intensity)
        dt = np.result_type(templates.dtype, m.dtype, intensity.dtype)
        templates, m, intensity = (a.astype(dt, copy=False) for a in (templates, m, intensity))
        K, T0, T1 = templates.shape
        B = m.shape[0]
        H, W = self.size
        N = H * W
        R, C = T0 + 2 * _PAD, T1 + 2 * _PAD          # cells per template (rows, columns)
        # Zero-padded templates, one extra row/column so that every cell has 4 corners,
        # and each cell's bilinear polynomial c0 + c1 wv + c2 wu + c3 wu wv, stored as
        # 4 adjacent numbers so that one gather fetches all of them.
        P = xp.zeros((K, R + 1, C + 1), dtype=dt)
        P[:, _PAD:_PAD + T0, _PAD:_PAD + T1] = templates
        p00, p01, p10, p11 = P[:, :-1, :-1], P[:, :-1, 1:], P[:, 1:, :-1], P[:, 1:, 1:]
        table = xp.stack([p00, p01 - p00, p10 - p00, p11 - p10 - p01 + p00], axis=-1)  # (K,R,C,4)
        table = xp.ascontiguousarray(table).reshape(K, R * C, 4)
        item = xp.dtype(f"V{4 * table.itemsize}")   # one opaque item per cell: a 4-number gather

        p0 = pixel_centres(H, xp, dt)
        p1 = pixel_centres(W, xp, dt)
        # shifted template pixel coordinates u = T0 q0 - 0.5 + PAD are separable in (i, j)
        mk = xp.ascontiguousarray(m.transpose(1, 0, 2, 3))                        # (K, B, 3, 3)
        U = T0 * (mk[..., 0, 0, None] * p0 + mk[..., 0, 2, None]) + (_PAD - 0.5)  # (K, B, H)
        Uj = T0 * (mk[..., 0, 1, None] * p1)                                      # (K, B, W)
        V = T1 * (mk[..., 1, 0, None] * p0 + mk[..., 1, 2, None]) + (_PAD - 0.5)
        Vj = T1 * (mk[..., 1, 1, None] * p1)
        umax, vmax = T0 + _PAD + 0.5, T1 + _PAD + 0.5   # beyond: two zero pixels, value and slope 0

        # saved for backward, laid out (K, B, H, W) so that each template's part is contiguous
        s = {name: xp.empty((K, B, H, W), dtype=dt) for name in ("wu", "wv", "du", "dv", "val")}
        idx_all = xp.empty((K, B, H, W), dtype=xp.intp)
        y = xp.empty((B, K, H, W), dtype=dt)
        step = max(1, CHUNK_PIXELS // N)
        cbuf = xp.empty((step * N, 4), dtype=dt)
        for k in range(K):
            tab = table[k].view(item).reshape(-1)
            for a in range(0, B, step):
                b = min(B, a + step)
                u = U[k, a:b, :, None] + Uj[k, a:b, None, :]
                v = V[k, a:b, :, None] + Vj[k, a:b, None, :]
                xp.clip(u, 0.0, umax, out=u)
                xp.clip(v, 0.0, vmax, out=v)
                fu, fv = xp.floor(u), xp.floor(v)
                wu = xp.subtract(u, fu, out=s["wu"][k, a:b])
                wv = xp.subtract(v, fv, out=s["wv"][k, a:b])
                fu *= C
                fu += fv
                idx = idx_all[k, a:b]
                idx[...] = fu
                c = cbuf[:(b - a) * N]
                # mode="clip": indices are in range by construction, and this skips the check
                xp.take(tab, idx.reshape(-1), out=c.view(item).reshape(-1), mode="clip")
                c = c.reshape(b - a, H, W, 4)
                c0, c1, c2, c3 = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
                du = xp.multiply(c3, wv, out=s["du"][k, a:b])
                du += c2                                      # dval/dwu = c2 + c3 wv
                dv = xp.multiply(c3, wu, out=s["dv"][k, a:b])
                dv += c1                                      # dval/dwv = c1 + c3 wu
                val = xp.multiply(wu, du, out=s["val"][k, a:b])
                val += c0
                c1 *= wv
                val += c1
                xp.multiply(val, intensity[a:b, k, None, None], out=y[a:b, k])
        self.saved = s
        self.idx = idx_all
        self.shapes = (B, K, T0, T1, R, C, dt)
        self.p = (p0, p1)
        self.intensity = intensity
        return y

    # -- backward ----------------------------------------------------------------
    def backward(self, xp, gy):
        B, K, T0, T1, R, C, dt = self.shapes
        H, W = self.size
        N = H * W
        p0, p1 = self.p
        s = self.saved
        gy = gy.astype(dt, copy=False)
        need_t, need_m, need_i = (t.requires_grad for t in self.inputs)

        g_int = None
        if need_i:   # Σ_pixels gy * val for every canvas: a batch of dot products
            g_int = xp.matmul(gy.reshape(B, K, 1, N), s["val"].reshape(K, B, N, 1).transpose(1, 0, 2, 3))
            g_int = g_int.reshape(B, K)

        # d(u, v)/dM: u = T0 (M00 p0 + M01 p1 + M02) + const, so the matrix gradient is a
        # product of d loss/du with the pixel coordinates (p0, p1, 1)
        pts = xp.empty((N, 3), dtype=dt)
        pts[:, 0] = xp.repeat(p0, W)
        pts[:, 1] = xp.tile(p1, H)
        pts[:, 2] = 1.0
        g_m = xp.zeros((B, K, 3, 3), dtype=dt) if need_m else None
        g_tab = xp.zeros((K, 4, R * C), dtype=dt) if need_t else None
        step = max(1, CHUNK_PIXELS // N)
        wbuf = xp.empty((4, B, H, W), dtype=dt) if need_t else None
        for k in range(K):
            for a in range(0, B, step):
                b = min(B, a + step)
                g = xp.multiply(gy[a:b, k], self.intensity[a:b, k, None, None],
                                out=wbuf[0, a:b] if need_t else None)
                if need_m:
                    gwu = g * s["du"][k, a:b]
                    gwv = g * s["dv"][k, a:b]
                    g_m[a:b, k, 0] = T0 * (gwu.reshape(b - a, N) @ pts)
                    g_m[a:b, k, 1] = T1 * (gwv.reshape(b - a, N) @ pts)
                if need_t:
                    wu, wv = s["wu"][k, a:b], s["wv"][k, a:b]
                    xp.multiply(g, wv, out=wbuf[1, a:b])
                    g2 = xp.multiply(g, wu, out=wbuf[2, a:b])
                    xp.multiply(g2, wv, out=wbuf[3, a:b])
            if need_t:   # one scatter per coefficient and template: large calls are fastest
                idx = self.idx[k].reshape(-1)
                for j in range(4):
                    _scatter_add(xp, g_tab[k, j], idx, wbuf[j].reshape(-1))

        g_t = None
        if need_t:   # cell-polynomial gradients -> template pixel gradients
            G0, G1, G2, G3 = (g_tab[:, j].reshape(K, R, C) for j in range(4))
            gP = xp.zeros((K, R + 1, C + 1), dtype=dt)
            gP[:, :-1, :-1] += G0 - G1 - G2 + G3
            gP[:, :-1, 1:] += G1 - G3
            gP[:, 1:, :-1] += G2 - G3
            gP[:, 1:, 1:] += G3
            g_t = gP[:, _PAD:_PAD + T0, _PAD:_PAD + T1].copy()
        return g_t, g_m, g_int


def _render_cases(rng):
    def poses(b, k):
        from lab.graphics.ntm import nice_to_matrix  # noqa: PLC0415
        n = np.empty((b, k, 6))
        n[..., :2] = rng.uniform(-0.3, 0.3, (b, k, 2))
        n[..., 2:4] = rng.uniform(0.8, 2.0, (b, k, 2))
        n[..., 4] = rng.uniform(-0.3, 0.3, (b, k))
        n[..., 5] = rng.uniform(-np.pi, np.pi, (b, k))
        return nice_to_matrix(n).data
    K, T = 2, 4
    return [
        (lambda t, m, i: render_templates(t, m, i, (6, 5)),
         [rng.standard_normal((K, T, T)), poses(3, K), rng.uniform(0.5, 1.5, (3, K))]),
        (lambda t, m, i: render_templates(t, m, i, 7),
         [rng.standard_normal((1, 3, 5)), poses(2, 1), rng.uniform(-1.0, 1.5, (2, 1))]),
    ]


@register_op("render_templates", _render_cases)
def render_templates(templates, world_to_template, intensity, size=(28, 28)) -> Tensor:
    """ACR (thesis fig. 2.3): render K templates under B x K poses -> ``(B, K, H, W)``.

    ``templates`` ``(K, T0, T1)``: the learned templates (pixels are points, bilinear
    in between, zero outside; see ``lab.graphics.frames``). ``world_to_template``
    ``(B, K, 3, 3)``: world -> template matrices (from ``nice_to_matrix`` and
    ``compose``; the third row is ignored). ``intensity`` ``(B, K)``: multipliers.
    ``size``: ``(H, W)`` or an int. Differentiable w.r.t. all three inputs (fused op
    with a hand-written backward); float32 in, float32 out.
    """
    return RenderTemplates(size)(templates, world_to_template, intensity)
