"""CPU kernels compiled by numba, loaded on first use; without numba, callers use numpy.

Two modules compile kernels here: ``binary_products`` (products with binary states as
row sums) and ``logistic`` (the sigmoid with a vectorized exp). numba is a dependency,
but the estimators work without it: :func:`kernels` then returns ``None`` and each
caller takes its numpy path (tests set :data:`NUMBA` to ``False`` to check that path).
"""
from __future__ import annotations

import threading

#: ``None``: not looked for yet; ``False``: missing; else the numba module.
NUMBA = None

_BUILT: dict = {}
_LOCK = threading.Lock()


def numba_module():
    """numba, or ``False`` when it cannot be imported."""
    global NUMBA
    if NUMBA is None:
        try:
            import numba  # noqa: PLC0415 (optional at run time)
        except ImportError:
            NUMBA = False
        else:
            NUMBA = numba
    return NUMBA


def kernels(build):
    """``build(numba)``, a dict of compiled kernels, built once per process (numba also
    caches the machine code on disk); ``None`` without numba."""
    numba = numba_module()
    if not numba:
        return None
    with _LOCK:                                  # worker threads may ask at once
        if build not in _BUILT:
            _BUILT[build] = build(numba)
        return _BUILT[build]
