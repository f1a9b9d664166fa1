"""Private model copies for views: render through the model's own decoder, off a snapshot.

A view that re-renders (the distortion explorer, fig 2.18; the mixture view, fig 2.19;
the AC contributions, fig 2.14) must not call the live model the training thread is
updating. The capsule snapshot carries the parameters (``params``) and how to rebuild
the model (``viewer``); ``ModelViewer.sync(snapshot)`` keeps one private model per
view, reloading the parameters only when a newer snapshot arrives.
"""
from __future__ import annotations

from typing import Any

from lab.session.snapshot import Snapshot


def build_viewer_model(spec: dict) -> Any:
    """A fresh (untrained) model of the kind a snapshot's ``viewer`` entry describes."""
    kind = spec.get("kind")
    if kind == "capsules":
        from lab.capsules.autoencoders import build_model  # noqa: PLC0415
        from lab.capsules.configs import CapsuleConfig  # noqa: PLC0415
        return build_model(CapsuleConfig.from_dict(_thaw(spec["config"])))
    if kind == "fake-capsules":
        from lab.session.fake import FakeCapsuleModel  # noqa: PLC0415
        return FakeCapsuleModel(seed=int(spec.get("seed", 0)), **_thaw(spec.get("model", {})))
    raise ValueError(f"no viewer model for kind {kind!r}")


def _thaw(value):
    """Frozen snapshot data (tuples, read-only arrays) back to plain dicts and lists."""
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


class ModelViewer:
    """``ModelViewer().sync(snapshot) -> model`` (None when the snapshot has no model)."""

    def __init__(self):
        self.model = None
        self.version = -1
        self._spec = None

    def sync(self, snapshot: Snapshot | None):
        if snapshot is None or "params" not in snapshot or "viewer" not in snapshot:
            return self.model
        if snapshot.version == self.version and self.model is not None:
            return self.model
        spec = snapshot["viewer"]
        if self.model is None or spec != self._spec:
            self.model = build_viewer_model(spec)
            self._spec = spec
        self.model.load_state_arrays(snapshot["params"])
        self.version = snapshot.version
        return self.model
