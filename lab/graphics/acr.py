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
    def _check(self, xp, templates, m, intensity):
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
        R, C = T0 + 2 * _PAD, T1 + 2 * _PAD          # cells per template (rows, columns)
        # zero-padded templates with one extra row/column so every cell has 4 corners
        P = xp.zeros((K, R + 1, C + 1), dtype=dt)
        P[:, _PAD:_PAD + T0, _PAD:_PAD + T1] = templates
        p00, p01 = P[:, :-1, :-1], P[:, :-1, 1:]
        p10, p11 = P[:, 1:, :-1], P[:, 1:, 1:]
        # the bilinear polynomial of every cell: c0 + c1 wv + c2 wu + c3 wu wv
        tables = [xp.ascontiguousarray(t).reshape(-1) for t in
                  (p00, p01 - p00, p10 - p00, p11 - p10 - p01 + p00)]

        p0 = pixel_centres(H, xp, dt)
        p1 = pixel_centres(W, xp, dt)
        mf = m.reshape(B * K, 3, 3)
        # shifted template pixel coordinates: u = T0 q0 - 0.5 + PAD, separable in (i, j)
        U = T0 * (mf[:, 0, 0, None] * p0 + mf[:, 0, 2, None]) + (_PAD - 0.5)   # (BK, H)
        Uj = T0 * (mf[:, 0, 1, None] * p1)                                        # (BK, W)
        V = T1 * (mf[:, 1, 0, None] * p0 + mf[:, 1, 2, None]) + (_PAD - 0.5)
        Vj = T1 * (mf[:, 1, 1, None] * p1)
        koff = (xp.arange(B * K) % K) * (R * C)                                   # cell offset of template k

        n = B * K
        step = max(1, CHUNK_PIXELS // (H * W))
        val = xp.empty((n, H, W), dtype=dt)
        saved = {name: xp.empty((n, H, W), dtype=dt) for name in ("wu", "wv", "du", "c1", "c3")}
        idx_all = xp.empty((n, H, W), dtype=xp.intp)
        umax, vmax = T0 + _PAD + 0.5, T1 + _PAD + 0.5
        for a in range(0, n, step):
            b = min(n, a + step)
            u = U[a:b, :, None] + Uj[a:b, None, :]
            v = V[a:b, :, None] + Vj[a:b, None, :]
            xp.clip(u, 0.0, umax, out=u)
            xp.clip(v, 0.0, vmax, out=v)
            fu, fv = xp.floor(u), xp.floor(v)
            wu = xp.subtract(u, fu, out=saved["wu"][a:b])
            wv = xp.subtract(v, fv, out=saved["wv"][a:b])
            fu *= C
            fu += fv
            fu += koff[a:b, None, None]
            idx = idx_all[a:b]
            idx[...] = fu
            c0, c1, c2, c3 = (xp.take(t, idx) for t in tables)
            du = xp.multiply(c3, wv, out=saved["du"][a:b])
            du += c2                                    # dval/dwu = c2 + c3 wv
            out = xp.multiply(wu, du, out=val[a:b])
            c1w = xp.multiply(c1, wv)
            out += c1w
            out += c0
            saved["c1"][a:b] = c1
            saved["c3"][a:b] = c3
        self.saved = saved
        self.idx = idx_all
        self.val = val
        self.shapes = (B, K, T0, T1, R, C, dt)
        self.p = (p0, p1)
        self.intensity = intensity
        y = val.reshape(B, K, H, W) * intensity[:, :, None, None]
        return y

    # -- backward ----------------------------------------------------------------
    def backward(self, xp, gy):
        B, K, T0, T1, R, C, dt = self.shapes
        H, W = self.size
        p0, p1 = self.p
        n = B * K
        gy = gy.astype(dt, copy=False).reshape(n, H, W)
        inten = self.intensity.reshape(n)
        need_t, need_m, need_i = (t.requires_grad for t in self.inputs)

        g_int = None
        if need_i:
            g_int = xp.matmul(gy.reshape(n, 1, H * W), self.val.reshape(n, H * W, 1)).reshape(B, K)

        g_tab = [xp.zeros(K * R * C, dtype=dt) for _ in range(4)] if need_t else None
        gu_rows = xp.empty((n, H), dtype=dt)
        gu_cols = xp.empty((n, W), dtype=dt)
        gv_rows = xp.empty((n, H), dtype=dt)
        gv_cols = xp.empty((n, W), dtype=dt)
        s = self.saved
        step = max(1, CHUNK_PIXELS // (H * W))
        for a in range(0, n, step):
            b = min(n, a + step)
            g = gy[a:b] * inten[a:b, None, None]
            wu, wv = s["wu"][a:b], s["wv"][a:b]
            if need_m:
                gwu = g * s["du"][a:b]
                dv = s["c3"][a:b] * wu
                dv += s["c1"][a:b]                       # dval/dwv = c1 + c3 wu
                gwv = dv
                gwv *= g
                gwu.sum(axis=2, out=gu_rows[a:b])
                gwu.sum(axis=1, out=gu_cols[a:b])
                gwv.sum(axis=2, out=gv_rows[a:b])
                gwv.sum(axis=1, out=gv_cols[a:b])
            if need_t:
                idx = self.idx[a:b].reshape(-1)
                g1 = g * wv
                g2 = g * wu
                g3 = g2 * wv
                for tab, w in zip(g_tab, (g, g1, g2, g3)):
                    _scatter_add(xp, tab, idx, w.reshape(-1))

        g_m = None
        if need_m:
            g_m = xp.zeros((n, 3, 3), dtype=dt)
            g_m[:, 0, 0] = T0 * (gu_rows @ p0)
            g_m[:, 0, 1] = T0 * (gu_cols @ p1)
            g_m[:, 0, 2] = T0 * gu_rows.sum(axis=1)
            g_m[:, 1, 0] = T1 * (gv_rows @ p0)
            g_m[:, 1, 1] = T1 * (gv_cols @ p1)
            g_m[:, 1, 2] = T1 * gv_rows.sum(axis=1)
            g_m = g_m.reshape(B, K, 3, 3)

        g_t = None
        if need_t:
            G0, G1, G2, G3 = (t.reshape(K, R, C) for t in g_tab)
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
