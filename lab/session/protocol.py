"""The trainer protocol a ``TrainingSession`` runs (capsule autoencoder, RBM, a test fake).

Five members, all called by the session with the trainer lock held, so a trainer
need not be thread-safe itself:

``step() -> Mapping[str, float]``
    One update (a minibatch); numeric metrics (others are ignored by the history).
``snapshot() -> Mapping[str, Any]``
    What views need: numpy/CuPy arrays, numbers, strings, dicts, lists. The session
    freezes it (host copies, read-only). It must not draw from the training random
    stream: a viewer's presence may never change the run.
``state_dict() -> (arrays, meta)``
    Everything a bit-exact resume needs: flat ``"a/b"`` named arrays and a JSON-able
    meta dict (``lab.checkpoint`` format). A single nested dict is accepted as well.
``load_state_dict(arrays, meta)``
    The inverse (called with one dict when ``state_dict`` returned one).
``metadata`` (optional attribute)
    A JSON-able dict with at least ``kind`` (the registry name that rebuilds the
    trainer from this dict, see ``lab.session.registry``), e.g. its config and seed.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable


@runtime_checkable
class Trainer(Protocol):
    def step(self) -> Mapping[str, float]: ...

    def snapshot(self) -> Mapping[str, Any]: ...

    def state_dict(self) -> Any: ...

    def load_state_dict(self, *state) -> None: ...
