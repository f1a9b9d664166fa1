"""What every optimizer here shares: named parameters, per-group overrides, state I/O.

The trainer talks to all optimizers through this one interface (``step``,
``zero_grad``, ``state_dict``/``load_state_dict``, ``scale_step_sizes``,
``last_rule_fractions``), so the conservative optimizer of thesis 2.5.3 and the
Adam/SGD baselines can be swapped by a config string.
"""
from __future__ import annotations

import abc
import fnmatch
import inspect
from typing import Any, Iterable, Mapping

import numpy as np

from lab.autodiff.tensor import Tensor
from lab.backend import get_array_module, to_numpy

#: state_dict keys of per-parameter arrays look like ``"state/<param name>/<slot>"``.
STATE_PREFIX = "state/"


def named_parameters(params) -> dict[str, Any]:
    """``{name: Tensor}`` from a dict (names kept) or an iterable (names ``"0"``, ``"1"``...).

    Names matter: they key the optimizer state in checkpoints, select per-group
    overrides and label the rule-dominance fractions of fig 2.13.
    """
    if isinstance(params, Mapping):
        out = {str(k): v for k, v in params.items()}
    else:
        out = {str(i): p for i, p in enumerate(params)}
    if not out:
        raise ValueError("optimizer got an empty parameter list")
    for name, p in out.items():
        if not hasattr(p, "data") or not hasattr(p, "grad"):
            raise TypeError(f"parameter {name!r} is a {type(p).__name__}, expected a Tensor "
                            "(an object with .data and .grad)")
    return out


def default_group(name: str) -> str:
    """The group a parameter name belongs to for per-group statistics: its first path part.

    ``"encoder/h1/W"`` -> ``"encoder"``; ``"templates"`` -> ``"templates"``.
    """
    for sep in ("/", "."):
        if sep in name:
            return name.split(sep, 1)[0]
    return name


class Optimizer(abc.ABC):
    """Base class: subclasses define ``_hyper_keys``, ``_init_slots`` and ``_update``.

    ``overrides`` maps fnmatch patterns on parameter names to hyperparameter dicts,
    e.g. ``{"decoder/templates*": {"alphas": (...)}}``; the first matching pattern
    (in dict order) wins, unmatched parameters use the constructor's values.
    """

    _hyper_keys: tuple[str, ...] = ()

    def __init__(self, params, overrides: Mapping[str, Mapping[str, Any]] | None = None):
        self.params = named_parameters(params)
        self.overrides = {str(k): dict(v) for k, v in (overrides or {}).items()}
        for pattern, hyper in self.overrides.items():
            unknown = set(hyper) - set(self._hyper_keys)
            if unknown:
                raise ValueError(f"override {pattern!r} sets unknown hyperparameters "
                                 f"{sorted(unknown)}; allowed: {list(self._hyper_keys)}")
        self.step_count = 0
        #: Multiplier on all step sizes, cut by ``scale_step_sizes`` after a NaN rollback.
        self.step_scale = 1.0
        self.state: dict[str, dict[str, Any]] = {name: {} for name in self.params}
        self._last_counts: dict[str, np.ndarray] = {}
        #: The step whose rule counts ``last_rule_fractions`` reports (None: none yet).
        self.rules_step: int | None = None

    # -- hyperparameters ----------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (sklearn style) so a dashboard can build its controls."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters
                if k not in ("self", "params") and hasattr(self, k)}

    def hyper_for(self, name: str) -> dict[str, Any]:
        """The hyperparameters in force for parameter ``name`` (defaults + its override)."""
        hyper = {k: getattr(self, k) for k in self._hyper_keys}
        for pattern, over in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                hyper.update(over)
                break
        return hyper

    def scale_step_sizes(self, factor: float) -> None:
        """Multiply every step size by ``factor`` (the trainer's cut after a NaN rollback).

        The scale is part of ``state_dict``: after a rollback, call this *after*
        ``load_state_dict`` or the restored state brings the old scale back.
        """
        factor = float(factor)
        if not (factor > 0 and np.isfinite(factor)):
            raise ValueError(f"step size factor must be positive and finite, got {factor}")
        self.step_scale *= factor

    # -- the training loop ----------------------------------------------------------
    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a ``.grad`` (in place: ``p.data`` keeps its identity)."""
        self.step_count += 1
        counts = {}
        for name, p in self.params.items():
            g = p.grad
            if g is None:
                continue
            if isinstance(g, Tensor):
                g = g.data
            if g.shape != p.data.shape:
                raise ValueError(f"gradient of {name!r} has shape {g.shape}, parameter {p.data.shape}")
            slots = self.state[name]
            if not slots:
                slots.update(self._init_slots(p.data))
            c = self._update(name, p.data, g, slots, self.hyper_for(name))
            if c is not None:
                counts[name] = c
        if counts:
            # One device->host transfer per step, not one per parameter.
            names = list(counts)
            xp = get_array_module(counts[names[0]])
            stacked = to_numpy(xp.stack([counts[n] for n in names]))
            self._last_counts = {n: stacked[i].astype(np.int64) for i, n in enumerate(names)}
            self.rules_step = self.step_count

    @abc.abstractmethod
    def _init_slots(self, data) -> dict[str, Any]:
        ...

    @abc.abstractmethod
    def _update(self, name, data, g, slots, hyper):
        ...

    # -- rule statistics (only the conservative optimizer has rules) ----------------
    rule_names: tuple[str, ...] = ()

    @property
    def last_rule_fractions(self) -> dict[str, float]:
        """Fraction of parameter elements each rule decided in the last counted step
        (``rules_step``; {} for optimizers without rules or before the first count)."""
        return self.rule_fractions()

    def rule_fractions(self, by=None) -> dict:
        """Rule fractions of the last step, overall (``by=None``) or per group.

        ``by="param"`` gives one dict per parameter name, ``by="group"`` groups names by
        ``default_group``, and a callable maps each name to its group.
        """
        if not self.rule_names or not self._last_counts:
            return {}
        if by is None:
            total = sum(self._last_counts.values())
            return _fractions(self.rule_names, total)
        key = {"param": lambda n: n, "group": default_group}.get(by, by)
        if not callable(key):
            raise ValueError(f"by must be None, 'param', 'group' or a callable, got {by!r}")
        groups: dict[str, np.ndarray] = {}
        for name, c in self._last_counts.items():
            k = key(name)
            groups[k] = groups[k] + c if k in groups else c.copy()
        return {k: _fractions(self.rule_names, c) for k, c in groups.items()}

    # -- checkpoints ------------------------------------------------------------------
    def _scalars(self) -> dict[str, Any]:
        return {}

    def state_dict(self, to_host: bool = True) -> dict[str, Any]:
        """numpy arrays under ``state/<param>/<slot>`` plus JSON-able scalars.

        ``lab.checkpoint.split_arrays`` separates the two for ``save_checkpoint``.
        ``to_host=False`` keeps copies on the arrays' device (an in-memory good state on
        the GPU, restored by ``load_state_dict`` without a host round trip).
        """
        d: dict[str, Any] = {"type": type(self).__name__, "step_count": int(self.step_count),
                             "step_scale": float(self.step_scale)}
        d.update(self._scalars())
        for name, slots in self.state.items():
            for slot, value in slots.items():
                key = f"{STATE_PREFIX}{name}/{slot}"
                if hasattr(value, "shape"):
                    value = to_numpy(value).copy() if to_host else value.copy()
                d[key] = value
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output; arrays go to the device of each parameter."""
        kind = d.get("type")
        if kind is not None and kind != type(self).__name__:
            raise ValueError(f"state_dict is for {kind}, not {type(self).__name__}")
        self.step_count = int(d.get("step_count", 0))
        self.step_scale = float(d.get("step_scale", 1.0))
        self._load_scalars(d)
        state: dict[str, dict[str, Any]] = {name: {} for name in self.params}
        for key, value in d.items():
            if not key.startswith(STATE_PREFIX):
                continue
            name, slot = key[len(STATE_PREFIX):].rsplit("/", 1)
            if name not in self.params:
                raise KeyError(f"optimizer state for unknown parameter {name!r}")
            data = self.params[name].data
            if hasattr(value, "shape"):
                xp = get_array_module(data)
                value = xp.array(value)  # a copy: the caller's dict stays untouched
                if value.shape != data.shape and slot in self._array_slots:
                    raise ValueError(f"state {key!r} has shape {value.shape}, "
                                     f"parameter has {data.shape}")
            state[name][slot] = value
        self.state = state
        self._last_counts = {}

    _array_slots: tuple[str, ...] = ()

    def _load_scalars(self, d: Mapping[str, Any]) -> None:
        pass


def _fractions(names: Iterable[str], counts: np.ndarray) -> dict[str, float]:
    total = int(counts.sum())
    return {n: (float(c) / total if total else 0.0) for n, c in zip(names, counts)}
