"""ipywidgets front end of the views (``widgets.views``), for Jupyter notebooks.

Each widget takes a ``TrainingSession`` (or a single ``Snapshot``), draws PNG frames
into ``ipywidgets.Image`` and, with ``live=True``, follows the session through
``session.subscribe``: updates arrive on the session's dispatcher thread and only set
widget values (``Image.value``, labels), which ipywidgets sends from any thread.
``close()`` (or ``detach()``) unsubscribes; it never touches the run.

Curves are bokeh plots: ``curves(session)`` returns the Panel component of the
dashboard (``pn.extension()`` first in the notebook).
"""
from __future__ import annotations

import abc
import math
import time

import ipywidgets as W
import numpy as np

from widgets.images import to_png
from widgets.views import DistortionExplorer, MixtureView, RBMView, ReconstructionsView, TemplateHistory


def _image(scale_px: int = 280) -> W.Image:
    return W.Image(format="png", width=scale_px)


def _png(frame: np.ndarray, max_px: int = 560) -> bytes:
    scale = max(1, min(8, max_px // max(frame.shape)))
    return to_png(frame, scale=scale)


class LiveWidget(abc.ABC):
    """Base: ``widget`` (the ipywidget), ``update(snapshot)``, ``attach``/``detach``."""

    def __init__(self, source=None, live: bool = True):
        self.session = None
        self._token = None
        self.frames = 0
        self.errors: list[str] = []
        self._build()
        if source is not None and hasattr(source, "subscribe"):
            self.session = source
            if source.snapshot is not None:
                self._safe_update(source.snapshot)
            if live:
                self.attach(source)
        elif source is not None:
            self._safe_update(source)

    @abc.abstractmethod
    def _build(self) -> None:
        """Create the widgets (``self.widget`` and its parts)."""

    @abc.abstractmethod
    def update(self, snapshot) -> None:
        """Redraw from one trainer snapshot."""

    def _safe_update(self, snapshot) -> None:
        try:
            self.update(snapshot)
            self.frames += 1
        except Exception as exc:  # noqa: BLE001  (keep a notebook's other views alive)
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def attach(self, session) -> None:
        self.detach()
        self.session = session
        self._token = session.subscribe(self._safe_update)

    def detach(self) -> None:
        if self.session is not None and self._token is not None:
            self.session.unsubscribe(self._token)
        self._token = None

    close = detach

    def _ipython_display_(self):
        from IPython.display import display  # noqa: PLC0415
        display(self.widget)


class ReconstructionsWidget(LiveWidget):
    """Fig 2.14 live: original | reconstruction | mismatch | each AC's contribution."""

    def _build(self):
        self.view = ReconstructionsView()
        self.image = _image(560)
        self.label = W.HTML()
        self.widget = W.VBox([self.label, self.image])

    def update(self, snapshot):
        if "originals" not in snapshot:
            return
        self.image.value = _png(self.view.frame(snapshot))
        self.label.value = (f"<b>Reconstructions</b> at step {snapshot.step}: original, "
                            "reconstruction, mismatch, AC contributions")


class TemplatesWidget(LiveWidget):
    """Fig 2.15 over training time: records every snapshot's templates; a slider scrubs."""

    def _build(self):
        self.history = TemplateHistory()
        self.image = _image(320)
        self.slider = W.IntSlider(description="frame", min=0, max=0, continuous_update=True)
        self.label = W.HTML()
        self.slider.observe(lambda ch: self._show(ch["new"]), names="value")
        self.widget = W.VBox([self.image, self.slider, self.label])

    def _show(self, index):
        got = self.history.frame(index)
        if got is not None:
            step, frame = got
            self.image.value = _png(frame, 320)
            self.label.value = f"templates at step {step}"

    def update(self, snapshot):
        follow = self.slider.value >= self.slider.max
        self.history.record(snapshot)
        self.slider.max = max(0, len(self.history) - 1)
        if follow:
            self.slider.value = self.slider.max
            self._show(self.slider.max)


class MixtureWidget(LiveWidget):
    """Fig 2.19: each component's reconstruction of a few images; cluster sizes."""

    def _build(self):
        self.view = MixtureView()
        self.image = _image(560)
        self.label = W.HTML()
        self.widget = W.VBox([self.label, self.image])

    def update(self, snapshot):
        out = self.view.compute(snapshot)
        if out is None:
            return
        self.image.value = _png(out["frame"])
        sizes = ", ".join(str(int(s)) for s in out["sizes"])
        self.label.value = f"<b>Mixture</b> at step {snapshot.step}; cluster sizes: {sizes}"


class DistortionExplorerWidget(LiveWidget):
    """Fig 2.18 interactively. Loads the first snapshot (``reload()`` for a newer one)."""

    def __init__(self, source=None, component: int | None = None, image_index: int = 0,
                 mode: str = "image"):
        self.explorer = DistortionExplorer(component, image_index, mode)
        super().__init__(source, live=True)

    def _build(self):
        self.image = _image(280)
        self.original = _image(140)
        self.timing = W.HTML()
        self.sliders: list[W.FloatSlider] = []
        self.box = W.VBox()
        self.reload_button = W.Button(description="Use latest snapshot")
        self.reload_button.on_click(lambda b: self.reload())
        self.component = W.Dropdown(description="CC", options=[("-", 0)])
        self.component.observe(lambda ch: self._select(component=ch["new"]), names="value")
        self.widget = W.HBox([W.VBox([self.component, self.reload_button, self.original]),
                              W.VBox([self.image, self.timing]), self.box])
        self._building = False
        self.render_ms: list[float] = []

    def update(self, snapshot):
        # Follows the session only until it has a model: the sliders then stay put.
        if not self.explorer.ready:
            self._load(snapshot)

    def reload(self):
        if self.session is not None and self.session.snapshot is not None:
            self._load(self.session.snapshot)

    def _load(self, snapshot):
        if not self.explorer.load(snapshot):
            return
        self._building = True
        try:
            self.component.options = [(f"CC {c + 1}", c) for c in range(self.explorer.n_components)]
            self.component.value = self.explorer.component
        finally:
            self._building = False
        self._sliders()

    def _select(self, **kw):
        if self._building or not self.explorer.ready:
            return
        self.explorer.select(**kw)
        self._sliders()

    def _sliders(self):
        sliders = []
        for ctl in self.explorer.controls():
            s = W.FloatSlider(description=ctl.name, min=ctl.low, max=ctl.high, value=ctl.value,
                              step=max(ctl.high - ctl.low, 1e-6) / 200, continuous_update=True,
                              readout_format=".3f")
            s.observe(lambda ch: self.render(), names="value")
            sliders.append(s)
        self.sliders = sliders
        self.box.children = sliders
        self.original.value = _png(self.explorer.original(), 140)
        self.render()

    def render(self):
        t0 = time.perf_counter()
        frame = self.explorer.render([s.value for s in self.sliders])
        ms = 1000 * (time.perf_counter() - t0)
        self.render_ms.append(ms)
        self.image.value = _png(frame, 280)
        self.timing.value = f"decoded in {ms:.1f} ms"


class RBMWidget(LiveWidget):
    """Fantasy particles live, the FPCD fast overlay and its magnitude, the filters."""

    def _build(self):
        self.fantasy = _image(280)
        self.fast = _image(280)
        self.filters = _image(280)
        self.label = W.HTML()
        self.widget = W.VBox([self.label, W.HBox([self.fantasy, self.fast, self.filters])])

    def update(self, snapshot):
        for img, frame in ((self.fantasy, RBMView.fantasy(snapshot)),
                           (self.fast, RBMView.fast_overlay(snapshot)),
                           (self.filters, RBMView.filters(snapshot))):
            if frame is not None:
                img.value = _png(frame, 280)
        mag = RBMView.fast_magnitude(snapshot)
        self.label.value = (f"step {snapshot.step}: fantasy particles | FPCD fast overlay "
                            f"(mean |.| = {mag:.4g}) | filters" if math.isfinite(mag) else
                            f"step {snapshot.step}: fantasy particles | filters")


def curves(session, metrics=None, title: str = "Curves", period_ms: int = 500):
    """A live bokeh plot of ``metrics`` (default: all) as a Panel component."""
    import panel as pn  # noqa: PLC0415

    from widgets.panes import CurvesFigure  # noqa: PLC0415
    select = (lambda n: True) if metrics is None else metrics
    fig = CurvesFigure(title, select, "notebook-curves")
    fig.tick(session.history)
    if pn.state.curdoc is not None:
        pn.state.add_periodic_callback(lambda: fig.tick(session.history), period=period_ms)
    return fig.pane


def session_controls(session) -> W.HBox:
    """Start / Pause / Resume / Step buttons and a status line for a session."""
    status = W.HTML()

    def show(*_):
        st = session.stats()
        status.value = f"{st['name']}: <b>{st['state']}</b>, step {st['step']}"
    buttons = []
    for label, fn in (("Start", session.start), ("Pause", session.pause), ("Resume", session.resume),
                      ("Step", session.step_once)):
        b = W.Button(description=label, layout=W.Layout(width="80px"))
        b.on_click(lambda _b, fn=fn: (fn(), show()))
        buttons.append(b)
    show()
    return W.HBox(buttons + [status])
