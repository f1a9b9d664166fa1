"""ACR rendering on the GPU (thesis fig. 2.3, 2.5.2): launchers for ``kernels/render.cu``.

``render_forward`` / ``render_backward`` are the CuPy halves of
``lab.graphics.acr.RenderTemplates`` (its ``forward_gpu``/``backward_gpu``): the same
function as the numpy path, coordinates rounded as numpy rounds them, so both pick the
same bilinear cell (see that module for the convention). ``render_mss_se`` fuses
rendering, the maxSemiSoft output model (2.3.3) and a squared error into one kernel that
returns the loss and the gradients for templates, matrices and intensities: the decoder's
hot path of a capsule training step without any (B, K, H, W) intermediate.

Float32 or float64 (all inputs cast to their common type). Checked against the numpy op
and timed beside PyTorch on an H100 by ``benchmarks/gpu_check.py``.
"""
from __future__ import annotations

import numpy as np

from lab.gpu import kernel, sm_count, suffix

_NULL = np.uint64(0)          # a null pointer argument (gradient not wanted)
_SHARED_LIMIT = 48 * 1024     # dynamic shared memory available without opting in
_PPT = 4                      # RENDER_PPT in render.cu
_BACKWARD_WARPS = 8           # warps per block of the backward kernel (one canvas each)


def _prepare(templates, m, intensity, dtype=None):
    import cupy  # noqa: PLC0415
    dt = np.result_type(templates.dtype, m.dtype, intensity.dtype) if dtype is None else np.dtype(dtype)
    return tuple(cupy.ascontiguousarray(a, dtype=dt) for a in (templates, m, intensity)) + (dt,)


def _dims(templates, m):
    K, T0, T1 = (int(s) for s in templates.shape)
    B = int(m.shape[0])
    return B, K, T0, T1


def render_forward(templates, m, intensity, size):
    """``(B, K, H, W)`` canvases: ``intensity * template(M p)`` (CuPy arrays in and out)."""
    import cupy  # noqa: PLC0415
    t, mm, it, dt = _prepare(templates, m, intensity)
    B, K, T0, T1 = _dims(t, mm)
    H, W = size
    y = cupy.empty((B, K, H, W), dtype=dt)
    total = B * K * H * W
    if total == 0:
        return y
    threads = 256
    blocks = min((total + threads - 1) // threads, 64 * sm_count())
    kernel("render.cu", f"render_forward_{suffix(dt)}")(
        (blocks,), (threads,),
        (t, mm, it, y, np.int32(B), np.int32(K), np.int32(T0), np.int32(T1), np.int32(H), np.int32(W)))
    return y


def render_backward(templates, m, intensity, gy, need=(True, True, True)):
    """Gradients ``(g_templates, g_matrices, g_intensity)`` from ``gy`` (B, K, H, W);
    an entry is None where ``need`` says it is not wanted. The matrices' third row gets 0."""
    import cupy  # noqa: PLC0415
    t, mm, it, dt = _prepare(templates, m, intensity)
    B, K, T0, T1 = _dims(t, mm)
    H, W = int(gy.shape[-2]), int(gy.shape[-1])
    gy = cupy.ascontiguousarray(gy, dtype=dt)
    need_t, need_m, need_i = need
    g_t = cupy.zeros((K, T0, T1), dtype=dt) if need_t else None
    g_m = cupy.empty((B, K, 3, 3), dtype=dt) if need_m else None
    g_i = cupy.empty((B, K), dtype=dt) if need_i else None
    if B == 0 or K == 0 or not any(need):
        for g in (g_m, g_i):
            if g is not None:
                g.fill(0)
        return g_t, g_m, g_i
    shared = T0 * T1 * dt.itemsize
    use_shared = bool(need_t) and shared <= _SHARED_LIMIT
    warps = _BACKWARD_WARPS
    blocks_y = max(1, min((B + warps - 1) // warps, -(-8 * sm_count() // K), 65535))
    kernel("render.cu", f"render_backward_{suffix(dt)}")(
        (K, blocks_y), (32 * warps,),
        (t, mm, it, gy,
         g_t if need_t else _NULL, g_m if need_m else _NULL, g_i if need_i else _NULL,
         np.int32(B), np.int32(K), np.int32(T0), np.int32(T1), np.int32(H), np.int32(W),
         np.int32(use_shared)),
        shared_mem=shared if use_shared else 0)
    return g_t, g_m, g_i


def fused_launch_shape(B, K, T0, T1, H, W, itemsize):
    """``(blocks, threads, shared bytes)`` of the fused kernel; ValueError where it cannot run.

    Pure arithmetic (no CuPy), so the CPU tests check it."""
    N = H * W
    per_thread = -(-N // _PPT)
    threads = min(1024, max(64, 32 * -(-per_thread // 32)))
    if N > _PPT * threads:
        raise ValueError(f"fused render: {H}x{W} canvases exceed {_PPT * 1024} pixels")
    shared = (2 * K * T0 * T1 + 32 * 8) * itemsize
    if shared > _SHARED_LIMIT:
        raise ValueError(f"fused render: {K} templates of {T0}x{T1} need {shared} bytes of "
                         f"shared memory (limit {_SHARED_LIMIT})")
    return B, threads, shared


def render_mss_se(templates, m, intensity, target, sharpness=100.0, want_image=False):
    """Fused render -> maxSemiSoft over capsules -> ``Σ (image - target)²``.

    Returns ``(loss, image or None, g_templates, g_matrices, g_intensity)``; ``loss`` is
    a 0-d CuPy array (no host round trip). The same function as
    :func:`render_mss_se_reference` (the lab's autodiff graph)."""
    import cupy  # noqa: PLC0415
    t, mm, it, dt = _prepare(templates, m, intensity)
    B, K, T0, T1 = _dims(t, mm)
    H, W = int(target.shape[-2]), int(target.shape[-1])
    target = cupy.ascontiguousarray(target, dtype=dt)
    blocks, threads, shared = fused_launch_shape(B, K, T0, T1, H, W, dt.itemsize)
    blocks = max(1, min(blocks, 4 * sm_count()))
    image = cupy.empty((B, H, W), dtype=dt) if want_image else None
    loss_b = cupy.empty(B, dtype=dt)
    g_t = cupy.zeros((K, T0, T1), dtype=dt)
    g_m = cupy.empty((B, K, 3, 3), dtype=dt)
    g_i = cupy.empty((B, K), dtype=dt)
    kernel("render.cu", f"render_mss_se_{suffix(dt)}")(
        (blocks,), (threads,),
        (t, mm, it, target, dt.type(sharpness), image if want_image else _NULL, loss_b, g_t, g_m, g_i,
         np.int32(B), np.int32(K), np.int32(T0), np.int32(T1), np.int32(H), np.int32(W)),
        shared_mem=shared)
    return loss_b.sum(), image, g_t, g_m, g_i


def render_mss_se_reference(templates, m, intensity, target, sharpness=100.0):
    """The fused kernel's function composed from the lab's autodiff ops (numpy or CuPy
    inputs): ``(loss, image, g_templates, g_matrices, g_intensity)``."""
    import lab.autodiff as ad  # noqa: PLC0415
    from lab.graphics.acr import render_templates  # noqa: PLC0415
    from lab.graphics.om import max_semi_soft  # noqa: PLC0415
    xs = [ad.Tensor(a, requires_grad=True) for a in (templates, m, intensity)]
    image = max_semi_soft(render_templates(*xs, tuple(target.shape[-2:])), axis=1, sharpness=sharpness)
    loss = ad.sum(ad.square(image - target))
    loss.backward()
    return loss.data, image.data, xs[0].grad, xs[1].grad, xs[2].grad
