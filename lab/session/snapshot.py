"""Snapshots: what a viewer may see of a running trainer (numpy copies, read-only).

The training thread owns the trainer; every other thread sees it only through the
latest ``Snapshot``, a frozen copy made between two steps (CONVENTIONS, Panel notes).
``freeze`` turns whatever a trainer's ``snapshot()`` returns into plain data: numpy
arrays are *copied* (CuPy arrays come to the host through ``lab.backend.to_numpy``) and
marked read-only, so a viewer can neither see a half-updated parameter nor write one.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from lab.backend import to_numpy


def _is_array(value) -> bool:
    mod = type(value).__module__
    return isinstance(value, np.ndarray) or mod.startswith("cupy")


def freeze(value: Any, where: str = "snapshot") -> Any:
    """A deep, read-only, host-side copy of ``value`` (dicts, lists, arrays, scalars).

    Autodiff tensors (``.data`` plus ``.grad``) are copied through their data; dataclasses
    such as ``CapsuleCode`` become dicts of their non-empty fields. Anything else (a live
    model, a lock) raises ``TypeError`` naming where: a snapshot holds data, not objects.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if type(value).__name__ == "Tensor" and hasattr(value, "grad") and hasattr(value, "data"):
        value = value.data
    if _is_array(value):
        a = np.array(to_numpy(value), copy=True)
        if a.dtype == object:
            raise TypeError(f"{where}: object arrays are not snapshot data")
        a.setflags(write=False)
        return a
    if isinstance(value, Mapping):
        return {str(k): freeze(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: freeze(getattr(value, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(value) if getattr(value, f.name) is not None}
    raise TypeError(f"{where}: {type(value).__name__} is not snapshot data (give numpy "
                    "arrays, numbers, strings, dicts or lists)")


def nbytes(value: Any) -> int:
    """Total bytes of the arrays inside a frozen value (for memory checks)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, tuple):
        return sum(nbytes(v) for v in value)
    return 0


@dataclass(frozen=True)
class Snapshot:
    """One published view of a session.

    ``version`` increases by one per publication (viewers redraw when it changes),
    ``step`` is the number of training steps done when it was taken, ``state`` the
    session state then, ``metrics`` the last step's metrics and ``data`` the frozen
    result of the trainer's ``snapshot()``. ``snapshot["templates"]`` reads ``data``.
    """

    version: int
    step: int
    state: str
    metrics: Mapping[str, float]
    data: Mapping[str, Any]
    kind: str = "unknown"
    wall_time: float = field(default_factory=time.time)
    elapsed: float = 0.0

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def metric(self, name: str, default: float = math.nan) -> float:
        value = self.metrics.get(name, default)
        return float(value) if isinstance(value, (int, float)) else default
