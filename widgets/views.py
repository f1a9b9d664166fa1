"""The views, once: what each shows, computed from a ``Snapshot`` (numpy in, numpy out).

Both front ends draw these frames: ``widgets.panel`` (bokeh, the dashboard) and
``widgets.notebook`` (ipywidgets). Nothing here touches a GUI, a thread or the live
trainer: capsule views render through their own ``ModelViewer`` copy of the model,
loaded from the snapshot's parameters (the session and the views observe the data
flow image -> code -> decoder, they never reach into its middle).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from lab.session.viewers import ModelViewer
from widgets.images import as_images, grid, mismatch, normalize, tile

#: Names of the six geometric pose values after the intensities (``lab.capsules.code``).
NICE_NAMES = ("t0", "t1", "s0", "s1", "z", "theta")


def curve_groups(names) -> dict[str, list[str]]:
    """Which metrics share a plot: losses, optimizer rule dominance (fig 2.13), likelihoods."""
    groups: dict[str, list[str]] = {"loss": [], "rules": [], "likelihood": [], "rbm": []}
    for n in names:
        if n.startswith("rule_"):
            groups["rules"].append(n)
        elif n.startswith("loglik"):
            groups["likelihood"].append(n)
        elif n in ("recon_error", "fast_magnitude", "weight_norm"):
            groups["rbm"].append(n)
        elif n in ("loss", "recon_per_pixel", "valid_recon_nodropout", "recon"):
            groups["loss"].append(n)
    return {k: v for k, v in groups.items() if v}


# -- reconstructions (fig 2.14) ---------------------------------------------------------------
class ReconstructionsView:
    """Rows: images; columns: original, reconstruction, mismatch, each AC's contribution."""

    def __init__(self, n_images: int = 8):
        self.n_images = n_images
        self.viewer = ModelViewer()
        self._lock = threading.Lock()   # one private model: one rendering at a time

    def columns(self, snapshot) -> dict[str, np.ndarray]:
        originals = as_images(snapshot["originals"])[:self.n_images]
        model = self.viewer.sync(snapshot)
        contributions = None
        if model is not None and hasattr(model, "contributions"):
            out = model.contributions(originals)
            recon = as_images(out["output"])
            contributions = np.asarray(out["contributions"])
            if contributions.ndim == 5:        # (N, K, M, H, W): multi-channel ACs
                contributions = contributions.mean(axis=2)
        else:
            recon = as_images(snapshot["reconstructions"])[:self.n_images]
        return {"originals": originals, "reconstructions": recon,
                "mismatch": mismatch(originals, recon), "contributions": contributions}

    def frame(self, snapshot) -> np.ndarray:
        return cached_frame(snapshot, f"reconstructions-{self.n_images}", self._frame)

    def _frame(self, snapshot) -> np.ndarray:
        with self._lock:
            cols = self.columns(snapshot)
        rows = []
        for i in range(len(cols["originals"])):
            row = [cols["originals"][i], np.clip(cols["reconstructions"][i], 0, 1), cols["mismatch"][i]]
            if cols["contributions"] is not None:
                row += [np.clip(c, 0, 1) for c in cols["contributions"][i]]
            rows.append(row)
        return grid(rows)


# -- templates over time (fig 2.15) ------------------------------------------------------------
class TemplateHistory:
    """The templates at each snapshot, thinned to at most ``max_frames`` (evenly by step).

    ``record(snapshot)`` is a subscriber callback: attach it with ``session.subscribe``
    and it collects while nobody looks; ``frame(i)`` is the mosaic at frame ``i``.
    """

    def __init__(self, max_frames: int = 200):
        self.max_frames = max_frames
        self._lock = threading.Lock()
        self.steps: list[int] = []
        self.frames: list[np.ndarray] = []

    def record(self, snapshot) -> None:
        if snapshot is None or "templates" not in snapshot:
            return
        with self._lock:
            if self.steps and snapshot.step <= self.steps[-1]:
                if snapshot.step == self.steps[-1]:
                    return
                self.steps.clear()       # a new run in the same slot
                self.frames.clear()
            self.steps.append(int(snapshot.step))
            self.frames.append(tile(snapshot["templates"], per_image=True))
            if len(self.frames) > self.max_frames:
                # resample evenly over the steps seen so far, keeping the first and the newest
                n = len(self.frames)
                keep = sorted(set(np.linspace(0, n - 1, self.max_frames // 2 + 1).round().astype(int)))
                self.steps = [self.steps[k] for k in keep]
                self.frames = [self.frames[k] for k in keep]

    def __len__(self) -> int:
        return len(self.frames)

    def frame(self, index: int = -1) -> tuple[int, np.ndarray] | None:
        with self._lock:
            if not self.frames:
                return None
            index = max(-len(self.frames), min(index, len(self.frames) - 1))
            return self.steps[index], self.frames[index]


# -- mixture (fig 2.19) ----------------------------------------------------------------------
class MixtureView:
    """Every component's reconstruction of the chosen images, and the cluster sizes."""

    def __init__(self, n_images: int = 6):
        self.n_images = n_images
        self.viewer = ModelViewer()
        self._lock = threading.Lock()

    def compute(self, snapshot) -> dict | None:
        with self._lock:
            return self._compute(snapshot)

    def _compute(self, snapshot) -> dict | None:
        model = self.viewer.sync(snapshot)
        if model is None or "view_images" not in snapshot:
            return None
        images = as_images(snapshot["view_images"])
        code = model.encode(images)
        chosen = code.selected()
        C = code.n_components
        sizes = np.bincount(chosen, minlength=C)
        show = images[:self.n_images]
        sub = code[:self.n_images]
        per_component = [as_images(model.decode(sub, component=c)) for c in range(C)]
        own = as_images(model.decode(sub))
        rows = []
        for i in range(len(show)):
            rows.append([show[i], np.clip(own[i], 0, 1)] + [np.clip(p[i], 0, 1) for p in per_component])
        return {"frame": grid(rows), "sizes": sizes, "chosen": chosen[:self.n_images],
                "n_components": C}


# -- the distortion explorer (fig 2.18) ------------------------------------------------------
@dataclass
class Control:
    """One slider: which code value it sets, its range and its starting value."""
    name: str
    group: str            # "distortion" or "pose"
    index: int
    low: float
    high: float
    value: float


class DistortionExplorer:
    """Re-render one composite capsule through the model's own decoder as sliders move.

    ``load(snapshot)`` encodes the snapshot's ``view_images`` with a private model copy
    and measures each distortion variable's spread for the chosen CC; ``controls()`` are
    the sliders (distortions over ±2σ of their observed values, fig 2.18; pose values
    over mean ± 2σ); ``render(values)`` decodes a code with those values.
    ``mode="image"`` starts from image ``image_index``'s code, ``mode="capsule"`` from
    zero distortions and the CC's mean pose.
    """

    def __init__(self, component: int | None = None, image_index: int = 0, mode: str = "image"):
        self.viewer = ModelViewer()
        self.component = component
        self.image_index = image_index
        self.mode = mode
        self.code = None
        self.model = None
        self.step = None
        self._controls: list[Control] = []

    @property
    def ready(self) -> bool:
        return self.model is not None and self.code is not None

    def load(self, snapshot) -> bool:
        """(Re)load from ``snapshot``; False when it carries no model (e.g. an RBM)."""
        model = self.viewer.sync(snapshot)
        if model is None or "view_images" not in snapshot:
            return False
        self.model = model
        self.images = as_images(snapshot["view_images"])
        self.code = model.encode(self.images)
        self.step = snapshot.step
        self._rebuild()
        return True

    @property
    def n_components(self) -> int:
        return 0 if self.code is None else self.code.n_components

    def select(self, component: int | None = None, image_index: int | None = None,
               mode: str | None = None) -> None:
        if component is not None:
            self.component = int(component)
        if image_index is not None:
            self.image_index = int(image_index)
        if mode is not None:
            self.mode = mode
        if self.code is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        code = self.code
        i = min(self.image_index, len(code) - 1)
        if self.component is None or self.component >= code.n_components:
            self.component = int(code.selected()[i])
        c = self.component
        dist = np.asarray(code.distortions)[:, c, :]       # (N, D)
        poses = np.asarray(code.poses)[:, c, :]            # (N, M+6)
        d_sigma = dist.std(axis=0) if len(dist) > 1 else np.ones(dist.shape[1])
        p_mean, p_sigma = poses.mean(axis=0), poses.std(axis=0)
        p_sigma = np.maximum(p_sigma, 0.05)
        d_sigma = np.maximum(d_sigma, 1e-3)
        M = poses.shape[1] - len(NICE_NAMES)
        pose_names = [f"intensity{j + 1}" if M > 1 else "intensity" for j in range(M)] + list(NICE_NAMES)
        start_d = dist[i] if self.mode == "image" else np.zeros(dist.shape[1])
        start_p = poses[i] if self.mode == "image" else p_mean
        controls = []
        for d in range(dist.shape[1]):
            lo, hi = -2 * float(d_sigma[d]), 2 * float(d_sigma[d])
            controls.append(Control(f"distortion {d + 1}", "distortion", d, lo, hi,
                                    float(np.clip(start_d[d], lo, hi))))
        for j, name in enumerate(pose_names):
            lo, hi = float(p_mean[j] - 2 * p_sigma[j]), float(p_mean[j] + 2 * p_sigma[j])
            if j < M:
                lo = max(lo, 0.0)            # intensities are non-negative (softplus)
            controls.append(Control(name, "pose", j, lo, hi, float(np.clip(start_p[j], lo, hi))))
        self._controls = controls

    def controls(self) -> list[Control]:
        return list(self._controls)

    def code_for(self, values) -> object:
        """A one-case code: the chosen CC gets ``values`` (in ``controls()`` order)."""
        i = min(self.image_index, len(self.code) - 1)
        code = self.code[i].copy()
        c = self.component
        mixture = np.zeros_like(code.mixture)
        mixture[0, c] = 1.0
        code.mixture = mixture
        if code.logits is not None:
            code.logits = np.where(mixture > 0, 0.0, -1e4).astype(code.mixture.dtype)
        for ctl, v in zip(self._controls, values):
            if ctl.group == "distortion":
                code.distortions[0, c, ctl.index] = v
            else:
                code.poses[0, c, ctl.index] = v
        return code

    def render(self, values=None) -> np.ndarray:
        """The decoded image (H, W) for slider ``values`` (default: the start values)."""
        if not self.ready:
            raise RuntimeError("DistortionExplorer.load(snapshot) first")
        if values is None:
            values = [c.value for c in self._controls]
        out = self.model.decode(self.code_for(values), component=self.component)
        return np.clip(as_images(out)[0], 0, 1)

    def original(self) -> np.ndarray:
        return self.images[min(self.image_index, len(self.images) - 1)]

    def sweep(self, n_steps: int = 7) -> np.ndarray:
        """Fig 2.18 for the chosen CC: one row per distortion variable, -2σ .. +2σ, others 0."""
        dist = [c for c in self._controls if c.group == "distortion"]
        base = [0.0 if c.group == "distortion" else c.value for c in self._controls]
        rows = []
        for ctl in dist:
            row = []
            for v in np.linspace(ctl.low, ctl.high, n_steps):
                values = list(base)
                values[self._controls.index(ctl)] = float(v)
                row.append(self.render(values))
            rows.append(row)
        return grid(rows) if rows else np.zeros((1, 1), np.float32)


# -- a frame cache shared by all viewers of one snapshot ---------------------------------------
_FRAMES: dict = {}
_FRAMES_LOCK = threading.Lock()
_FRAMES_MAX = 32


def cached_frame(snapshot, key: str, make):
    """``make(snapshot)``, computed once per (snapshot, key) however many viewers ask.

    Ten browser tabs watching one session then cost one rendering per snapshot, not ten
    (part of keeping viewers from slowing the run). Snapshots are immutable, so a frame
    made from one never goes stale.
    """
    ident = (id(snapshot), getattr(snapshot, "version", None), getattr(snapshot, "wall_time", None), key)
    with _FRAMES_LOCK:
        hit = _FRAMES.get(ident)
        if hit is not None and hit[0] is snapshot:
            return hit[1]
    frame = make(snapshot)
    if frame is not None:
        frame.setflags(write=False)
    with _FRAMES_LOCK:
        _FRAMES[ident] = (snapshot, frame)
        while len(_FRAMES) > _FRAMES_MAX:
            _FRAMES.pop(next(iter(_FRAMES)))
    return frame


# -- RBM (chapter 3) -------------------------------------------------------------------------
class RBMView:
    """Fantasy particles, the FPCD fast overlay (and its magnitude), filters."""

    @staticmethod
    def fantasy(snapshot) -> np.ndarray | None:
        if "fantasy" not in snapshot:
            return None
        return cached_frame(snapshot, "rbm-fantasy", lambda s: tile(s["fantasy"]))

    @staticmethod
    def fast_overlay(snapshot) -> np.ndarray | None:
        if "fast_filters" not in snapshot:
            return None

        def make(s):
            f = np.asarray(s["fast_filters"], dtype=np.float32)
            m = float(np.abs(f).max()) or 1.0
            # one shared scale, grey = 0, so the overlay's size over time is visible
            return tile(0.5 + 0.5 * f / m)
        return cached_frame(snapshot, "rbm-fast", make)

    @staticmethod
    def filters(snapshot) -> np.ndarray | None:
        if "filters" not in snapshot:
            return None
        return cached_frame(snapshot, "rbm-filters", lambda s: tile(s["filters"], per_image=True))

    @staticmethod
    def fast_magnitude(snapshot) -> float:
        return float(snapshot.get("fast_magnitude", math.nan))


def image_stats(a) -> float:
    """A scalar fingerprint of an image (tests and the browser check use it)."""
    return float(np.round(normalize(a).sum(), 4))
