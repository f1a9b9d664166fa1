"""The metrics history of a session: one series per metric, appended by the trainer thread.

Metrics need not appear at every step (a held-out likelihood every few hundred steps),
so each metric is its own ``(steps, values)`` series. Viewers read increments with
``since(cursor)``, which is what a bokeh ``ColumnDataSource.stream`` wants.
"""
from __future__ import annotations

import math
import threading
from typing import Mapping

import numpy as np


class MetricsHistory:
    """Thread-safe per-metric series. Non-numeric metric values are skipped."""

    def __init__(self):
        self._lock = threading.Lock()
        self._steps: dict[str, list[int]] = {}
        self._values: dict[str, list[float]] = {}

    def append(self, step: int, metrics: Mapping[str, object]) -> None:
        with self._lock:
            for name, value in metrics.items():
                if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                    continue
                if name not in self._steps:
                    self._steps[name], self._values[name] = [], []
                self._steps[name].append(int(step))
                self._values[name].append(float(value))

    def names(self) -> list[str]:
        with self._lock:
            return list(self._steps)

    def __len__(self) -> int:
        with self._lock:
            return max((len(s) for s in self._steps.values()), default=0)

    def series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` copies of one metric (empty arrays when unknown)."""
        with self._lock:
            return (np.array(self._steps.get(name, ()), dtype=np.int64),
                    np.array(self._values.get(name, ()), dtype=np.float64))

    def last(self, name: str, default: float = math.nan) -> float:
        with self._lock:
            values = self._values.get(name)
            return values[-1] if values else default

    def since(self, cursor: Mapping[str, int] | None, names=None) -> tuple[dict, dict]:
        """New points since ``cursor`` (name -> count already seen).

        Returns ``(new, cursor')`` with ``new[name] = (steps list, values list)`` only for
        metrics that grew; pass ``cursor'`` back next time.
        """
        cursor = dict(cursor or {})
        new = {}
        with self._lock:
            for name in (names if names is not None else list(self._steps)):
                steps = self._steps.get(name)
                if steps is None:
                    continue
                seen = cursor.get(name, 0)
                if len(steps) > seen:
                    new[name] = (steps[seen:], self._values[name][seen:])
                    cursor[name] = len(steps)
        return new, cursor

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{"name/steps": ..., "name/values": ...}`` for a checkpoint (finite points)."""
        with self._lock:
            out = {}
            for name in self._steps:
                safe = name.replace("/", "|")
                steps = np.array(self._steps[name], dtype=np.int64)
                values = np.array(self._values[name], dtype=np.float64)
                keep = np.isfinite(values)  # checkpoints refuse NaN (lab.checkpoint)
                out[f"{safe}/steps"] = steps[keep]
                out[f"{safe}/values"] = values[keep]
            return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "MetricsHistory":
        h = cls()
        for key in arrays:
            if key.endswith("/steps"):
                name = key[:-len("/steps")]
                values = arrays.get(f"{name}/values")
                if values is None:
                    continue
                finite = [(int(s), float(v)) for s, v in zip(arrays[key], values)]
                real = name.replace("|", "/")
                h._steps[real] = [s for s, _ in finite]
                h._values[real] = [v for _, v in finite]
        return h
