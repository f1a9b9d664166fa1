"""Hand-written CUDA kernels for the GPU path (thesis 2.5.2: rendering dominates the
compute time, so the thesis wrote its own kernels; so do we).

The kernel sources are plain ``.cu`` files in ``lab/gpu/kernels/`` (``extern "C"``
entry points, no system headers), so that ``nvcc`` can check them on a machine without
a GPU (``tests/test_gpu_kernels.py``) and CuPy compiles exactly the same text with NVRTC
at first use (:func:`module`). Local ``#include "x.cuh"`` lines are inlined here, so the
compiled text (CuPy's cache key) changes whenever any included file changes.

Modules:

``lab.gpu.render``      the ACR op's forward/backward kernels and a fused
                        render -> maxSemiSoft -> squared-error kernel (loss and gradients)
``lab.gpu.philox``      Philox4x32-10, the counter-based RNG used inside the kernels, with
                        its numpy reference (same bits)
``lab.undirected.gpu_update``  PCD/FPCD updates, exact log Z, AIS on CuPy
``lab.optim.conservative_gpu``  the conservative optimizer's step (``optim.cu``)
``lab.graphics.ntm``    NTM forward/backward on the GPU (``ntm.cu``)
``lab.gpu.cublas``      cuBLAS products that a CUDA graph can record

Nothing here imports CuPy at import time: the CPU path never needs it.

Status: every kernel compiles with ``nvcc`` and has its arithmetic checked on the host
in the CPU test suite; on a device (an H100, 2026-11-27) ``benchmarks/gpu_check.py``
checked all of them against the CPU path and timed them beside PyTorch
(``benchmarks/results/gpu_h100.json``), and the ``gpu``-marked tests passed.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"

#: Every kernel source file that CuPy compiles (headers are inlined into these).
KERNEL_FILES = ("render.cu", "rbm.cu", "logz.cu", "optim.cu", "ntm.cu")

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


def source(name: str) -> str:
    """The text of ``kernels/name`` with its local ``#include "..."`` lines inlined (once each)."""
    seen: set[str] = set()

    def expand(fname: str) -> str:
        if fname in seen:
            return ""
        seen.add(fname)
        text = (KERNEL_DIR / fname).read_text()
        text = text.replace("#pragma once", "")
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(name)


#: NVRTC options: C++17 (CuPy's default since v14, given explicitly for older CuPy) and
#: no fast math (the kernels rely on IEEE division and accurate exp/log).
NVRTC_OPTIONS = ("-std=c++17",)


@lru_cache(maxsize=None)
def module(name: str):
    """The compiled ``cupy.RawModule`` of ``kernels/name`` (compiled on first use)."""
    import cupy  # noqa: PLC0415  (GPU path only)
    return cupy.RawModule(code=source(name), options=NVRTC_OPTIONS)


def kernel(name: str, function: str):
    """One ``extern "C"`` kernel of ``kernels/name`` as a ``cupy.RawKernel``."""
    return module(name).get_function(function)


def suffix(dtype) -> str:
    """The kernel-name suffix for an array dtype: ``f32`` or ``f64``."""
    import numpy as np  # noqa: PLC0415
    dt = np.dtype(dtype)
    if dt == np.float32:
        return "f32"
    if dt == np.float64:
        return "f64"
    raise TypeError(f"GPU kernels take float32 or float64, got {dt}")


def sm_count() -> int:
    """Streaming multiprocessors of the current device (grid sizes)."""
    import cupy  # noqa: PLC0415
    return int(cupy.cuda.Device().attributes["MultiProcessorCount"])
