"""Row-major matrix products by cuBLAS that can be recorded into a CUDA graph.

CuPy 14's cuBLAS wrappers refuse to run while a stream is capturing ("calling cuBLAS API
during stream capture is currently unsupported": they re-bind the handle's stream, which
CuPy forbids then), although cuBLAS itself supports capture. The PCD/FPCD update and AIS
(``lab.undirected.gpu_update``) are captured as graphs, so their products call
``cublasSgemm_v2``/``cublasDgemm_v2`` here through ctypes, on handles of our own (per
device, thread and ``slot``) with their own workspaces, so that nothing is allocated
while a graph is recorded. Products that may run at the same time on different streams
take different slots (cuBLAS's workspace is per handle).

:func:`gemm_arguments` is the pure row-major -> column-major translation (tested on the
CPU against numpy); :func:`gemm` is the call. Importing this module does not import CuPy.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import numpy as np

OP_N, OP_T = 0, 1
_POINTER_MODE_HOST = 0
WORKSPACE_BYTES = 32 << 20          # cuBLAS's recommendation for Hopper
_local = threading.local()
_lib_lock = threading.Lock()
_lib = None


def gemm_arguments(transa: str, transb: str, a_shape, a_ld, b_shape, b_ld, out_shape, out_ld):
    """cuBLAS arguments ``(opx, opy, m, n, k, ldx, ldy, ldc)`` for the row-major product
    ``out = op(a) @ op(b)``, called as ``gemm(opx, opy, m, n, k, b, ldx, a, ldy, out, ldc)``.

    A row-major matrix read column-major is its transpose, so cuBLAS computes
    ``out^T = op(b)^T op(a)^T``: the operands swap and keep their ``N``/``T`` flags.
    ``*_ld``: each array's row stride in elements."""
    flags = {"N": OP_N, "T": OP_T}
    for name, t in (("transa", transa), ("transb", transb)):
        if t not in flags:
            raise ValueError(f"{name} must be 'N' or 'T', got {t!r}")
    m_rows, k = a_shape if transa == "N" else a_shape[::-1]
    k_b, n_cols = b_shape if transb == "N" else b_shape[::-1]
    if k != k_b:
        raise ValueError(f"inner dimensions differ: op(a) is {m_rows}x{k}, op(b) is {k_b}x{n_cols}")
    if tuple(out_shape) != (m_rows, n_cols):
        raise ValueError(f"out must be {(m_rows, n_cols)}, got {tuple(out_shape)}")
    for name, shape, ld in (("a", a_shape, a_ld), ("b", b_shape, b_ld), ("out", out_shape, out_ld)):
        if ld < max(1, shape[1]):
            raise ValueError(f"{name}'s row stride {ld} is shorter than its {shape[1]} columns")
    return flags[transb], flags[transa], int(n_cols), int(m_rows), int(k), int(b_ld), int(a_ld), int(out_ld)


def _row_stride(x, name: str) -> int:
    if x.ndim != 2:
        raise ValueError(f"{name} must be a matrix, got {x.ndim} dimensions")
    item = x.dtype.itemsize
    if x.shape[1] > 1 and x.strides[1] != item:
        raise ValueError(f"{name} must have contiguous rows (strides {x.strides})")
    if x.shape[0] <= 1:
        return max(1, x.shape[1])
    if x.strides[0] % item or x.strides[0] <= 0:
        raise ValueError(f"{name} has an unusable row stride {x.strides[0]} bytes")
    return x.strides[0] // item


def _library():
    """The libcublas that CuPy loaded (found in this process's memory map), else the
    system's."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        import cupy  # noqa: PLC0415  (GPU path only)
        cupy.cuda.device.get_cublas_handle()           # makes CuPy load libcublas
        path = None
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    p = line.split()[-1]
                    if os.path.basename(p).startswith("libcublas.so"):
                        path = p
                        break
        except OSError:
            pass
        path = path or ctypes.util.find_library("cublas")
        if path is None:
            raise RuntimeError("libcublas not found (CuPy loaded none, and none is on the library path)")
        lib = ctypes.CDLL(path)
        vp, i = ctypes.c_void_p, ctypes.c_int
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasSetPointerMode_v2.argtypes = [vp, i]
        lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
        for name, scalar in (("cublasSgemm_v2", ctypes.c_float), ("cublasDgemm_v2", ctypes.c_double)):
            getattr(lib, name).argtypes = [vp, i, i, i, i, i, ctypes.POINTER(scalar), vp, i, vp, i,
                                           ctypes.POINTER(scalar), vp, i]
        _lib = lib
        return lib


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"cuBLAS {what} failed with status {status}")


def _handle(slot: int = 0):
    """This thread's handle number ``slot`` on the current device, with its own workspace
    (created on first use, which must not be inside a capture)."""
    import cupy  # noqa: PLC0415
    dev = (cupy.cuda.Device().id, int(slot))
    handles = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    if dev not in handles:
        lib = _library()
        h = ctypes.c_void_p()
        _check(lib.cublasCreate_v2(ctypes.byref(h)), "cublasCreate")
        workspace = cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)
        _check(lib.cublasSetWorkspace_v2(h, workspace.data.ptr, WORKSPACE_BYTES), "cublasSetWorkspace")
        _check(lib.cublasSetPointerMode_v2(h, _POINTER_MODE_HOST), "cublasSetPointerMode")
        handles[dev] = (h, workspace)
    return handles[dev][0]


def prepare(slots=(0,)) -> None:
    """Create this thread's handles for ``slots`` now (before a capture records them)."""
    for slot in slots:
        _handle(slot)


def gemm(transa: str, transb: str, a, b, out, alpha: float = 1.0, beta: float = 0.0, slot: int = 0):
    """``out = alpha op(a) @ op(b) + beta out`` for row-major CuPy matrices (float32 or
    float64, rows contiguous; row slices of contiguous arrays are fine) on the current
    stream, also while it is being captured. ``slot``: which handle (see the module
    docstring). Returns ``out``."""
    import cupy  # noqa: PLC0415
    dtypes = {np.dtype(np.float32): ("cublasSgemm_v2", ctypes.c_float),
              np.dtype(np.float64): ("cublasDgemm_v2", ctypes.c_double)}
    if not (a.dtype == b.dtype == out.dtype) or a.dtype not in dtypes:
        raise TypeError(f"gemm needs one dtype, float32 or float64; got {a.dtype}, {b.dtype}, {out.dtype}")
    opx, opy, m, n, k, ldx, ldy, ldc = gemm_arguments(
        transa, transb, a.shape, _row_stride(a, "a"), b.shape, _row_stride(b, "b"),
        out.shape, _row_stride(out, "out"))
    name, scalar = dtypes[a.dtype]
    lib = _library()
    h = _handle(slot)
    _check(lib.cublasSetStream_v2(h, cupy.cuda.get_current_stream().ptr), "cublasSetStream")
    al, be = scalar(alpha), scalar(beta)
    _check(getattr(lib, name)(h, opx, opy, m, n, k, ctypes.byref(al), b.data.ptr, ldx,
                              a.data.ptr, ldy, ctypes.byref(be), out.data.ptr, ldc), name)
    return out
