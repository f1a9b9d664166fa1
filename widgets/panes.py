"""Panel/bokeh front end of the views (``widgets.views``): the dashboard's components.

Threading rule (CONVENTIONS, Panel notes): bokeh models belong to their document and
are only touched on its thread. Every component here has a ``tick()`` that reads the
session's latest snapshot and history and updates its bokeh models; the app calls all
ticks from one ``pn.state.add_periodic_callback`` per browser session and stops it in
``pn.state.on_session_destroyed``. Training threads never touch a bokeh model.

Images are ``image`` glyphs whose ``source.data`` is replaced by float32 arrays (sent
binary); curves are ``ColumnDataSource.stream(new, rollover=N)``.
"""
from __future__ import annotations

import math
import time

import numpy as np
import panel as pn
from bokeh.core.validation import silence
from bokeh.core.validation.warnings import MISSING_RENDERERS
from bokeh.models import ColumnDataSource, LinearColorMapper
from bokeh.palettes import Category10_10, Greys256
from bokeh.plotting import figure

from widgets.views import (DistortionExplorer, MixtureView, RBMView, ReconstructionsView,
                           TemplateHistory)

ROLLOVER = 5000


def labelled(cls, text: str, **kwargs):
    """A Panel widget labelled ``text``: ``label`` where Panel has it (``name`` is deprecated
    there), ``name`` on older Panel; likewise ``color`` for ``button_type``."""
    key = "label" if "label" in cls.param else "name"
    if "button_type" in kwargs and "color" in cls.param:
        kwargs["color"] = kwargs.pop("button_type")
    return cls(**{key: text}, **kwargs)


def button(text: str, **kwargs) -> pn.widgets.Button:
    return labelled(pn.widgets.Button, text, **kwargs)

# Curves get their lines when their metric first appears; an empty plot is expected.
silence(MISSING_RENDERERS, True)


class ImageFigure:
    """A greyscale image (0 black .. 1 white) in a bokeh figure; ``update`` on the doc thread."""

    def __init__(self, title: str, name: str, width: int = 300, height: int = 300):
        self.name = name
        self.shape = (1, 1)
        self.source = ColumnDataSource(
            {"image": [np.zeros((1, 1), np.float32)], "x": [0], "y": [0], "dw": [1], "dh": [1]},
            name=f"{name}-source")
        fig = figure(title=title, width=width, height=height, x_range=(0, 1), y_range=(0, 1),
                     tools="", toolbar_location=None, name=name, match_aspect=True,
                     css_classes=[name])
        fig.image(image="image", x="x", y="y", dw="dw", dh="dh", source=self.source,
                  color_mapper=LinearColorMapper(palette=Greys256, low=0, high=1))
        fig.axis.visible = False
        fig.grid.visible = False
        fig.min_border = 2
        self.figure = fig
        self.pane = pn.pane.Bokeh(fig)
        self.updates = 0

    def update(self, image) -> None:
        a = np.ascontiguousarray(np.flipud(np.asarray(image, dtype=np.float32)))
        h, w = a.shape
        if (h, w) != self.shape:
            self.shape = (h, w)
            self.figure.x_range.start, self.figure.x_range.end = 0, w
            self.figure.y_range.start, self.figure.y_range.end = 0, h
        self.source.data = {"image": [a], "x": [0], "y": [0], "dw": [w], "dh": [h]}
        self.updates += 1


class CurvesFigure:
    """Streaming line plots of chosen metrics from a session's history."""

    def __init__(self, title: str, select, name: str, width: int = 420, height: int = 220,
                 y_label: str = "", rollover: int = ROLLOVER):
        self.select = select if callable(select) else (lambda n, names=tuple(select): n in names)
        self.rollover = rollover
        self.figure = figure(title=title, width=width, height=height, name=name,
                             tools="pan,wheel_zoom,box_zoom,reset", toolbar_location="right",
                             x_axis_label="step", y_axis_label=y_label, css_classes=[name])
        self.figure.min_border = 4
        self.sources: dict[str, ColumnDataSource] = {}
        self.cursor: dict[str, int] = {}
        self.history = None
        self.pane = pn.pane.Bokeh(self.figure)

    def _source(self, metric: str) -> ColumnDataSource:
        src = self.sources.get(metric)
        if src is None:
            src = ColumnDataSource({"step": [], "value": []}, name=f"curve-{metric}")
            color = Category10_10[len(self.sources) % 10]
            self.figure.line("step", "value", source=src, color=color, legend_label=metric,
                             line_width=1.5)
            # sparse series (a held-out score every few hundred steps) need visible points
            self.figure.scatter("step", "value", source=src, color=color, legend_label=metric, size=3)
            self.figure.legend.location = "top_right"
            self.figure.legend.label_text_font_size = "8pt"
            self.sources[metric] = src
        return src

    def tick(self, history) -> None:
        if history is not self.history:          # a new session in this slot: start over
            self.history = history
            self.cursor = {}
            for src in self.sources.values():
                src.data = {"step": [], "value": []}
        names = [n for n in history.names() if self.select(n)]
        new, self.cursor = history.since(self.cursor, names)
        for metric, (steps, values) in new.items():
            values = [v if math.isfinite(v) else float("nan") for v in values]
            self._source(metric).stream({"step": list(steps), "value": values}, rollover=self.rollover)


# -- the session's controls -------------------------------------------------------------------
class SessionControls:
    """Start / pause / resume / step / save checkpoint for the session in a ``SessionSlot``."""

    def __init__(self, slot, prefix: str):
        self.slot = slot
        self.prefix = prefix
        self.status = pn.pane.Markdown("", css_classes=[f"{prefix}-status"], width=520)
        self.start = button("Start", button_type="success", width=80,
                                       css_classes=[f"{prefix}-start"])
        self.pause = button("Pause", button_type="warning", width=80,
                                       css_classes=[f"{prefix}-pause"])
        self.resume = button("Resume", button_type="primary", width=80,
                                        css_classes=[f"{prefix}-resume"])
        self.step = button("Step", width=70, css_classes=[f"{prefix}-step"])
        self.save = button("Save checkpoint", width=130, css_classes=[f"{prefix}-save"])
        self.message = pn.pane.Markdown("", css_classes=[f"{prefix}-message"], width=520)
        self.start.on_click(lambda e: self._do("start"))
        self.pause.on_click(lambda e: self._do("pause"))
        self.resume.on_click(lambda e: self._do("resume"))
        self.step.on_click(lambda e: self._do("step_once"))
        self.save.on_click(lambda e: self._do("checkpoint"))
        self.view = pn.Column(pn.Row(self.start, self.pause, self.resume, self.step, self.save),
                              self.status, self.message)

    def _do(self, what: str) -> None:
        session = self.slot.session
        if session is None:
            return
        try:
            if what == "checkpoint":
                path = self.slot.save_checkpoint()
                self.message.object = f"saved `{path}`"
            elif what == "pause":
                session.pause(wait=False)
            else:
                getattr(session, what)()
                self.message.object = ""
        except Exception as exc:  # noqa: BLE001  (show it, keep the dashboard alive)
            self.message.object = f"**{what} failed**: {exc}"
        self.tick()

    def tick(self) -> None:
        session = self.slot.session
        if session is None:
            self.status.object = f"**{self.slot.title}**: {self.slot.note or 'no session'}"
            return
        st = session.stats()
        rate = st["steps_per_second"]
        rate = f"{rate:.1f} steps/s" if isinstance(rate, float) and math.isfinite(rate) else ""
        shown = "pausing" if st["state"] == "paused" and st["busy"] else st["state"]
        text = (f"**{self.slot.title}** `{session.name}` - state: **{shown}** - "
                f"step <span class='step-count'>{st['step']}</span> - {rate} - "
                f"snapshot v{st['snapshot_version']}")
        if st["error"]:
            text += f"\n\n**error**: `{st['error'].strip().splitlines()[-1]}`"
        if text != self.status.object:
            self.status.object = text
        running = st["state"] == "running"
        self.pause.disabled = not running
        self.resume.disabled = st["state"] != "paused"
        self.start.disabled = running or session.read_only
        self.step.disabled = session.read_only or st["state"] == "failed"
        self.save.disabled = session.read_only


# -- capsule views ----------------------------------------------------------------------------
class ReconstructionsPanel:
    """Fig 2.14, live: original | reconstruction | mismatch | AC 1 .. AC K."""

    def __init__(self, slot):
        self.slot = slot
        self.view = ReconstructionsView()
        self.image = ImageFigure("Reconstructions: original, reconstruction, mismatch, AC contributions",
                                 "reconstructions", width=620, height=420)
        self.version = None
        self.pane = self.image.pane

    def tick(self) -> None:
        snap = self.slot.snapshot()
        if snap is None or snap is self.version or "originals" not in snap:
            return
        self.version = snap             # the snapshot itself: a new session restarts versions
        self.image.update(self.view.frame(snap))


class TemplatesPanel:
    """Fig 2.15 over training time: the recorded templates, a slider to scrub back."""

    def __init__(self, slot):
        self.slot = slot
        self.image = ImageFigure("Templates", "templates", width=320, height=260)
        self.slider = labelled(pn.widgets.IntSlider, "frame (drag to go back in time)", start=0, end=1,
                                           value=0, width=300, css_classes=["template-slider"])
        self.follow = labelled(pn.widgets.Checkbox, "follow the newest", value=True)
        self.label = pn.pane.Markdown("", width=300)
        self.slider.param.watch(self._scrub, "value")
        self.pane = pn.Column(self.image.pane, self.slider, self.follow, self.label)
        self._n = -1

    def _history(self) -> TemplateHistory | None:
        return self.slot.templates

    def _show(self, index: int) -> None:
        hist = self._history()
        got = hist.frame(index) if hist is not None else None
        if got is not None:
            step, frame = got
            self.image.update(frame)
            self.label.object = f"step {step} (frame {index + 1} of {len(hist)})"

    def _scrub(self, event) -> None:
        if event.obj is self.slider and not self._ticking:
            self.follow.value = event.new >= self.slider.end
            self._show(int(event.new))

    _ticking = False

    def tick(self) -> None:
        hist = self._history()
        if hist is None or len(hist) == self._n:
            return
        self._n = len(hist)
        self._ticking = True
        try:
            self.slider.end = max(1, self._n - 1)
            if self.follow.value:
                self.slider.value = self._n - 1
                self._show(self._n - 1)
            else:
                self._show(min(self.slider.value, self._n - 1))
        finally:
            self._ticking = False


class MixturePanel:
    """Fig 2.19: each component's reconstruction of a few images; cluster sizes."""

    def __init__(self, slot, every_seconds: float = 5.0):
        self.slot = slot
        self.view = MixtureView()
        self.image = ImageFigure("Mixture: original, chosen, component 1 .. C", "mixture",
                                 width=620, height=260)
        self.sizes = ColumnDataSource({"component": [], "count": []}, name="cluster-sizes")
        fig = figure(title="Cluster sizes (held-out images)", width=620, height=180, tools="",
                     toolbar_location=None, x_axis_label="component")
        fig.vbar(x="component", top="count", width=0.8, source=self.sizes)
        self.every = every_seconds
        self.last = -math.inf
        self.version = None
        self.pane = pn.Column(self.image.pane, pn.pane.Bokeh(fig))

    def tick(self) -> None:
        snap = self.slot.snapshot()
        if snap is None or snap is self.version or time.monotonic() - self.last < self.every:
            return
        out = self.view.compute(snap)
        self.version, self.last = snap, time.monotonic()
        if out is None:
            return
        self.image.update(out["frame"])
        self.sizes.data = {"component": list(range(1, out["n_components"] + 1)),
                           "count": [int(c) for c in out["sizes"]]}


class ExplorerPanel:
    """Fig 2.18 interactively: one slider per distortion variable (±2σ) and per pose value.

    The explorer works on the snapshot it was loaded from (``Use latest snapshot``
    reloads), so training goes on underneath without the sliders jumping.
    """

    def __init__(self, slot):
        self.slot = slot
        self.explorer = DistortionExplorer()
        self.image = ImageFigure("Rendered by the decoder", "explorer", width=300, height=300)
        self.original = ImageFigure("Image", "explorer-original", width=150, height=150)
        self.component = labelled(pn.widgets.Select, "composite capsule", options={"-": 0}, width=160)
        self.image_index = labelled(pn.widgets.IntSlider, "image", start=0, end=63, value=0, width=160)
        self.mode = pn.widgets.RadioButtonGroup(options=["image", "capsule"], value="image", width=160)
        self.reload = button("Use latest snapshot", width=160,
                                        css_classes=["explorer-reload"])
        self.timing = pn.pane.Markdown("", css_classes=["explorer-timing"], width=300)
        self.note = pn.pane.Markdown("waiting for the first snapshot...", width=300)
        self.sliders_box = pn.Column(width=330)
        self.sliders: list = []
        self.reload.on_click(lambda e: self.load())
        self.component.param.watch(lambda e: self._select(component=e.new), "value")
        self.image_index.param.watch(lambda e: self._select(image_index=e.new), "value")
        self.mode.param.watch(lambda e: self._select(mode=e.new), "value")
        self.render_ms: list[float] = []
        self.pane = pn.Row(
            pn.Column(self.note, self.component, self.image_index, self.mode, self.reload,
                      self.original.pane),
            pn.Column(self.image.pane, self.timing),
            self.sliders_box)
        self._loaded_session = None
        self._building = False

    def load(self) -> None:
        snap = self.slot.snapshot()
        if snap is None:
            return
        if not self.explorer.load(snap):
            self.note.object = "this session has no decoder to explore"
            return
        self._loaded_session = self.slot.session
        self.note.object = f"model at step {snap.step}"
        self._building = True
        try:
            C = self.explorer.n_components
            self.component.options = {f"CC {c + 1}": c for c in range(C)}
            self.component.value = self.explorer.component
            self.image_index.end = max(1, len(self.explorer.images) - 1)
        finally:
            self._building = False
        self._build_sliders()

    def _select(self, **kw) -> None:
        if self._building or not self.explorer.ready:
            return
        self.explorer.select(**kw)
        self._build_sliders()

    def _build_sliders(self) -> None:
        sliders = []
        for ctl in self.explorer.controls():
            span = max(ctl.high - ctl.low, 1e-6)
            css = "distortion-slider" if ctl.group == "distortion" else "pose-slider"
            s = labelled(pn.widgets.FloatSlider, ctl.name, start=ctl.low, end=ctl.high, value=ctl.value,
                                       step=span / 200, width=300, css_classes=[css])
            s.param.watch(self._render, "value")
            sliders.append(s)
        self.sliders = sliders
        self.sliders_box.objects = sliders
        self.original.update(self.explorer.original())
        self._render()

    def _render(self, *_) -> None:
        t0 = time.perf_counter()
        frame = self.explorer.render([s.value for s in self.sliders])
        ms = 1000 * (time.perf_counter() - t0)
        self.render_ms.append(ms)
        del self.render_ms[:-100]
        self.image.update(frame)
        self.timing.object = f"decoded in {ms:.1f} ms (<span class='render-count'>{self.image.updates}</span> frames)"

    def tick(self) -> None:
        if not self.explorer.ready or self._loaded_session is not self.slot.session:
            self.load()


# -- RBM views --------------------------------------------------------------------------------
class RBMPanel:
    """Fantasy particles live, the FPCD fast overlay (grey = 0) and the slow filters."""

    def __init__(self, slot):
        self.slot = slot
        self.fantasy = ImageFigure("Fantasy particles (persistent chains)", "rbm-fantasy", 330, 330)
        self.fast = ImageFigure("FPCD fast overlay (grey = 0)", "rbm-fast", 330, 330)
        self.filters = ImageFigure("Filters (slow weights)", "rbm-filters", 330, 330)
        self.magnitude = pn.pane.Markdown("", css_classes=["rbm-fast-magnitude"], width=330)
        self.version = None
        self.pane = pn.Row(self.fantasy.pane, pn.Column(self.fast.pane, self.magnitude),
                           self.filters.pane)

    def tick(self) -> None:
        snap = self.slot.snapshot()
        if snap is None or snap is self.version:
            return
        self.version = snap
        for fig, frame in ((self.fantasy, RBMView.fantasy(snap)), (self.fast, RBMView.fast_overlay(snap)),
                           (self.filters, RBMView.filters(snap))):
            if frame is not None:
                fig.update(frame)
        mag = RBMView.fast_magnitude(snap)
        self.magnitude.object = (f"mean |fast overlay| = {mag:.4g} at step {snap.step}"
                                 if math.isfinite(mag) else "no fast overlay (not FPCD)")
