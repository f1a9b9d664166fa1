"""The dashboard: process-wide training sessions, one Panel app per browser session.

``DashboardState`` holds the sessions (one ``SessionSlot`` per tab); they live as long
as the server process and are shared by every browser tab. ``build_app(state)`` builds
the page for one browser session: its components poll the slots from one periodic
callback on that document's thread (stopped when the browser session ends).

``lab serve`` calls ``serve(state, ...)``; ``panel serve widgets/dashboard.py`` builds
the same state once per process (``default_state()``).
"""
from __future__ import annotations

import os
import sys
import threading
import traceback
from pathlib import Path

# Every stylesheet from this server, none from a CDN: the dashboard must work offline
# (and a CDN request that fails is a console error). Set before bokeh reads its settings.
os.environ.setdefault("BOKEH_RESOURCES", "server")

import panel as pn  # noqa: E402

from lab.session import TrainingSession  # noqa: E402
from widgets.panes import button, labelled  # noqa: E402
from widgets.views import TemplateHistory  # noqa: E402

CAPSULE_SNAPSHOT = {"snapshot_every": 1, "snapshot_interval": 4.0}
RBM_SNAPSHOT = {"snapshot_every": 1, "snapshot_interval": 0.5}


class SessionSlot:
    """One tab's current session (replaced when the user picks a config or a checkpoint)."""

    def __init__(self, title: str, kind: str, checkpoint_dir: Path | None = None):
        self.title, self.kind = title, kind
        self.session: TrainingSession | None = None
        self.note: str = ""
        self.templates = TemplateHistory()
        self.checkpoint_dir = checkpoint_dir
        self._lock = threading.Lock()

    def set(self, session: TrainingSession | None, note: str = "") -> None:
        with self._lock:
            old, self.session = self.session, None
            if old is not None:
                old.close()
            self.templates = TemplateHistory()
            self.note = note
            if session is not None:
                session.subscribe(self.templates.record)
            self.session = session

    def snapshot(self):
        s = self.session
        return None if s is None else s.snapshot

    def save_checkpoint(self) -> Path:
        s = self.session
        if s is None:
            raise RuntimeError("no session")
        if s.checkpoint_dir is not None:
            return s.checkpoint()
        directory = self.checkpoint_dir or Path("lab-checkpoints")
        return s.checkpoint(Path(directory) / self.kind / f"ckpt-{s.step:09d}.npz")


class DashboardState:
    """The sessions behind the dashboard: ``capsules`` and ``rbm`` slots."""

    def __init__(self, checkpoint_dir=None):
        checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.capsules = SessionSlot("Capsule autoencoder", "capsules", checkpoint_dir)
        self.rbm = SessionSlot("RBM", "rbm", checkpoint_dir)
        self.capsule_configs: list[str] = []
        self.capsule_config = None
        self.rbm_options: dict = {}
        self.messages: list[str] = []

    # -- building sessions -------------------------------------------------------------------
    def start_capsules(self, config: str = "mnist-quick", seed: int = 0, start: bool = True,
                       fake: bool = False) -> None:
        """(Re)start the capsule slot with ``config``; an honest note when unavailable."""
        from lab.session.adapters import capsules_available  # noqa: PLC0415
        if fake:
            from lab.session.fake import FakeCapsuleTrainer  # noqa: PLC0415
            trainer = FakeCapsuleTrainer(seed=seed)
            self.capsule_configs, self.capsule_config = ["fake"], "fake"
        else:
            ok, why = capsules_available()
            if not ok:
                self.capsules.set(None, note=f"not available: {why}")
                return
            from lab.capsules.configs import config_names  # noqa: PLC0415
            from lab.session.adapters import CapsuleSessionTrainer  # noqa: PLC0415
            self.capsule_configs = config_names()
            try:
                trainer = CapsuleSessionTrainer(config, seed=seed)
            except Exception as exc:  # noqa: BLE001  (data missing, bad config: say so)
                self.capsules.set(None, note=f"could not start `{config}`: {type(exc).__name__}: {exc}")
                return
            self.capsule_config = config
        session = TrainingSession(trainer, name=f"capsules-{self.capsule_config}", **CAPSULE_SNAPSHOT)
        self.capsules.set(session)
        if start:
            session.start()

    def start_rbm(self, start: bool = True, **options) -> None:
        from lab.session.adapters import RBMSessionTrainer, rbm_available  # noqa: PLC0415
        ok, why = rbm_available()
        if not ok:
            self.rbm.set(None, note=f"not available: {why}")
            return
        opts = {"algorithm": "fpcd", "n_hidden": 16, "learning_rate": 0.05, "eval_every": 100}
        opts.update(options)
        self.rbm_options = opts
        try:
            trainer = RBMSessionTrainer(**opts)
        except Exception as exc:  # noqa: BLE001
            self.rbm.set(None, note=f"could not start: {type(exc).__name__}: {exc}")
            return
        session = TrainingSession(trainer, name=f"rbm-{opts['algorithm']}", **RBM_SNAPSHOT)
        self.rbm.set(session)
        if start:
            session.start()

    def load_checkpoint(self, path, read_only: bool = False) -> str:
        """Put checkpoint ``path`` into the slot of its kind; a message for the user."""
        from lab.checkpoint import read_checkpoint_record  # noqa: PLC0415
        meta = read_checkpoint_record(path)["meta"]
        kind = (meta.get("lab_session") or {}).get("kind") or meta.get("kind")
        slot = self.rbm if kind == "rbm" else self.capsules
        if read_only:
            session = TrainingSession.attach(path)
        else:
            snap = CAPSULE_SNAPSHOT if slot is self.capsules else RBM_SNAPSHOT
            session = TrainingSession.from_checkpoint(path, **snap)
        slot.set(session)
        return (f"loaded `{path}` ({kind}, step {session.step}) into the {slot.title} tab"
                + (" read-only" if read_only else "; press Start to train on"))

    def close(self) -> None:
        self.capsules.set(None)
        self.rbm.set(None)


_STATE: DashboardState | None = None
_STATE_LOCK = threading.Lock()


def default_state(capsule_config: str | None = None, start: bool = True) -> DashboardState:
    """The process-wide state with the default sessions (built once)."""
    global _STATE
    with _STATE_LOCK:
        if _STATE is None:
            state = DashboardState(os.environ.get("LAB_CHECKPOINT_DIR"))
            state.start_capsules(capsule_config or os.environ.get("LAB_SERVE_CONFIG", "mnist-quick"),
                                 start=start, fake=os.environ.get("LAB_SERVE_FAKE_CAPSULES") == "1")
            state.start_rbm(start=start)
            _STATE = state
        return _STATE


# -- the page ------------------------------------------------------------------------------------
def _capsule_tab(state: DashboardState, components: list, controls: list):
    from widgets.panes import (CurvesFigure, ExplorerPanel, MixturePanel,  # noqa: PLC0415
                               ReconstructionsPanel, SessionControls, TemplatesPanel)
    slot = state.capsules
    ctl = SessionControls(slot, "capsules")
    controls.append(ctl)
    if slot.session is None and not state.capsule_configs:
        return pn.Column(ctl.view, pn.pane.Alert(
            f"The capsule autoencoder is {slot.note or 'not available'}. "
            "The RBM tab works without it.", alert_type="warning", css_classes=["capsules-unavailable"]))
    config = labelled(pn.widgets.Select, "config", options=state.capsule_configs or ["-"],
                               value=state.capsule_config or None, width=200)
    restart = button("Restart with config", width=160, css_classes=["capsules-restart"])

    def do_restart(event):
        ctl.message.object = f"starting `{config.value}` ..."
        state.start_capsules(config.value)
        ctl.message.object = slot.note or f"started `{config.value}`"
    restart.on_click(do_restart)
    recon, explorer, templates, mixture = (ReconstructionsPanel(slot), ExplorerPanel(slot),
                                           TemplatesPanel(slot), MixturePanel(slot))
    loss = CurvesFigure("Training loss", ["loss"], "capsules-loss")
    err = CurvesFigure("Reconstruction error per pixel", ["recon_per_pixel", "valid_recon_nodropout"],
                       "capsules-error")
    rules = CurvesFigure("Optimizer rule dominance (fig 2.13; conservative optimizer)",
                         lambda n: n.startswith("rule_"), "capsules-rules", y_label="fraction")
    acs = CurvesFigure("ACs in use on held-out images (fig 2.14: all of them)", ["valid_acs_active"],
                       "capsules-acs", y_label="ACs")
    manager = CurvesFigure("Manager on held-out images, no noise (2.3.5: y >= 0.99 for 80%)",
                           ["valid_max_y", "valid_max_y_99"], "capsules-manager", y_label="fraction")
    curves = [_CurveTicker(slot, c) for c in (loss, err, rules, acs, manager)]
    sub = pn.Tabs(("Distortion explorer", explorer.pane),
                  ("Reconstructions", recon.pane),
                  ("Templates", templates.pane),
                  ("Mixture", mixture.pane),
                  ("Curves", pn.Column(pn.Row(loss.pane, err.pane), pn.Row(rules.pane, acs.pane),
                                       manager.pane)),
                  dynamic=False)
    # Only what is on screen is drawn (a hidden view catches up when shown): viewers cost
    # the training run as little as possible (issue 6: under 5%).
    for i, group in enumerate([[explorer], [recon], [templates], [mixture], curves]):
        for comp in group:
            components.append(_Visible(comp, tab=0, sub=sub, index=i))
    return pn.Column(pn.Row(ctl.view, pn.Column(config, restart)), sub)


class _Visible:
    """A component that ticks only while its (sub)tab is shown."""

    main = None   # the page's main Tabs, set by build_app

    def __init__(self, comp, tab: int, sub=None, index: int = 0):
        self.comp, self.tab, self.sub, self.index = comp, tab, sub, index

    def visible(self) -> bool:
        if self.main is not None and self.main.active != self.tab:
            return False
        return self.sub is None or self.sub.active == self.index

    def tick(self):
        if self.visible():
            self.comp.tick()


class _CurveTicker:
    def __init__(self, slot, curves):
        self.slot, self.curves = slot, curves

    def tick(self):
        if self.slot.session is not None:
            self.curves.tick(self.slot.session.history)


def _rbm_tab(state: DashboardState, components: list, controls: list):
    from widgets.panes import CurvesFigure, RBMPanel, SessionControls  # noqa: PLC0415
    slot = state.rbm
    ctl = SessionControls(slot, "rbm")
    controls.append(ctl)
    if slot.session is None:
        return pn.Column(ctl.view, pn.pane.Alert(f"The RBM is {slot.note or 'not available'}.",
                                                  alert_type="warning", css_classes=["rbm-unavailable"]))
    panel = RBMPanel(slot)
    ll = CurvesFigure("Log-likelihood per case (nats)", lambda n: n.startswith("loglik"), "rbm-loglik")
    rec = CurvesFigure("Reconstruction error", ["recon_error"], "rbm-recon")
    fast = CurvesFigure("FPCD fast-overlay magnitude", ["fast_magnitude"], "rbm-fast-curve")
    components += [_Visible(c, tab=1) for c in [panel] + [_CurveTicker(slot, c) for c in (ll, rec, fast)]]
    algo = state.rbm_options.get("algorithm", "?")
    return pn.Column(ctl.view, pn.pane.Markdown(
        f"Binary RBM, {state.rbm_options.get('n_hidden', '?')} hidden units, **{algo}** on "
        "stochastically binarised MNIST (thesis 3.3.2); log-likelihood "
        f"{'exact' if state.rbm_options.get('n_hidden', 99) <= 20 else 'by AIS'}."),
        panel.pane, pn.Row(ll.pane, rec.pane, fast.pane))


def build_app(state: DashboardState | None = None, period_ms: int = 300):
    """The page for one browser session (call it inside a served document)."""
    state = state or default_state()
    components: list = []
    controls: list = []
    tabs = pn.Tabs(("Capsule autoencoder", _capsule_tab(state, components, controls)),
                   ("RBM (FPCD)", _rbm_tab(state, components, controls)), dynamic=False,
                   css_classes=["main-tabs"])
    for comp in components:
        if isinstance(comp, _Visible):
            comp.main = tabs
    path = labelled(pn.widgets.TextInput, "checkpoint (.npz)", placeholder="path/to/ckpt-000001234.npz",
                                width=420)
    view_only = labelled(pn.widgets.Checkbox, "read-only (attach, no training)", value=False)
    load = button("Load checkpoint", width=140, css_classes=["load-checkpoint"])
    message = pn.pane.Markdown("", css_classes=["app-message"], width=800)

    def do_load(event):
        try:
            message.object = state.load_checkpoint(path.value.strip(), read_only=view_only.value)
        except Exception as exc:  # noqa: BLE001
            message.object = f"**could not load**: {exc}"
    load.on_click(do_load)

    errors: list[str] = []

    def tick():
        for comp in controls + components:
            try:
                comp.tick()
            except Exception:  # noqa: BLE001  (one broken view must not stop the others)
                errors.append(traceback.format_exc())
                del errors[:-20]
                message.object = f"**view error**: `{errors[-1].strip().splitlines()[-1]}`"
                print(errors[-1], file=sys.stderr)

    page = pn.Column(
        pn.pane.Markdown("## capsule-lab: live training sessions (Tieleman 2014)"),
        pn.Row(path, pn.Column(view_only, load)), message, tabs)
    page.errors = errors
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        cb = pn.state.add_periodic_callback(tick, period=period_ms)
        pn.state.on_session_destroyed(lambda ctx: cb.stop())
    return page


def serve(state: DashboardState, address: str = "127.0.0.1", port: int = 5006,
          show: bool = True, **kwargs):
    """Serve the dashboard (blocks). Only ``address`` is listened on (127.0.0.1 by default)."""
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    return pn.serve(lambda: build_app(state), address=address, port=port, show=show,
                    websocket_origin=origins, title="capsule-lab", threaded=False, **kwargs)
