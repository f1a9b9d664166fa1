"""ACR (thesis fig. 2.3): atomic capsule rendering as one fused autodiff op.

``render_templates(templates, world_to_template, intensity, size)`` draws every
atomic capsule's learned template onto its own canvas: output pixel ``p`` (a world
point, see ``lab.graphics.frames``) shows ``intensity * template(M p)``, where the
template between its pixel points is bilinearly interpolated and zero outside them
(thesis 2.3.2, "The renderer-friendly approach"; fig. 2.15).

The thesis spent much effort on this op's CUDA kernels (2.5.2) because rendering and
its gradient dominate the compute time. Here it is one ``Function`` with a
hand-written backward, vectorized over all ``B * K`` canvases, in chunks of canvases
of one template (so that work arrays stay in cache):

footprint
    the template coordinates ``(u, v)`` of every output pixel are one small product
    ``[T M00, T M01, T M02 - 0.5] @ [p0; p1; 1]``. A template is zero outside
    ``-1 < u < T0, -1 < v < T1``. Where a chunk's footprints cover less than half of
    its pixels (a learned capsule draws a part of the digit, thesis fig. 2.14), only
    the pixels inside (found with a mask, kept as flat positions) are computed; value
    and gradient are exactly zero elsewhere. Otherwise every pixel is computed, with
    its coordinates clipped into a border of two zero template pixels, where value and
    slopes vanish without masks.
forward
    ``(u, v)`` splits into a cell and fractions ``(wu, wv)``; one gather fetches the
    cell's bilinear polynomial ``c0 + c1 wv + c2 wu + c3 wu wv`` (a table built once
    from the zero-padded templates).
backward
    templates: the polynomial coefficients' gradients ``(g, g wv, g wu, g wu wv)``
    are scattered onto the cell table with ``np.add.at`` and mapped back to pixels;
    matrices: ``d loss/du = g (c2 + c3 wv)`` and ``d loss/dv = g (c1 + c3 wu)`` times
    the pixel coordinates ``(p0, p1, 1)`` (per-canvas sums); intensities: ``Σ gy · value``.

Templates are shared out among the render threads (``lab.graphics.threads``; numpy
releases the GIL in its loops; results are identical for any thread count).
Float32 inputs are computed in float32; any float64 input makes the whole op float64
(used by the gradient checks). The CPU path uses numpy only. CuPy inputs take
``forward_gpu``/``backward_gpu``: CUDA kernels (``lab/gpu/kernels/render.cu``) for the
same function, coordinates rounded as here (equal to this op on an H100:
``benchmarks/gpu_check.py``).
"""
from __future__ import annotations

import threading

import numpy as np

from lab.autodiff import Function, Tensor, grad_enabled, register_op
from lab.graphics.frames import as_size, pixel_centres
from lab.graphics.threads import parallel_map

_PAD = 2  # zero template pixels on each side: room to clip coordinates into (dense chunks)

#: Chunks where more than this fraction of pixels is inside the footprint are computed
#: densely (every pixel, clipped coordinates): compacting would cost more than it saves.
DENSE_FRACTION = 0.5

#: Output pixels per chunk (whole canvases of one template): work arrays stay in cache.
CHUNK_PIXELS = 1 << 17

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

    Forward keeps, per computed pixel, its fractions and cell (plus flat positions in
    compacted chunks), and only when a backward can follow; backward re-gathers the
    cell polynomials, which is cheaper than storing them.
    """

    label = "ACR"

    def __init__(self, size):
        self.size = as_size(size)

    def __call__(self, *inputs):
        # keep per-pixel state only when a backward can follow
        self.need_grad = grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad for x in inputs)
        return super().__call__(*inputs)

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

    # -- the footprint of one chunk of canvases ----------------------------------
    def _footprint(self, xp, k, a, b):
        """Template k on canvases a:b: ``(pos, w, idx)``.

        ``pos``: flat positions (in the chunk's (b-a)*N pixels) inside the footprint, or
        None when most pixels are inside (then every pixel is computed, ``w`` and ``idx``
        cover the whole chunk, and coordinates outside are clipped into the zero border).
        ``w``: fractions (2, n); ``idx``: cell indices (n,).
        """
        n = (b - a) * self.N
        full = self.step * self.N
        uv = _buffer(xp, "uv", (2, full), self.dt)[:, :n]
        inside = _buffer(xp, "inside", (2, full), bool)[:, :n]
        upper = _buffer(xp, "upper", (2, full), bool)[:, :n]
        # shifted template pixel coordinates: [T M00, T M01, T M02 - 0.5 + PAD] @ [p0; p1; 1]
        # (einsum's own loop, not BLAS: a threaded BLAS on a busy machine is 100x slower here)
        xp.einsum("rcj,jn->rcn", self.coef[k, :, a:b], self.basis, out=uv.reshape(2, b - a, self.N))
        # inside: -1 < u < T0 and -1 < v < T1 (outside, value and slopes are exactly 0)
        xp.greater(uv, _PAD - 1, out=inside)
        xp.less(uv, self.uvmax, out=upper)
        inside &= upper
        xp.logical_and(inside[0], inside[1], out=inside[0])
        pos = xp.flatnonzero(inside[0])
        if pos.size > DENSE_FRACTION * n:
            # dense: clipping into the border of two zero template pixels makes value and
            # slopes exactly 0 outside, with no masks
            xp.clip(uv, 0.0, self.uvclip, out=uv)
            f = _buffer(xp, "f", (2, full), self.dt)[:, :n]
            xp.floor(uv, out=f)
            w = uv - f
            pos = None
        else:
            w = xp.take(uv, pos, axis=1, mode="clip")  # (2, n_in) coordinates, then fractions
            f = xp.floor(w)
            w -= f
        f[0] *= self.C
        f[0] += f[1]
        return pos, w, f[0].astype(xp.intp)

    def _gather(self, xp, k, idx, w, need_dv, val_out):
        """Bilinear value (-> ``val_out``) and slopes ``(du, dv)`` at the cells ``idx``."""
        n = idx.size
        cbuf = _buffer(xp, "c", (self.step * self.N, 4), self.dt)[:n]
        c4 = _buffer(xp, "c4", (4, self.step * self.N), self.dt)[:, :n]
        # one gather fetches a cell's 4 polynomial coefficients (an opaque 4-number item);
        # indices here are in range by construction: mode="clip" (used throughout) only
        # skips numpy's bounds check, which costs half the time of a gather
        xp.take(self.table[k], idx, out=cbuf.view(self.item).reshape(-1), mode="clip")
        c4[...] = cbuf.T                              # contiguous coefficients: faster arithmetic below
        c0, c1, c2, c3 = c4
        wu, wv = w
        duv = _buffer(xp, "duv", (2, self.step * self.N), self.dt)[:, :n]
        du, dv = duv
        xp.multiply(c3, wv, out=du)
        du += c2                                      # dval/dwu = c2 + c3 wv
        if need_dv:
            xp.multiply(c3, wu, out=dv)
            dv += c1                                  # dval/dwv = c1 + c3 wu
        if val_out is not None:
            xp.multiply(wu, du, out=val_out)
            val_out += c0
            c1 *= wv
            val_out += c1
        return duv

    # -- the GPU path (CUDA kernels in lab/gpu/kernels/render.cu) ------------------
    def forward_gpu(self, xp, templates, m, intensity):  # pragma: no cover - needs a GPU
        from lab.gpu import render as gpu_render  # noqa: PLC0415
        self._check(xp, templates, m, intensity)
        dt = np.result_type(templates.dtype, m.dtype, intensity.dtype)
        saved = tuple(xp.ascontiguousarray(a, dtype=dt) for a in (templates, m, intensity))
        self.saved_gpu = saved if self.need_grad else None
        return gpu_render.render_forward(*saved, self.size)

    def backward_gpu(self, xp, gy):  # pragma: no cover - needs a GPU
        from lab.gpu import render as gpu_render  # noqa: PLC0415
        need = tuple(t.requires_grad for t in self.inputs)
        return gpu_render.render_backward(*self.saved_gpu, gy, need)

    # -- forward -----------------------------------------------------------------
    def forward(self, xp, templates, m, intensity):
        if xp is not np:   # pragma: no cover - CuPy arrays take forward_gpu
            raise TypeError(
                f"the numpy render path got {xp.__name__} arrays: it relies on numpy-only tricks "
                "(opaque-item gathers, ufunc.at); CuPy arrays go through forward_gpu")
        self._check(xp, templates, m, intensity)
        dt = self.dt = np.result_type(templates.dtype, m.dtype, intensity.dtype)
        templates, m, intensity = (a.astype(dt, copy=False) for a in (templates, m, intensity))
        K, T0, T1 = templates.shape
        B = m.shape[0]
        H, W = self.size
        N = self.N = H * W
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

        p0, p1 = pixel_centres(H, xp, dt), pixel_centres(W, xp, dt)
        self.basis = xp.stack([xp.repeat(p0, W), xp.tile(p1, H), xp.ones(N, dtype=dt)])   # (3, N)
        # u = T0 (M00 p0 + M01 p1 + M02) - 0.5 + PAD (and v with T1, row 1), per template k
        scale = xp.asarray([T0, T1], dtype=dt)[:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            coef = m[:, :, :2, :].transpose(1, 2, 0, 3) * scale[None, :, :, None]         # (K, 2, B, 3)
        coef[..., 2] += _PAD - 0.5
        # a pose with non-finite coefficients (NaN or infinite entries, or finite ones whose
        # T M overflows) has no footprint, as in render.cu; finite coefficients give finite or
        # infinite coordinates, never NaN ones, so every cell index below is in range
        no_footprint = ~xp.isfinite(coef).all(axis=(1, 3))                                # (K, B)
        if no_footprint.any():
            coef[xp.repeat(no_footprint[:, None, :], 2, axis=1)] = 0.0
        self.coef = xp.ascontiguousarray(coef)
        self.uvmax = xp.asarray([T0 + _PAD, T1 + _PAD], dtype=dt)[:, None]
        self.uvclip = self.uvmax + 0.5        # cells beyond have two zero corners: value, slopes 0
        self.intensity = intensity
        self.step = step = max(1, CHUNK_PIXELS // N)

        y = xp.zeros((B, K, H, W), dtype=dt)
        per_k = parallel_map(lambda k: self._forward_k(xp, k, y.reshape(-1)), range(K))
        # a non-finite pose must show (NaN), not vanish as a footprint outside the canvas;
        # its matrix and intensity gradients are NaN too (render.cu's render_backward)
        self.bad = bad = ~xp.isfinite(m[:, :, :2, :]).all(axis=(2, 3))
        if bad.any():
            y[bad] = xp.nan
        self.chunks = per_k if self.need_grad else None
        return y

    def _forward_k(self, xp, k, yflat):
        """Render template k on all B canvases, chunk by chunk; returns the chunks' state."""
        B, K = self.dims[:2]
        N, dt, step = self.N, self.dt, self.step
        chunks = []
        for a in range(0, B, step):
            b = min(B, a + step)
            pos, w, idx = self._footprint(xp, k, a, b)
            if pos is None:      # dense chunk: every pixel computed
                val = _buffer(xp, "val", (step * N,), dt)[:(b - a) * N].reshape(b - a, N)
                self._gather(xp, k, idx, w, False, val.reshape(-1))
                xp.multiply(val, self.intensity[a:b, k, None], out=yflat.reshape(B, K, N)[a:b, k])
                if self.need_grad:
                    chunks.append((a, b, None, None, None, w, idx))
                continue
            # which canvas of the chunk each inside pixel belongs to (positions are sorted)
            bounds = xp.searchsorted(pos, xp.arange(b - a + 1) * N)
            counts = xp.diff(bounds)
            canvas = xp.repeat(xp.arange(b - a), counts)
            pix = pos - canvas * N
            gpos = (canvas + a) * (K * N) + k * N + pix      # flat position in y
            val = xp.empty(pos.size, dtype=dt)
            self._gather(xp, k, idx, w, False, val)
            val *= xp.repeat(self.intensity[a:b, k], counts)
            yflat[gpos] = val
            if self.need_grad:
                chunks.append((a, b, gpos, pix, bounds, w, idx))
        return chunks

    # -- backward ----------------------------------------------------------------
    def backward(self, xp, gy):
        B, K, T0, T1, R = self.dims
        C, N, dt = self.C, self.N, self.dt
        need_t, need_m, need_i = (t.requires_grad for t in self.inputs)
        g_m = xp.zeros((B, K, 3, 3), dtype=dt) if need_m else None
        g_int = xp.zeros((B, K), dtype=dt) if need_i else None
        g_tab = xp.zeros((K, 4, R * C), dtype=dt) if need_t else None
        gyflat = xp.ascontiguousarray(gy, dtype=dt).reshape(-1)
        parallel_map(lambda k: self._backward_k(xp, k, gyflat, g_m, g_int, g_tab), range(K))

        g_t = None
        if need_t:   # cell-polynomial gradients -> template pixel gradients
            G0, G1, G2, G3 = (g_tab[:, j].reshape(K, R, C) for j in range(4))
            gP = xp.zeros((K, R + 1, C + 1), dtype=dt)
            gP[:, :-1, :-1] += G0 - G1 - G2 + G3
            gP[:, :-1, 1:] += G1 - G3
            gP[:, 1:, :-1] += G2 - G3
            gP[:, 1:, 1:] += G3
            g_t = gP[:, _PAD:_PAD + T0, _PAD:_PAD + T1].copy()
        if self.bad.any():       # (the third row of a pose is not used: its gradient stays 0)
            if g_m is not None:
                g_m[self.bad, :2] = xp.nan
            if g_int is not None:
                g_int[self.bad] = xp.nan
        return g_t, g_m, g_int


    def _backward_k(self, xp, k, gyflat, g_m, g_int, g_tab):
        """Gradients from template k's chunks into g_m[:, k], g_int[:, k] and g_tab[k]."""
        B, K, T0, T1, R = self.dims
        N, dt = self.N, self.dt
        need_t, need_m, need_i = g_tab is not None, g_m is not None, g_int is not None
        scale = xp.asarray([T0, T1], dtype=dt)[:, None]
        full = self.step * N
        if need_t:   # the scatter weights and cells of all the chunks: large scatters are fastest
            wk = _buffer(xp, "scatter_w", (4, B * N), dt)
            ik = _buffer(xp, "scatter_i", (B * N,), xp.intp)
            fill = 0
        for a, b, gpos, pix, bounds, w, idx in self.chunks[k]:
            n = idx.size
            val = _buffer(xp, "val", (full,), dt)[:n] if need_i else None
            if gpos is None:     # dense chunk
                gin = gyflat.reshape(B, K, N)[a:b, k]
                g = xp.multiply(gin, self.intensity[a:b, k, None],
                                out=_buffer(xp, "g", (full,), dt)[:n].reshape(b - a, N)).reshape(-1)
                duv = self._gather(xp, k, idx, w, need_m, val)
                if need_i:
                    g_int[a:b, k] = xp.einsum("cn,cn->c", gin, val.reshape(b - a, N))
                if need_m:       # (d loss/du, d loss/dv) times the pixel coordinates (p0, p1, 1)
                    duv *= g
                    g_m[a:b, k, :2] = scale * xp.einsum("rcn,jn->crj", duv.reshape(2, b - a, N), self.basis)
            else:
                counts = xp.diff(bounds)
                gin = xp.take(gyflat, gpos, mode="clip")      # d loss / d y at the inside pixels
                g = gin * xp.repeat(self.intensity[a:b, k], counts)   # ... / d unscaled value
                duv = self._gather(xp, k, idx, w, need_m, val)
            if gpos is not None and (need_m or need_i):
                # per-canvas sums as one segmented reduction over the (sorted) inside pixels:
                # rows 0-5: d loss/d(u, v) times (p0, p1, 1), i.e. the matrix gradient, because
                # u = T0 (M00 p0 + M01 p1 + M02) + const; row 6: Σ gy · value (intensity)
                X = _buffer(xp, "sums", (7, full + 1), dt)[:, :n + 1]
                X[:, n] = 0                                   # empty trailing canvases point here
                if need_m:
                    duv *= g
                    for r, d in enumerate(duv):
                        xp.take(self.basis[0], pix, out=X[3 * r, :n], mode="clip")
                        X[3 * r, :n] *= d
                        xp.take(self.basis[1], pix, out=X[3 * r + 1, :n], mode="clip")
                        X[3 * r + 1, :n] *= d
                        X[3 * r + 2, :n] = d
                else:
                    X[:6] = 0
                if need_i:
                    xp.multiply(val, gin, out=X[6, :n])
                else:
                    X[6] = 0
                S = xp.add.reduceat(X, bounds[:-1], axis=1) if n else xp.zeros((7, b - a), dtype=dt)
                S[:, counts == 0] = 0                         # reduceat's rule for empty segments
                if need_m:
                    g_m[a:b, k, :2] = scale * S[:6].reshape(2, 3, b - a).transpose(2, 0, 1)
                if need_i:
                    g_int[a:b, k] = S[6]
            if need_t:
                wu, wv = w
                e = fill + n
                wk[0, fill:e] = g
                xp.multiply(g, wv, out=wk[1, fill:e])
                g2 = xp.multiply(g, wu, out=wk[2, fill:e])
                xp.multiply(g2, wv, out=wk[3, fill:e])
                ik[fill:e] = idx
                fill = e
        if need_t:
            for c in range(4):
                _scatter_add(xp, g_tab[k, c], ik[:fill], wk[c, :fill])


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
