"""TrainingSession: lifecycle, thread safety, observation never changes the run, checkpoints."""
from __future__ import annotations

import gc
import random
import threading
import time
import tracemalloc

import numpy as np
import pytest

from lab.session import (FakeTrainer, ReadOnlySessionError, Snapshot, TrainingSession, freeze)

pytestmark = pytest.mark.timeout(60)


def run_to(session: TrainingSession, steps: int) -> TrainingSession:
    session.start(max_steps=steps)
    assert session.join(20), "training thread did not finish"
    return session


def losses(session):
    return session.history.series("loss")


# -- lifecycle -------------------------------------------------------------------------------
def test_runs_to_max_steps_and_publishes():
    s = run_to(TrainingSession(FakeTrainer(seed=1), snapshot_every=5), 40)
    assert s.state == "finished" and s.step == 40
    steps, values = losses(s)
    assert list(steps) == list(range(1, 41)) and np.all(np.isfinite(values))
    snap = s.snapshot
    assert isinstance(snap, Snapshot) and snap.step == 40 and snap["step"] == 40
    assert snap.metrics["loss"] == values[-1]
    assert snap.state == "finished"
    # versions: the initial snapshot, one per 5 steps, the final one
    assert snap.version == 1 + 8 + 1
    s.close()


def test_pause_freezes_and_resume_advances():
    s = TrainingSession(FakeTrainer(seed=2, work=32), snapshot_every=1).start()
    assert s.wait_for_step(5)
    assert s.pause()
    frozen, version = s.step, s.snapshot_version
    time.sleep(0.2)
    assert s.step == frozen and s.snapshot_version == version and s.state == "paused"
    s.resume()
    assert s.wait_for_step(frozen + 5)
    assert s.state == "running"
    s.stop()
    assert s.state == "stopped" and s.join(1)
    s.close()


def test_step_once_does_exactly_one_step():
    s = TrainingSession(FakeTrainer(seed=3), snapshot_every=1)
    m = s.step_once()
    assert s.step == 1 and "loss" in m and s.state == "paused"
    for _ in range(3):
        s.step_once()
    assert s.step == 4
    time.sleep(0.05)
    assert s.step == 4
    s.start(max_steps=10)
    s.join(10)
    assert s.step == 10
    s.close()


def test_start_after_stop_continues():
    s = run_to(TrainingSession(FakeTrainer(seed=4)), 10)
    s.start(max_steps=20)
    s.join(10)
    assert s.step == 20 and list(losses(s)[0]) == list(range(1, 21))
    s.close()


def test_failure_is_reported_not_raised():
    s = run_to(TrainingSession(FakeTrainer(seed=5, fail_at=7)), 20)
    assert s.state == "failed" and s.step == 6
    assert "fake failure at step 7" in s.error
    with pytest.raises(RuntimeError, match="failed"):
        s.step_once()
    s.close()


def test_snapshot_rate_cap():
    s = TrainingSession(FakeTrainer(seed=6, work=16), snapshot_every=None, snapshot_interval=10.0)
    run_to(s, 200)
    # the initial and the final snapshot only: the rate cap held back the rest
    assert s.snapshot_version <= 3 and s.snapshot.step == 200
    with pytest.raises(ValueError):
        TrainingSession(FakeTrainer(), snapshot_every=None)
    s.close()


# -- snapshots are frozen copies -------------------------------------------------------------
def test_freeze_copies_and_locks_arrays():
    a = np.arange(6.0)
    f = freeze({"a": a, "n": np.float32(2), "l": [1, {"b": a}]})
    a[0] = 99
    assert f["a"][0] == 0 and f["l"][1]["b"][0] == 0
    assert isinstance(f["n"], float)
    with pytest.raises(ValueError):
        f["a"][1] = 5
    with pytest.raises(TypeError, match="snapshot.obj"):
        freeze({"obj": threading.Lock()})


def test_hammer_snapshot_reads_while_training():
    """Many threads read snapshots as fast as they can: each is internally consistent."""
    s = TrainingSession(FakeTrainer(seed=7, dim=256), snapshot_every=1).start()
    errors, reads = [], [0]
    done = threading.Event()

    def reader():
        last = 0
        while not done.is_set():
            snap = s.snapshot
            if snap is None:
                continue
            try:
                assert snap.version >= last
                last = snap.version
                assert snap.step == snap["step"]
                w = snap["w"]
                assert not w.flags.writeable
                expect = 1.0 / (1.0 + np.exp(-w))
                np.testing.assert_allclose(snap["image"].ravel()[:256], expect, rtol=1e-6)
                reads[0] += 1
            except AssertionError as exc:  # pragma: no cover - only on a bug
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while (reads[0] < 2000 or s.step < 200) and time.time() < deadline and not errors:
        time.sleep(0.01)
    s.stop()
    done.set()
    for t in threads:
        t.join(5)
    assert not errors and reads[0] >= 2000 and s.step >= 200
    s.close()


def test_pause_resume_stop_races():
    """Control calls from several threads at once never deadlock or lose the state."""
    s = TrainingSession(FakeTrainer(seed=8, work=16), snapshot_every=3).start()
    rnd = random.Random(0)
    failures = []

    def poke(seed):
        r = random.Random(seed)
        for _ in range(60):
            op = r.choice(["pause", "resume", "step_once", "toggle", "read"])
            try:
                if op == "pause":
                    s.pause(timeout=5)
                elif op == "resume":
                    s.resume()
                elif op == "step_once":
                    s.step_once(timeout=5)
                elif op == "toggle":
                    s.toggle()
                else:
                    _ = s.snapshot, s.stats()
            except Exception as exc:  # pragma: no cover - only on a bug
                failures.append(repr(exc))

    threads = [threading.Thread(target=poke, args=(rnd.random(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not failures
    assert s.state in ("running", "paused")
    assert s.pause()
    frozen = s.step
    time.sleep(0.05)
    assert s.step == frozen
    s.stop()
    assert s.join(2) and s.state == "stopped"
    # the history stayed one point per step, in order, with no gaps
    steps, _ = losses(s)
    assert list(steps) == list(range(1, s.step + 1))
    s.close()


def test_stop_while_paused_and_twice():
    s = TrainingSession(FakeTrainer(seed=9)).start()
    s.pause()
    s.stop()
    s.stop()
    assert s.state == "stopped" and s.join(1)
    s.close()


# -- observation does not change the run -------------------------------------------------------
def test_viewers_do_not_change_the_run():
    plain = run_to(TrainingSession(FakeTrainer(seed=11, work=16), snapshot_every=2), 300)

    watched = TrainingSession(FakeTrainer(seed=11, work=16), snapshot_every=2)
    seen = []
    watched.subscribe(lambda snap: seen.append(snap.version))
    slow = watched.subscribe(lambda snap: time.sleep(0.01))
    stop = threading.Event()

    def poller():
        v = 0
        while not stop.is_set():
            snap = watched.wait_snapshot(v, timeout=0.5)
            if snap is not None:
                v = snap.version
                _ = snap["w"].sum()

    pollers = [threading.Thread(target=poller) for _ in range(2)]
    for t in pollers:
        t.start()
    watched.start(max_steps=300)
    # attach and detach viewers while it runs
    for _ in range(20):
        token = watched.subscribe(lambda snap: None)
        watched.unsubscribe(token)
    watched.unsubscribe(slow)
    watched.join(20)
    stop.set()
    for t in pollers:
        t.join(5)
    assert watched.step == plain.step == 300
    for name in ("loss", "grad_norm"):
        np.testing.assert_array_equal(watched.history.series(name)[1], plain.history.series(name)[1])
    np.testing.assert_array_equal(watched.trainer.w, plain.trainer.w)
    assert seen and seen == sorted(seen)
    plain.close()
    watched.close()


def test_slow_subscriber_gets_latest_not_a_queue():
    s = TrainingSession(FakeTrainer(seed=12), snapshot_every=1)
    got = []

    def slow(snap):
        got.append(snap.version)
        time.sleep(0.05)
    s.subscribe(slow)
    run_to(s, 500)
    time.sleep(0.2)
    assert got[-1] == s.snapshot_version          # the final state was delivered
    assert len(got) < s.snapshot_version / 2        # versions were skipped, not queued
    s.close()


def test_broken_subscriber_is_isolated():
    s = TrainingSession(FakeTrainer(seed=13), snapshot_every=1)
    ok = []
    s.subscribe(lambda snap: 1 / 0)
    s.subscribe(lambda snap: ok.append(snap.version))
    run_to(s, 20)
    time.sleep(0.2)
    assert ok and s.viewer_errors and "ZeroDivisionError" in s.viewer_errors[-1]
    assert s.state == "finished"
    s.close()


def test_memory_stable_across_100_attach_detach_cycles():
    """Each cycle: a viewer attaches, sees one new step's snapshot, detaches. Nothing stays."""
    s = TrainingSession(FakeTrainer(seed=14, dim=4096), snapshot_every=1)

    def cycle(n):
        for _ in range(n):
            got, target = threading.Event(), s.step + 1
            token = s.subscribe(lambda snap, got=got, t=target: got.set() if snap.step == t else None)
            s.step_once()
            assert got.wait(5)
            s.unsubscribe(token)

    cycle(10)  # warm up caches
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cycle(100)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert s.n_subscribers == 0 and s.step == 110
    # a snapshot is ~50 kB (two 4096-float arrays): 100 leaked ones would be 5 MB; the
    # history grows by design (100 steps x 4 metrics, a few kB)
    assert after - before < 300_000, f"grew by {after - before} bytes"
    s.close()


# -- checkpoints -----------------------------------------------------------------------------
def test_checkpoint_now_and_resume_equals_uninterrupted(tmp_path):
    full = run_to(TrainingSession(FakeTrainer(seed=15)), 60)

    first = run_to(TrainingSession(FakeTrainer(seed=15)), 30)
    path = first.checkpoint(tmp_path / "half.npz")
    resumed = TrainingSession.from_checkpoint(path)
    assert resumed.step == 30 and resumed.state == "idle"
    run_to(resumed, 60)
    np.testing.assert_array_equal(resumed.history.series("loss")[1], full.history.series("loss")[1])
    np.testing.assert_array_equal(resumed.trainer.w, full.trainer.w)
    for s in (full, first, resumed):
        s.close()


def test_checkpoint_while_running_is_consistent(tmp_path):
    s = TrainingSession(FakeTrainer(seed=16, work=16), checkpoint_dir=tmp_path).start()
    s.wait_for_step(10)
    path = s.checkpoint()
    s.stop()
    from lab.checkpoint import load_checkpoint
    arrays, meta = load_checkpoint(path)
    step = meta["lab_session"]["step"]
    assert meta["step"] == step and path.name == f"ckpt-{step:09d}.npz"
    assert len(arrays["session_history/loss/values"]) == step
    s.close()


def test_checkpoint_every_n_minutes(tmp_path):
    s = TrainingSession(FakeTrainer(seed=17, work=32), checkpoint_dir=tmp_path,
                        checkpoint_every_minutes=0.05 / 60, checkpoint_keep=2).start()
    deadline = time.time() + 10
    while len(s.checkpoints) < 3 and time.time() < deadline:
        time.sleep(0.05)
    s.stop()
    files = sorted(tmp_path.glob("ckpt-*.npz"))
    assert len(s.checkpoints) >= 3 and 1 <= len(files) <= 2
    assert not list(tmp_path.glob(".*.tmp"))
    s.close()


def test_attach_is_read_only(tmp_path):
    s = run_to(TrainingSession(FakeTrainer(seed=18)), 25)
    path = s.checkpoint(tmp_path / "c.npz")
    a = TrainingSession.attach(path)
    assert a.state == "attached" and a.read_only and a.step == 25
    assert a.snapshot.step == 25
    np.testing.assert_array_equal(a.snapshot["w"], s.trainer.w)
    np.testing.assert_array_equal(a.history.series("loss")[1], s.history.series("loss")[1])
    for call in (a.start, a.step_once, a.resume, a.checkpoint):
        with pytest.raises(ReadOnlySessionError):
            call()
    got = []
    a.subscribe(got.append)
    time.sleep(0.1)
    assert got and got[0].step == 25
    a.close()
    s.close()


def test_attach_unknown_kind_shows_raw_arrays(tmp_path):
    from lab.checkpoint import save_checkpoint
    path = save_checkpoint(tmp_path / "foreign.npz", {"w": np.ones(3)}, {"kind": "nobody-knows"})
    a = TrainingSession.attach(path)
    assert a.read_only and a.kind == "nobody-knows"
    np.testing.assert_array_equal(a.snapshot["arrays"]["w"], np.ones(3))
    a.close()


def test_nested_dict_state_roundtrip(tmp_path):
    class DictTrainer(FakeTrainer):
        def state_dict(self):
            arrays, meta = super().state_dict()
            return {"params": arrays, "info": meta}

        def load_state_dict(self, state):
            super().load_state_dict(state["params"], state["info"])

    s = run_to(TrainingSession(DictTrainer(seed=19)), 10)
    path = s.checkpoint(tmp_path / "d.npz")
    r = TrainingSession.from_checkpoint(path, factory=lambda meta: DictTrainer(seed=19))
    np.testing.assert_array_equal(r.trainer.w, s.trainer.w)
    assert r.step == 10
    s.close()
    r.close()
