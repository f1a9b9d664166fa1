"""Training sessions: any trainer in a daemon thread, watched live by any number of views.

* ``TrainingSession(trainer, snapshot_every=..., checkpoint_dir=..., checkpoint_every_minutes=...)``:
  start / pause / resume / stop / step_once, ``snapshot`` (frozen numpy copies),
  ``subscribe(callback)``, ``history``, ``checkpoint()``, ``TrainingSession.attach(path)``.
* ``Trainer``: the protocol (``step``, ``snapshot``, ``state_dict``, ``load_state_dict``,
  ``metadata``), see ``lab.session.protocol``.
* Adapters: ``CapsuleSessionTrainer`` (chapter 2), ``RBMSessionTrainer`` (chapter 3);
  ``FakeTrainer`` / ``FakeCapsuleTrainer`` for tests.
* ``ModelViewer``: a view's private copy of the model, loaded from snapshots.
"""
from lab.session.history import MetricsHistory
from lab.session.protocol import Trainer
from lab.session.registry import build_trainer, register_trainer
from lab.session.session import ReadOnlySessionError, TrainingSession
from lab.session.snapshot import Snapshot, freeze
from lab.session.viewers import ModelViewer


def __getattr__(name):
    # Adapters and fakes import their (heavier, optional) dependencies only when used.
    if name in ("CapsuleSessionTrainer", "RBMSessionTrainer", "capsules_available", "rbm_available"):
        from lab.session import adapters  # noqa: PLC0415
        return getattr(adapters, name)
    if name in ("FakeTrainer", "FakeCapsuleTrainer", "FakeCapsuleModel"):
        from lab.session import fake  # noqa: PLC0415
        return getattr(fake, name)
    raise AttributeError(f"module 'lab.session' has no attribute {name!r}")


__all__ = ["CapsuleSessionTrainer", "FakeCapsuleModel", "FakeCapsuleTrainer", "FakeTrainer",
           "MetricsHistory", "ModelViewer", "RBMSessionTrainer", "ReadOnlySessionError", "Snapshot",
           "Trainer", "TrainingSession", "build_trainer", "capsules_available", "freeze",
           "rbm_available", "register_trainer"]
