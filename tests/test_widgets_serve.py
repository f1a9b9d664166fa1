"""``lab serve`` wiring and the ``panel serve widgets/dashboard.py`` module (no browser)."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

pn = pytest.importorskip("panel")
pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def test_serve_defaults_to_loopback():
    from lab.cli import build_parser
    args = build_parser().parse_args(["serve"])
    assert args.address == "127.0.0.1" and args.port == 5006 and not args.no_show
    assert args.config == "mnist-quick" and args.rbm_algorithm == "fpcd"
    args = build_parser().parse_args(["serve", "--address", "0.0.0.0", "--port", "8000", "--no-show"])
    assert args.address == "0.0.0.0" and args.port == 8000 and args.no_show


def test_serve_builds_sessions_and_serves(monkeypatch):
    import widgets.app as app
    from lab.cli import main
    seen = {}

    def fake_run(state, address, port, show):
        seen.update(state=state, address=address, port=port, show=show,
                    capsules=state.capsules.session, rbm=state.rbm.session)
    monkeypatch.setattr(app, "serve", fake_run)
    assert main(["serve", "--no-show", "--config", "fake", "--no-rbm", "--paused", "--port", "5999"]) == 0
    assert seen["address"] == "127.0.0.1" and seen["port"] == 5999 and seen["show"] is False
    assert seen["capsules"] is not None and seen["capsules"].kind == "fake-capsules"
    assert seen["rbm"] is None
    assert seen["capsules"].state == "stopped"       # closed when the server returned


def test_dashboard_module_is_servable(monkeypatch):
    import widgets.app as app
    monkeypatch.setenv("LAB_SERVE_FAKE_CAPSULES", "1")
    monkeypatch.setattr(app.DashboardState, "start_rbm",
                        lambda self, start=True, **kw: self.rbm.set(None, note="not available: test"))
    monkeypatch.setattr(app, "_STATE", None)
    runpy.run_path(str(ROOT / "widgets" / "dashboard.py"), run_name="__main__")
    state = app._STATE
    try:
        assert state is not None and state.capsules.session is not None
        assert state.capsules.session.wait_for_step(1, timeout=20)
        assert app.default_state() is state          # built once per process
    finally:
        state.close()


def test_load_checkpoint_into_the_right_tab(tmp_path):
    from lab.session import FakeCapsuleTrainer, TrainingSession
    from widgets.app import DashboardState
    s = TrainingSession(FakeCapsuleTrainer(seed=1))
    s.start(max_steps=5)
    s.join(10)
    path = s.checkpoint(tmp_path / "c.npz")
    s.close()
    state = DashboardState(tmp_path / "out")
    msg = state.load_checkpoint(path, read_only=True)
    assert "read-only" in msg and state.capsules.session.read_only and state.capsules.session.step == 5
    msg = state.load_checkpoint(path)
    assert "Start" in msg and state.capsules.session.state == "idle"
    saved = state.capsules.save_checkpoint()
    assert saved.exists() and saved.parent == tmp_path / "out" / "capsules"
    state.close()
