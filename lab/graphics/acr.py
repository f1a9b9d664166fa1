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

import threading

import numpy as np

from lab.autodiff import Function, Tensor, grad_enabled, register_op
from lab.graphics.frames import as_size, pixel_centres

_PAD = 2  # zero template pixels on each side (coordinates are clipped into this border)

#: Output pixels per chunk (whole canvases): a chunk's dozen work arrays stay in cache.
CHUNK_PIXELS = 1 << 15

_workspace = threading.local()


def _buffer(xp, name, shape, dtype):
    """A reusable work array (per thread): rendering runs every step, so reuse beats allocation.

    Large fresh arrays cost page faults and cache misses on every call; these are only
    scratch space, never returned to the caller nor kept by the graph.
    """
    cache = getattr(_workspace, "arrays", None)
    if cache is None:
        cache = _workspace.arrays = {}
    key = (name, xp.__name__, tuple(shape), xp.dtype(dtype).str)
    a = cache.get(key)
    if a is None:
        for old in [k for k in cache if k[0] == name and k[1] == xp.__name__]:
            del cache[old]                       # one size per name: no unbounded growth
        a = cache[key] = xp.empty(shape, dtype=dtype)
    return a


def _scatter_add(xp, target, index, values):
    """``target[index] += values`` for 1-D arrays (repeated indices add)."""
    if xp is np:
        np.add.at(target, index, values)
    else:  # pragma: no cover - GPU path (later issue)
        import cupyx  # noqa: PLC0415
        cupyx.scatter_add(target, index, values)


class RenderTemplates(Function):
    """Fused ACR: templates (K,T0,T1), world->template (B,K,3,3), intensity (B,K) -> (B,K,H,W).

    Forward keeps, per output pixel, the cell index, the fractions, the two spatial
    derivatives and the unscaled value (only when a backward can follow).
    """

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

    # -- shared sampling of one chunk of canvases ----------------------------------
    def _sample(self, xp, k, a, b, out=None):
        """Sample template k for canvases a:b -> (wu, wv, idx, du, dv, val), each (b-a, H, W).

        ``out``: a dict of destination arrays for those six (the state kept for backward),
        or None to compute only ``val`` in scratch space (rendering without gradients).
        """
        H, W = self.size
        n = (b - a) * H * W
        step_n = self.step * H * W
        dt = self.dt
        shape = (b - a, H, W)

        def scratch(name, dtype=dt):
            return _buffer(xp, name, (step_n,), dtype)[:n].reshape(shape)

        def dest(name, dtype=dt):
            return out[name][k, a:b] if out is not None else scratch(name, dtype)

        u, v, fu, fv = scratch("u"), scratch("v"), scratch("fu"), scratch("fv")
        cbuf = _buffer(xp, "c", (step_n, 4), dt)[:n]
        c4 = _buffer(xp, "c4", (4, step_n), dt)[:, :n]
        # shifted template pixel coordinates u = T0 q0 - 0.5 + PAD, a sum of a row term and a column term
        xp.add(self.U[k, a:b, :, None], self.Uj[k, a:b, None, :], out=u)
        xp.add(self.V[k, a:b, :, None], self.Vj[k, a:b, None, :], out=v)
        xp.clip(u, 0.0, self.umax, out=u)        # beyond: two zero template pixels, value and slope 0
        xp.clip(v, 0.0, self.vmax, out=v)
        xp.floor(u, out=fu)
        xp.floor(v, out=fv)
        wu = xp.subtract(u, fu, out=dest("wu"))
        wv = xp.subtract(v, fv, out=dest("wv"))
        fu *= self.C
        fu += fv
        idx = dest("idx", xp.intp)
        idx[...] = fu                             # cell index (exact small integers)
        # one gather fetches a cell's 4 polynomial coefficients; the indices are in range by
        # construction, and mode="clip" skips numpy's bounds check (twice as fast)
        xp.take(self.table[k], idx.reshape(-1), out=cbuf.view(self.item).reshape(-1), mode="clip")
        c4[...] = cbuf.T                          # contiguous coefficients: faster arithmetic below
        c0, c1, c2, c3 = (c4[j].reshape(shape) for j in range(4))
        du = xp.multiply(c3, wv, out=dest("du"))
        du += c2                                  # dval/dwu = c2 + c3 wv
        val = xp.multiply(wu, du, out=dest("val"))
        val += c0
        dv = None
        if out is not None:
            dv = xp.multiply(c3, wu, out=dest("dv"))
            dv += c1                              # dval/dwv = c1 + c3 wu
        c1 *= wv
        val += c1
        return wu, wv, idx, du, dv, val

    # -- forward -----------------------------------------------------------------
    def forward(self, xp, templates, m, intensity):
        self._check(xp, templates, m, intensity)
        dt = self.dt = np.result_type(templates.dtype, m.dtype, intensity.dtype)
        templates, m, intensity = (a.astype(dt, copy=False) for a in (templates, m, intensity))
        K, T0, T1 = templates.shape
        B = m.shape[0]
        H, W = self.size
        R, C = T0 + 2 * _PAD, T1 + 2 * _PAD          # cells per template (rows, columns)
        self.dims = (B, K, T0, T1, R)
        self.C = C
        # Zero-padded templates, one extra row/column so that every cell has 4 corners,
        # and each cell's bilinear polynomial c0 + c1 wv + c2 wu + c3 wu wv, its 4
        # numbers adjacent so that one gather of an opaque 4-number item fetches them.
        P = xp.zeros((K, R + 1, C + 1), dtype=dt)
        P[:, _PAD:_PAD + T0, _PAD:_PAD + T1] = templates
        p00, p01, p10, p11 = P[:, :-1, :-1], P[:, :-1, 1:], P[:, 1:, :-1], P[:, 1:, 1:]
        table = xp.stack([p00, p01 - p00, p10 - p00, p11 - p10 - p01 + p00], axis=-1)
        self.item = xp.dtype(f"V{4 * xp.dtype(dt).itemsize}")
        self.table = xp.ascontiguousarray(table).reshape(K, R * C, 4).view(self.item).reshape(K, R * C)

        self.p0, self.p1 = p0, p1 = pixel_centres(H, xp, dt), pixel_centres(W, xp, dt)
        mk = m.transpose(1, 0, 2, 3)                                                 # (K, B, 3, 3)
        self.U = T0 * (mk[..., 0, 0, None] * p0 + mk[..., 0, 2, None]) + (_PAD - 0.5)  # (K, B, H)
        self.Uj = T0 * (mk[..., 0, 1, None] * p1)                                      # (K, B, W)
        self.V = T1 * (mk[..., 1, 0, None] * p0 + mk[..., 1, 2, None]) + (_PAD - 0.5)
        self.Vj = T1 * (mk[..., 1, 1, None] * p1)
        self.umax, self.vmax = T0 + _PAD + 0.5, T1 + _PAD + 0.5
        self.intensity = intensity
        self.step = step = max(1, CHUNK_PIXELS // (H * W))

        y = xp.empty((B, K, H, W), dtype=dt)
        # what backward needs, laid out (K, B, H, W): each template's part is contiguous
        saved = None
        if self.need_grad:
            saved = {name: xp.empty((K, B, H, W), dtype=dt) for name in ("wu", "wv", "du", "dv", "val")}
            saved["idx"] = xp.empty((K, B, H, W), dtype=xp.intp)
        for k in range(K):
            for a in range(0, B, step):
                b = min(B, a + step)
                val = self._sample(xp, k, a, b, saved)[-1]
                xp.multiply(val, intensity[a:b, k, None, None], out=y[a:b, k])
        self.saved = saved
        return y

    def __call__(self, *inputs):
        # keep per-pixel state only when a backward can follow
        self.need_grad = grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad for x in inputs)
        return super().__call__(*inputs)

    # -- backward ----------------------------------------------------------------
    def backward(self, xp, gy):
        B, K, T0, T1, R = self.dims
        C = self.C
        H, W = self.size
        N = H * W
        dt = self.dt
        gy = gy.astype(dt, copy=False)
        need_t, need_m, need_i = (t.requires_grad for t in self.inputs)
        # d(u, v)/dM: u = T0 (M00 p0 + M01 p1 + M02) + const, so the matrix gradient is
        # d loss/du times the pixel coordinates (p0, p1, 1): one small matrix product
        pts = xp.empty((N, 3), dtype=dt)
        pts[:, 0] = xp.repeat(self.p0, W)
        pts[:, 1] = xp.tile(self.p1, H)
        pts[:, 2] = 1.0
        sv = self.saved
        g_m = xp.zeros((B, K, 3, 3), dtype=dt) if need_m else None
        g_int = None
        if need_i:   # Σ_pixels gy * val for every canvas: a batch of dot products
            g_int = xp.matmul(gy.reshape(B, K, 1, N),
                              sv["val"].reshape(K, B, N, 1).transpose(1, 0, 2, 3)).reshape(B, K)
        g_tab = xp.zeros((K, 4, R * C), dtype=dt) if need_t else None
        if need_t:   # per template: the scatter weights of all B canvases (large scatters are fastest)
            wk = _buffer(xp, "scatter_w", (4, B, N), dt)
        step = self.step
        for k in range(K):
            for a in range(0, B, step):
                b = min(B, a + step)
                g = xp.multiply(gy[a:b, k].reshape(b - a, N), self.intensity[a:b, k, None],
                                out=wk[0, a:b] if need_t else None)
                if need_m:
                    gwu = _buffer(xp, "gwu", (step, N), dt)[:b - a]
                    xp.multiply(sv["du"][k, a:b].reshape(b - a, N), g, out=gwu)
                    g_m[a:b, k, 0] = T0 * (gwu @ pts)
                    xp.multiply(sv["dv"][k, a:b].reshape(b - a, N), g, out=gwu)
                    g_m[a:b, k, 1] = T1 * (gwu @ pts)
                if need_t:
                    wu, wv = sv["wu"][k, a:b].reshape(b - a, N), sv["wv"][k, a:b].reshape(b - a, N)
                    xp.multiply(g, wv, out=wk[1, a:b])
                    g2 = xp.multiply(g, wu, out=wk[2, a:b])
                    xp.multiply(g2, wv, out=wk[3, a:b])
            if need_t:
                ik = sv["idx"][k].reshape(-1)
                for j in range(4):
                    _scatter_add(xp, g_tab[k, j], ik, wk[j].reshape(-1))

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
