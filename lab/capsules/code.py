"""The code layer: what the encoder says about an image, in the decoder's language.

Data flow (CONVENTIONS): image -> encoder -> ``CapsuleCode`` -> decoder -> image.
Every field is a numpy array (``encode`` returns copies, safe to edit for sliders);
``decode`` reads only the *primary* fields, the *derived* ones are there to look at.

Pose layout, everywhere: an iGeoNice pose (thesis fig 2.5) is the last axis
``[intensity_1 .. intensity_M, t0, t1, s0, s1, z, θ]``: M intensities (M = 1 except
for multi-channel ACs, 2.7.1) then the learner-friendly geometry of fig 2.4 read by
``lab.graphics.nice_to_matrix``. Intensities are already non-negative (softplus10 was
applied by the encoder) and are used as they are by ``decode``.

Primary fields
    mixture      (N, C)  the manager's y (C = 1 for a single CC; ones for AC-only)
    poses        (N, C, 1+6) CC-in-world iGeoNice, one per CC; for the AC-only model
                 (fig 2.6): (N, K, M+6) AC-in-world poses
    distortions  (N, C, D) each CC's distortion values (D = 0 for AC-only)
Derived fields (filled by ``encode``/``decode``)
    logits       (N, C)  the manager's x
    ac_poses     (N, K, M+6) AC-in-CC iGeoNice of the selected (blended) CC
    ac_matrices  (N, K, 3, 3) world -> template matrices given to the renderer
    ac_intensities (N, K, M) AC-in-world intensities given to the renderer
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

#: Index of the six geometric values after M intensities: ``pose[..., M:M+6]``.
NICE_NAMES = ("t0", "t1", "s0", "s1", "z", "theta")


@dataclass
class CapsuleCode:
    mixture: np.ndarray
    poses: np.ndarray
    distortions: np.ndarray
    logits: np.ndarray | None = None
    ac_poses: np.ndarray | None = None
    ac_matrices: np.ndarray | None = None
    ac_intensities: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.mixture.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.mixture.shape[1])

    def selected(self) -> np.ndarray:
        """argmax_i y_i per case: the cluster of the 25-label protocol (2.6.6)."""
        return np.argmax(self.mixture, axis=1)

    def __getitem__(self, index) -> "CapsuleCode":
        """Cases ``index`` (a slice, array or int kept as a length-1 batch)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)

        def take(a):
            return None if a is None else np.asarray(a)[index]
        return CapsuleCode(**{f.name: take(getattr(self, f.name)) for f in dataclasses.fields(self)
                              if f.name != "extra"}, extra=dict(self.extra))

    def copy(self) -> "CapsuleCode":
        def cp(a):
            return None if a is None else np.array(a, copy=True)
        return CapsuleCode(**{f.name: cp(getattr(self, f.name)) for f in dataclasses.fields(self)
                              if f.name != "extra"}, extra=dict(self.extra))

    def as_dict(self) -> dict[str, np.ndarray]:
        """The non-empty fields as a dict of arrays (for saving or dashboards)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "extra" and getattr(self, f.name) is not None}
