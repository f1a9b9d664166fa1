"""The views (framework-free), their Panel components and their ipywidgets, on fake snapshots."""
from __future__ import annotations

import time

import numpy as np
import pytest

from lab.session import FakeCapsuleTrainer, FakeTrainer, Snapshot, TrainingSession, freeze
from widgets.images import grid, mismatch, tile, to_png
from widgets.views import (DistortionExplorer, MixtureView, RBMView, ReconstructionsView,
                           TemplateHistory, curve_groups)

pytestmark = pytest.mark.timeout(60)


def snap(data, step=1, version=1, metrics=None):
    return Snapshot(version=version, step=step, state="running", metrics=metrics or {},
                    data=freeze(data))


@pytest.fixture(scope="module")
def capsule_session():
    s = TrainingSession(FakeCapsuleTrainer(seed=0), snapshot_every=5)
    s.start(max_steps=20)
    s.join(10)
    yield s
    s.close()


def rbm_snapshot(step=1, seed=0):
    rng = np.random.default_rng(seed)
    return snap({"fantasy": (rng.random((64, 28, 28)) < 0.3).astype(np.float32),
                 "fast_filters": rng.standard_normal((16, 28, 28)).astype(np.float32) * 0.01,
                 "fast_magnitude": 0.01, "filters": rng.standard_normal((16, 28, 28)).astype(np.float32)},
                step=step, version=step)


# -- image helpers ----------------------------------------------------------------------------
def test_tile_grid_mismatch_png():
    imgs = np.random.default_rng(0).random((5, 4, 3))
    t = tile(imgs, ncols=3, pad=1)
    assert t.shape == (2 * 5 - 1, 3 * 4 - 1) and t.dtype == np.float32
    np.testing.assert_allclose(t[:4, :3], imgs[0], rtol=1e-6)
    g = grid([[imgs[0], imgs[1]], [imgs[2]]])
    assert g.shape == (9, 7)
    m = mismatch(np.zeros((2, 2)), np.ones((2, 2)))
    assert np.all(m == 1.0)
    png = to_png(t, scale=2)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image
    import io
    im = Image.open(io.BytesIO(png))
    assert im.size == (t.shape[1] * 2, t.shape[0] * 2)
    np.testing.assert_allclose(np.asarray(im)[::2, ::2] / 255.0, np.clip(t, 0, 1), atol=1 / 255)


def test_curve_groups():
    g = curve_groups(["loss", "rule_3", "rule_4", "loglik_valid", "fast_magnitude", "seconds"])
    assert g == {"loss": ["loss"], "rules": ["rule_3", "rule_4"], "likelihood": ["loglik_valid"],
                 "rbm": ["fast_magnitude"]}


# -- capsule views ------------------------------------------------------------------------------
def test_reconstructions_view(capsule_session):
    s = capsule_session.snapshot
    frame = ReconstructionsView().frame(s)
    K = s["templates"].shape[0]
    assert frame.shape == (8 * 29 - 1, (3 + K) * 29 - 1)
    assert 0 <= frame.min() and frame.max() <= 1


def test_mixture_view(capsule_session):
    out = MixtureView(n_images=4).compute(capsule_session.snapshot)
    C = out["n_components"]
    assert out["sizes"].sum() == 64 and len(out["sizes"]) == C
    assert out["frame"].shape == (4 * 29 - 1, (2 + C) * 29 - 1)
    assert MixtureView().compute(rbm_snapshot()) is None


def test_distortion_explorer(capsule_session):
    e = DistortionExplorer()
    assert e.load(capsule_session.snapshot)
    controls = e.controls()
    D = capsule_session.snapshot["params"]["param/dist"].shape[1]
    assert [c.group for c in controls] == ["distortion"] * D + ["pose"] * 7
    assert [c.name for c in controls[D:]] == ["intensity", "t0", "t1", "s0", "s1", "z", "theta"]
    code = e.code
    sigma = np.asarray(code.distortions)[:, e.component, :].std(axis=0)
    for d, c in enumerate(controls[:D]):
        assert c.low == pytest.approx(-2 * sigma[d], rel=1e-5) and c.high == pytest.approx(2 * sigma[d], rel=1e-5)
        assert c.low <= c.value <= c.high
    base = e.render()
    values = [c.value for c in controls]
    values[D + 1] = controls[D + 1].high if values[D + 1] < controls[D + 1].high else controls[D + 1].low
    moved = e.render(values)
    assert base.shape == (28, 28) and not np.allclose(base, moved)
    e.select(component=(e.component + 1) % e.n_components, mode="capsule")
    assert all(c.value == 0 for c in e.controls()[:D])
    assert e.sweep(n_steps=5).shape == (D * 29 - 1, 5 * 29 - 1)
    assert not DistortionExplorer().load(rbm_snapshot())


def test_distortion_explorer_real_capsule_model_under_100ms():
    """The real decoder (mnist-quick, untrained is fine for timing) renders a frame < 100 ms."""
    caps = pytest.importorskip("lab.capsules.autoencoders")
    from lab.capsules.configs import get_config
    config = get_config("mnist-quick")
    model = caps.build_model(config, seed=0)
    images = np.random.default_rng(0).random((16, 28, 28)).astype(np.float32)
    s = snap({"params": model.state_arrays(), "viewer": {"kind": "capsules", "config": config.to_dict()},
              "view_images": images})
    e = DistortionExplorer()
    assert e.load(s)
    assert len([c for c in e.controls() if c.group == "distortion"]) == config.n_distortions
    values = [c.value for c in e.controls()]
    e.render(values)  # warm up
    times = []
    for i in range(10):
        values[i % config.n_distortions] = e.controls()[i % config.n_distortions].high
        t0 = time.perf_counter()
        e.render(values)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 0.1, f"median frame {1000 * np.median(times):.1f} ms"


def test_template_history_thins_and_scrubs():
    h = TemplateHistory(max_frames=10)
    for i in range(1, 60):
        h.record(snap({"templates": np.full((2, 1, 3, 3), i / 60.0)}, step=i, version=i))
    assert len(h) <= 10 and h.steps[0] == 1 and h.steps[-1] == 59
    assert h.steps == sorted(h.steps)
    step, frame = h.frame(0)
    assert step == 1 and frame.shape == (3, 7)
    h.record(snap({"templates": np.zeros((2, 1, 3, 3))}, step=59, version=99))  # same step: ignored
    assert h.steps[-1] == 59
    h.record(snap({"templates": np.zeros((2, 1, 3, 3))}, step=1, version=100))  # a new run
    assert h.steps == [1]


def test_rbm_view():
    s = rbm_snapshot()
    assert RBMView.fantasy(s).shape == (8 * 29 - 1, 8 * 29 - 1)
    overlay = RBMView.fast_overlay(s)
    assert overlay.shape == (4 * 29 - 1, 4 * 29 - 1) and 0 <= overlay.min() and overlay.max() <= 1
    assert RBMView.filters(s) is not None and RBMView.fast_magnitude(s) == 0.01
    empty = snap({"filters": np.zeros((4, 28, 28))})
    assert RBMView.fantasy(empty) is None and RBMView.fast_overlay(empty) is None


# -- Panel components ----------------------------------------------------------------------------
pn = pytest.importorskip("panel")


class FakeSlot:
    def __init__(self, session, title="fake"):
        self.session, self.title, self.note = session, title, ""
        self.templates = TemplateHistory()

    def snapshot(self):
        return self.session.snapshot

    def save_checkpoint(self):
        return self.session.checkpoint("/dev/null")


def test_image_figure_update():
    from widgets.panes import ImageFigure
    f = ImageFigure("t", "test-image")
    img = np.arange(12, dtype=np.float64).reshape(3, 4) / 12
    f.update(img)
    data = f.source.data["image"][0]
    assert data.dtype == np.float32 and data.shape == (3, 4)
    np.testing.assert_allclose(data, np.flipud(img), rtol=1e-6)   # row 0 drawn at the top
    assert f.figure.x_range.end == 4 and f.figure.y_range.end == 3


def test_curves_figure_streams_with_rollover():
    from widgets.panes import CurvesFigure
    s = TrainingSession(FakeTrainer(seed=1), snapshot_every=10)
    s.start(max_steps=30)
    s.join(10)
    c = CurvesFigure("loss", ["loss"], "test-curves", rollover=25)
    c.tick(s.history)
    assert list(c.sources) == ["loss"] and len(c.sources["loss"].data["step"]) == 25
    assert c.sources["loss"].data["step"][-1] == 30
    s.start(max_steps=35)
    s.join(10)
    c.tick(s.history)
    assert c.sources["loss"].data["step"][-1] == 35 and len(c.sources["loss"].data["step"]) == 25
    s.close()


def test_panel_capsule_components_update(capsule_session):
    from widgets.panes import (ExplorerPanel, MixturePanel, ReconstructionsPanel, SessionControls,
                               TemplatesPanel)
    slot = FakeSlot(capsule_session)
    slot.templates.record(capsule_session.snapshot)
    recon, explorer, templates, mixture = (ReconstructionsPanel(slot), ExplorerPanel(slot),
                                           TemplatesPanel(slot), MixturePanel(slot))
    controls = SessionControls(slot, "capsules")
    for comp in (recon, explorer, templates, mixture, controls):
        comp.tick()
    assert recon.image.updates == 1 and mixture.image.updates == 1 and templates.image.updates == 1
    assert explorer.explorer.ready and len(explorer.sliders) == explorer.explorer.controls().__len__()
    before = explorer.image.source.data["image"][0].copy()
    n = explorer.image.updates
    s = explorer.sliders[0]
    s.value = s.start if s.value > (s.start + s.end) / 2 else s.end
    assert explorer.image.updates == n + 1
    assert not np.array_equal(before, explorer.image.source.data["image"][0])
    assert max(explorer.render_ms) < 1000
    assert "finished" in controls.status.object and controls.pause.disabled
    # the same snapshot again: nothing redrawn
    recon.tick()
    assert recon.image.updates == 1


def test_panel_rbm_component():
    from widgets.panes import RBMPanel

    class Holder:
        snapshot = rbm_snapshot(step=3)
    slot = FakeSlot(Holder)
    p = RBMPanel(slot)
    p.tick()
    assert p.fantasy.updates == 1 and p.fast.updates == 1 and "0.01" in p.magnitude.object
    Holder.snapshot = rbm_snapshot(step=4, seed=1)
    p.tick()
    assert p.fantasy.updates == 2


def test_session_controls_drive_the_session():
    from widgets.panes import SessionControls
    s = TrainingSession(FakeTrainer(seed=2, work=32), snapshot_every=5)
    slot = FakeSlot(s)
    c = SessionControls(slot, "x")
    c._do("start")
    assert s.wait_for_step(3)
    c._do("pause")
    assert s.pause()
    c.tick()
    assert "paused" in c.status.object and not c.resume.disabled
    n = s.step
    c._do("step_once")
    assert s.step == n + 1
    c._do("resume")
    assert s.wait_for_step(n + 5)
    s.close()


def test_build_app_with_fake_capsules_and_unavailable_rbm():
    from widgets.app import DashboardState, build_app
    state = DashboardState()
    state.start_capsules(fake=True, start=False)
    state.rbm.set(None, note="not available: test")
    page = build_app(state)
    root = page.get_root()
    names = {m.name for m in root.select({"type": __import__("bokeh.models", fromlist=["Model"]).Plot})}
    assert {"explorer", "reconstructions", "templates", "mixture"} <= names
    assert "not available: test" in str(page)  or any(
        "not available" in getattr(o, "object", "") for o in page.select(pn.pane.Alert))
    state.close()


def test_build_app_capsules_unavailable_note(monkeypatch):
    from lab.session import adapters
    from widgets.app import DashboardState, build_app
    monkeypatch.setattr(adapters, "capsules_available", lambda: (False, "lab.capsules is missing"))
    state = DashboardState()
    state.start_capsules()
    assert state.capsules.session is None and "lab.capsules is missing" in state.capsules.note
    state.rbm.set(None, note="not available: test")
    page = build_app(state)
    alerts = [o.object for o in page.select(pn.pane.Alert)]
    assert any("lab.capsules is missing" in a for a in alerts)
    state.close()


# -- ipywidgets --------------------------------------------------------------------------------
def test_ipywidgets_follow_a_session():
    pytest.importorskip("ipywidgets")
    from widgets.ipy import (DistortionExplorerWidget, MixtureWidget, RBMWidget,
                             ReconstructionsWidget, TemplatesWidget, session_controls)
    s = TrainingSession(FakeCapsuleTrainer(seed=3), snapshot_every=1)
    ws = [ReconstructionsWidget(s), TemplatesWidget(s), MixtureWidget(s), DistortionExplorerWidget(s)]
    assert s.n_subscribers == 4
    s.step_once()
    deadline = time.time() + 10
    while time.time() < deadline and not all(w.frames for w in ws):
        time.sleep(0.05)
    for w in ws:
        assert w.frames and not w.errors, (type(w).__name__, w.errors)
    recon, templates, mixture, explorer = ws
    assert bytes(recon.image.value).startswith(b"\x89PNG")
    assert explorer.sliders and bytes(explorer.image.value).startswith(b"\x89PNG")
    before = bytes(explorer.image.value)
    sl = explorer.sliders[-6]   # t0: a translation always moves the rendering
    sl.value = sl.min if sl.value > (sl.min + sl.max) / 2 else sl.max
    assert bytes(explorer.image.value) != before
    for _ in range(3):
        s.step_once()
    deadline = time.time() + 5
    while time.time() < deadline and len(templates.history) < 3:
        time.sleep(0.05)
    assert len(templates.history) >= 3 and templates.slider.max == len(templates.history) - 1
    templates.slider.value = 0
    assert "step" in templates.label.value
    for w in ws:
        w.close()
    assert s.n_subscribers == 0
    rbm = RBMWidget(rbm_snapshot())
    assert rbm.frames == 1 and bytes(rbm.fantasy.value).startswith(b"\x89PNG") and "0.01" in rbm.label.value
    assert len(session_controls(s).children) == 5
    s.close()
