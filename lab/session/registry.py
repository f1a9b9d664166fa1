"""Trainer kinds by name, so a checkpoint can be re-opened without knowing its class.

``register_trainer(kind, factory)`` where ``factory(metadata) -> trainer`` rebuilds an
untrained trainer from the ``metadata`` dict it published; the session then loads the
checkpoint's state into it. Built in: ``fake`` (tests), ``rbm`` and ``capsules``.
"""
from __future__ import annotations

from typing import Any, Callable

_FACTORIES: dict[str, Callable[[dict], Any]] = {}


def register_trainer(kind: str, factory: Callable[[dict], Any]) -> None:
    _FACTORIES[str(kind)] = factory


def _builtin(kind: str):
    if kind == "fake":
        from lab.session.fake import FakeTrainer  # noqa: PLC0415
        return FakeTrainer.from_metadata
    if kind == "fake-capsules":
        from lab.session.fake import FakeCapsuleTrainer  # noqa: PLC0415
        return FakeCapsuleTrainer.from_metadata
    if kind == "rbm":
        from lab.session.adapters import RBMSessionTrainer  # noqa: PLC0415
        return RBMSessionTrainer.from_metadata
    if kind in ("capsules", "capsule-trainer"):
        from lab.session.adapters import CapsuleSessionTrainer  # noqa: PLC0415
        return CapsuleSessionTrainer.from_metadata
    return None


def trainer_factory(kind: str | None) -> Callable[[dict], Any] | None:
    if kind is None:
        return None
    return _FACTORIES.get(kind) or _builtin(kind)


def build_trainer(kind: str | None, metadata: dict) -> Any | None:
    """A fresh trainer of ``kind`` from ``metadata``, or None for an unknown kind."""
    factory = trainer_factory(kind)
    return None if factory is None else factory(dict(metadata))
