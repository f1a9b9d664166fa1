"""``TrainingSession``: a trainer running in a daemon thread, watched by any number of viewers.

The trainer protocol (``lab.session.protocol``) is small: ``step() -> metrics``,
``snapshot() -> data``, ``state_dict() -> (arrays, meta)``, ``load_state_dict(arrays,
meta)`` and an optional ``metadata`` dict. The session owns the only thread that calls
``step()``; every other thread sees the run through

* ``session.snapshot``: the latest frozen ``Snapshot`` (numpy copies, read-only),
  published every ``snapshot_every`` steps (and/or at most every ``snapshot_interval``
  seconds), at the start and at the end of a run;
* ``session.history``: every step's numeric metrics (``since(cursor)`` for streaming);
* ``session.subscribe(callback)``: ``callback(snapshot)`` on a dispatcher thread, which
  delivers only the newest snapshot to a slow viewer (never a queue that grows).

Observation never changes the run: the snapshot schedule depends only on the step
count (``snapshot_interval`` adds a wall-clock rate cap, which changes when snapshots
are taken but never what the trainer computes, since ``snapshot()`` must not draw from
the training random stream), viewers only read frozen copies, and a viewer's callback
runs on the dispatcher thread, not the training thread.

States: ``idle`` (built, not started), ``running``, ``paused``, ``finished`` (reached
``max_steps``), ``stopped``, ``failed`` (``step()`` raised; ``session.error`` says
why) and ``attached`` (a read-only view of a checkpoint, no training).
"""
from __future__ import annotations

import copy
import itertools
import math
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from lab.backend import to_numpy
from lab.session.history import MetricsHistory
from lab.session.snapshot import Snapshot, freeze

#: Array-name prefix of the session's own data (metrics history) inside a checkpoint.
HISTORY_PREFIX = "session_history"
#: Meta key of the session's own record inside a checkpoint.
META_KEY = "lab_session"

_ids = itertools.count(1)


class ReadOnlySessionError(RuntimeError):
    """Training was asked of a session attached to a checkpoint (``TrainingSession.attach``)."""


def split_state(state) -> tuple[dict[str, np.ndarray], dict]:
    """A trainer's ``state_dict()`` as ``(flat arrays, JSON meta)``, deep-copied.

    Accepts the ``(arrays, meta)`` pair of the capsule trainer, or one nested dict whose
    array leaves go to ``arrays`` (``"a/b"`` names) and whose other leaves go to ``meta``.
    Copies matter: the training thread keeps updating its arrays in place.
    """
    if isinstance(state, tuple) and len(state) == 2:
        arrays, meta = state
        arrays = {str(k): np.array(to_numpy(v.data if _is_tensor(v) else v), copy=True)
                  for k, v in dict(arrays).items()}
        return arrays, copy.deepcopy(dict(meta))
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict() must return (arrays, meta) or a dict, got {type(state).__name__}")
    arrays: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        out = {}
        for k, v in node.items():
            name = f"{prefix}{k}"
            if isinstance(v, Mapping):
                sub = walk(v, name + "/")
                if sub:
                    out[str(k)] = sub
            elif _is_tensor(v) or (hasattr(v, "shape") and hasattr(v, "dtype")
                                    and not isinstance(v, np.generic)):
                arrays[name] = np.array(to_numpy(v.data if _is_tensor(v) else v), copy=True)
            else:
                out[str(k)] = v.item() if isinstance(v, np.generic) else copy.deepcopy(v)
        return out
    meta = walk(state, "")
    meta["__nested__"] = True
    return arrays, meta


def join_state(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]):
    """The inverse of ``split_state`` for what ``load_state_dict`` expects."""
    meta = dict(meta)
    if not meta.pop("__nested__", False):
        return dict(arrays), meta
    nested = copy.deepcopy(meta)
    for name, value in arrays.items():
        *parents, leaf = name.split("/")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return (nested,)


def _is_tensor(v) -> bool:
    return type(v).__name__ == "Tensor" and hasattr(v, "grad") and hasattr(v, "data")


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool):
            out[str(k)] = float(v)
        elif isinstance(v, (int, float, np.number)):
            out[str(k)] = float(v)
        elif _is_tensor(v) or (hasattr(v, "shape") and getattr(v, "shape", None) == ()):
            out[str(k)] = float(to_numpy(v.data if _is_tensor(v) else v))
    return out


class TrainingSession:
    """``TrainingSession(trainer, snapshot_every=10, checkpoint_dir=None, checkpoint_every_minutes=None)``.

    ``start(max_steps=None)``, ``pause()``, ``resume()``, ``stop()``, ``step_once()``;
    ``snapshot`` / ``subscribe`` / ``history`` for viewers; ``checkpoint(path=None)``;
    ``TrainingSession.attach(path)`` for a read-only view of a checkpoint.
    """

    def __init__(self, trainer, *, snapshot_every: int | None = 10,
                 snapshot_interval: float | None = None,
                 checkpoint_dir=None, checkpoint_every_minutes: float | None = None,
                 checkpoint_keep: int | None = 3, max_steps: int | None = None,
                 name: str | None = None):
        if snapshot_every is None and snapshot_interval is None:
            raise ValueError("give snapshot_every (steps) and/or snapshot_interval (seconds)")
        if snapshot_every is not None and int(snapshot_every) < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")
        if checkpoint_every_minutes is not None and checkpoint_dir is None:
            raise ValueError("checkpoint_every_minutes needs a checkpoint_dir")
        self.trainer = trainer
        self.metadata: dict = dict(getattr(trainer, "metadata", None) or {}) if trainer is not None else {}
        self.kind: str = str(self.metadata.get("kind") or type(trainer).__name__)
        self.name = name or f"{self.kind}-{next(_ids)}"
        self.snapshot_every = None if snapshot_every is None else int(snapshot_every)
        self.snapshot_interval = None if snapshot_interval is None else float(snapshot_interval)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.checkpoint_every_minutes = checkpoint_every_minutes
        self.checkpoint_keep = checkpoint_keep
        self.max_steps = max_steps
        self.history = MetricsHistory()
        self.error: str | None = None
        self.viewer_errors: list[str] = []
        self.checkpoints: list[Path] = []

        # _cond guards the run state; _trainer_lock the trainer itself (held by the
        # training thread for a step and by checkpoint()/with_trainer() between steps).
        self._cond = threading.Condition()
        self._trainer_lock = threading.RLock()
        self._state = "idle"
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self._busy = False
        self._pending = 0
        self._step = int(getattr(trainer, "step_count", 0) or 0) if trainer is not None else 0
        self._done_step = self._step
        self._last_metrics: dict[str, float] = {}
        self._run_seconds = 0.0
        self._rate = math.nan

        self._snap_cond = threading.Condition()
        self._snapshot: Snapshot | None = None
        self._version = 0
        self._last_snap_step = None
        self._last_snap_time = -math.inf

        self._subscribers: dict[int, list] = {}
        self._sub_ids = itertools.count(1)
        self._dispatcher: threading.Thread | None = None
        self._closing = False

        self._last_ckpt_time = time.monotonic()
        self._writers: list[threading.Thread] = []

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def step(self) -> int:
        """Training steps done (including those restored from a checkpoint)."""
        return self._step

    @property
    def busy(self) -> bool:
        """True while a step runs (after ``pause(wait=False)`` the last step may still run)."""
        return self._busy

    @property
    def read_only(self) -> bool:
        return self._state == "attached"

    @property
    def steps_per_second(self) -> float:
        return self._rate

    def stats(self) -> dict:
        """A small status dict for a dashboard's status line."""
        return {"name": self.name, "kind": self.kind, "state": self._state, "step": self._step,
                "busy": self._busy,
                "steps_per_second": self._rate, "snapshot_version": self._version,
                "subscribers": len(self._subscribers), "error": self.error,
                "checkpoints": [str(p) for p in self.checkpoints[-3:]]}

    def _check_trainable(self, what: str) -> None:
        if self._state == "attached":
            raise ReadOnlySessionError(f"cannot {what}: this session is attached to a checkpoint "
                                       "(read-only); use TrainingSession.from_checkpoint to train on")
        if self._state == "failed":
            raise RuntimeError(f"cannot {what}: the trainer failed:\n{self.error}")

    # -- control ---------------------------------------------------------------------------
    def start(self, max_steps: int | None = None) -> "TrainingSession":
        """Start (or continue after ``stop``/``finished``) training in the daemon thread.

        ``max_steps`` counts total steps (including restored ones): the run finishes there.
        Starting a paused session resumes it; starting a running one does nothing.
        """
        self._check_trainable("start")
        with self._cond:
            if max_steps is not None:
                self.max_steps = int(max_steps)
            if self._thread is not None and self._thread.is_alive():
                if self._state == "paused":
                    self._state = "running"
                    self._cond.notify_all()
                return self
            self._state = "running"
            self._stop_requested = False
            self._spawn()
        return self

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"train-{self.name}", daemon=True)
        self._thread.start()

    def pause(self, wait: bool = True, timeout: float | None = 30.0) -> bool:
        """Pause after the current step. With ``wait``, return once no step is running
        (then ``step`` does not change until ``resume``/``step_once``). True if paused."""
        with self._cond:
            if self._state == "running":
                self._state = "paused"
                self._cond.notify_all()
            if wait:
                self._cond.wait_for(lambda: not self._busy or self._state != "paused", timeout)
            return self._state == "paused" and not self._busy

    def resume(self) -> None:
        """Continue a paused run (a no-op unless paused)."""
        self._check_trainable("resume")
        with self._cond:
            if self._state == "paused":
                self._state = "running"
                self._cond.notify_all()

    def toggle(self) -> str:
        """Pause a running session, resume a paused one, start an idle one; the new state."""
        if self._state == "running":
            self.pause()
        elif self._state == "paused":
            self.resume()
        elif self._state in ("idle", "stopped", "finished"):
            self.start()
        return self._state

    def step_once(self, timeout: float | None = 60.0) -> dict[str, float]:
        """Do exactly one step on the training thread (pausing first if running); its metrics."""
        self._check_trainable("step")
        with self._cond:
            if self._state == "running":
                self._state = "paused"
                self._cond.notify_all()
            self._cond.wait_for(lambda: not self._busy, timeout)
            if self._thread is None or not self._thread.is_alive():
                self._state = "paused"
                self._stop_requested = False
                self._spawn()
            target = self._step + 1
            self._pending += 1
            self._cond.notify_all()
            # not busy: the step's snapshot and checkpoint (if due) are published too
            ok = self._cond.wait_for(lambda: self._done_step >= target
                                     or self._state == "failed" or self._stop_requested, timeout)
            if self._state == "failed":
                raise RuntimeError(f"the trainer failed:\n{self.error}")
            if not ok:
                raise TimeoutError(f"step_once: no step within {timeout} s")
            return dict(self._last_metrics)

    def stop(self, timeout: float | None = 30.0) -> None:
        """End the run after the current step and join the thread (it can be started again)."""
        with self._cond:
            self._stop_requested = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            if self._state in ("running", "paused", "idle"):
                self._state = "stopped"
            self._cond.notify_all()
        for w in list(self._writers):
            w.join(timeout)

    def close(self) -> None:
        """Stop training and the dispatcher thread; drop all subscribers."""
        if self._state != "attached":
            self.stop()
        with self._snap_cond:
            self._closing = True
            self._subscribers.clear()
            self._snap_cond.notify_all()
        if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(5.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the training thread to end (``max_steps`` reached, stopped, failed)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def wait_for_step(self, step: int, timeout: float | None = 30.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._done_step >= step or self._state
                                       in ("failed", "stopped", "finished"), timeout) and self._step >= step

    # -- the training thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            with self._trainer_lock:
                if self._snapshot is None or self._snapshot.step != self._step:
                    self._publish_locked()
            while True:
                with self._cond:
                    while True:
                        if self._stop_requested:
                            if self._state in ("running", "paused", "idle"):
                                self._state = "stopped"
                            return
                        if self._pending > 0:
                            self._pending -= 1
                            break
                        if self._state == "running":
                            if self.max_steps is not None and self._step >= self.max_steps:
                                self._state = "finished"
                                self._cond.notify_all()
                                return
                            break
                        self._cond.wait()
                    self._busy = True
                try:
                    self._do_step()
                finally:
                    with self._cond:
                        self._busy = False
                        self._done_step = self._step   # its snapshot/checkpoint are out too
                        self._cond.notify_all()
        except BaseException:  # noqa: BLE001  (a failed trainer must not kill the process)
            with self._cond:
                self.error = traceback.format_exc()
                self._state = "failed"
                self._busy = False
                self._cond.notify_all()
        finally:
            # The final state is always visible to viewers (deterministic: end of run).
            try:
                with self._trainer_lock:
                    if self._snapshot is None or self._snapshot.step != self._step \
                            or self._snapshot.state != self._state:
                        self._publish_locked()
            except BaseException:  # noqa: BLE001
                if self.error is None:
                    self.error = traceback.format_exc()

    def _do_step(self) -> None:
        with self._trainer_lock:
            t0 = time.perf_counter()
            metrics = _numeric(self.trainer.step())
            dt = time.perf_counter() - t0
            with self._cond:
                self._step += 1
                self._last_metrics = metrics
                self._run_seconds += dt
                rate = 1.0 / dt if dt > 0 else math.nan
                self._rate = rate if math.isnan(self._rate) else 0.9 * self._rate + 0.1 * rate
                self._cond.notify_all()
            self.history.append(self._step, metrics)
            if self._snapshot_due():
                self._publish_locked()
            if self._checkpoint_due():
                self._checkpoint_in_background_locked()

    def _snapshot_due(self) -> bool:
        if self.snapshot_every is not None and self._step % self.snapshot_every != 0:
            return False
        if self.snapshot_interval is not None and \
                time.monotonic() - self._last_snap_time < self.snapshot_interval:
            return False
        return True

    def _publish_locked(self) -> Snapshot:
        data = freeze(self.trainer.snapshot()) if self.trainer is not None else {}
        return self._publish(data)

    def _publish(self, data) -> Snapshot:
        with self._snap_cond:
            self._version += 1
            snap = Snapshot(version=self._version, step=self._step, state=self._state,
                            metrics=dict(self._last_metrics), data=data, kind=self.kind,
                            elapsed=self._run_seconds)
            self._snapshot = snap
            self._last_snap_time = time.monotonic()
            self._snap_cond.notify_all()
        return snap

    # -- viewers -----------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot | None:
        """The latest published snapshot (None before the first)."""
        return self._snapshot

    @property
    def snapshot_version(self) -> int:
        return self._version

    def wait_snapshot(self, after_version: int = 0, timeout: float | None = 30.0) -> Snapshot | None:
        """Block until a snapshot newer than ``after_version`` exists; it, or None on timeout."""
        with self._snap_cond:
            self._snap_cond.wait_for(lambda: self._version > after_version or self._closing, timeout)
            snap = self._snapshot
        return snap if snap is not None and snap.version > after_version else None

    def subscribe(self, callback: Callable[[Snapshot], Any]) -> int:
        """Call ``callback(snapshot)`` for each new snapshot (the current one first, if any).

        Calls come from one dispatcher thread, never the training thread; a slow callback
        skips versions instead of queueing them. Exceptions are kept in ``viewer_errors``.
        Returns a token for ``unsubscribe`` (the callback itself works too).
        """
        with self._snap_cond:
            if self._closing:
                raise RuntimeError("session is closed")
            token = next(self._sub_ids)
            self._subscribers[token] = [callback, 0]
            if self._dispatcher is None or not self._dispatcher.is_alive():
                self._dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                                    name=f"viewers-{self.name}")
                self._dispatcher.start()
            self._snap_cond.notify_all()
        return token

    def unsubscribe(self, token_or_callback) -> bool:
        """Stop calling a subscriber (a call already running finishes). True if it was there."""
        with self._snap_cond:
            for token, entry in list(self._subscribers.items()):
                if token == token_or_callback or entry[0] is token_or_callback \
                        or entry[0] == token_or_callback:
                    del self._subscribers[token]
                    return True
        return False

    @property
    def n_subscribers(self) -> int:
        return len(self._subscribers)

    def _dispatch(self) -> None:
        while True:
            with self._snap_cond:
                def pending():
                    return [(t, e[0]) for t, e in self._subscribers.items()
                            if e[1] < self._version]
                self._snap_cond.wait_for(lambda: self._closing or pending(), timeout=None)
                if self._closing:
                    return
                snap = self._snapshot
                todo = pending()
                for t, _ in todo:
                    self._subscribers[t][1] = snap.version
            for token, callback in todo:
                if token not in self._subscribers:
                    continue
                try:
                    callback(snap)
                except Exception:  # noqa: BLE001  (a broken viewer must not stop the others)
                    self.viewer_errors.append(traceback.format_exc())
                    del self.viewer_errors[:-20]

    def with_trainer(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(trainer)`` between two steps (the training thread waits meanwhile).

        For copying state (a model for a view, a checkpoint); ``fn`` must not draw from
        the trainer's random streams or the run would change.
        """
        with self._trainer_lock:
            return fn(self.trainer)

    # -- checkpoints ------------------------------------------------------------------------
    def _state_locked(self) -> tuple[dict, dict]:
        arrays, meta = split_state(self.trainer.state_dict())
        for name, a in self.history.to_arrays().items():
            arrays[f"{HISTORY_PREFIX}/{name}"] = a
        meta[META_KEY] = {"kind": self.kind, "metadata": _jsonable(self.metadata),
                          "step": self._step, "name": self.name,
                          "seconds": self._run_seconds, "saved_at": time.time()}
        return arrays, meta

    def checkpoint(self, path=None) -> Path:
        """Save the trainer's state (and the metrics history) now; the path written.

        ``path=None`` writes ``checkpoint_dir/ckpt-<step>.npz`` (keeping the newest
        ``checkpoint_keep``). The state is copied between two steps; the file is written
        atomically by ``lab.checkpoint`` outside the trainer lock.
        """
        if self.trainer is None or self._state == "attached":
            raise ReadOnlySessionError("an attached session has no trainer state to save")
        with self._trainer_lock:
            arrays, meta = self._state_locked()
            step = self._step
        return self._write(path, step, arrays, meta)

    def _write(self, path, step, arrays, meta) -> Path:
        from lab.checkpoint import save_checkpoint, save_step_checkpoint  # noqa: PLC0415
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("checkpoint(): give a path or construct the session with checkpoint_dir")
            out = save_step_checkpoint(self.checkpoint_dir, step, arrays, meta, keep=self.checkpoint_keep)
        else:
            out = save_checkpoint(path, arrays, meta)
        self.checkpoints.append(Path(out))
        del self.checkpoints[:-50]
        return Path(out)

    def _checkpoint_due(self) -> bool:
        if self.checkpoint_every_minutes is None:
            return False
        return time.monotonic() - self._last_ckpt_time >= 60.0 * float(self.checkpoint_every_minutes)

    def _checkpoint_in_background_locked(self) -> None:
        self._last_ckpt_time = time.monotonic()
        arrays, meta = self._state_locked()
        step = self._step

        def write():
            try:
                self._write(None, step, arrays, meta)
            except Exception:  # noqa: BLE001
                self.viewer_errors.append("checkpoint failed:\n" + traceback.format_exc())
        self._writers = [w for w in self._writers if w.is_alive()]
        w = threading.Thread(target=write, daemon=True, name=f"checkpoint-{self.name}")
        self._writers.append(w)
        w.start()

    @classmethod
    def _load(cls, path, factory):
        from lab.checkpoint import load_checkpoint  # noqa: PLC0415
        from lab.session.registry import build_trainer  # noqa: PLC0415
        arrays, meta = load_checkpoint(path)
        info = dict(meta.pop(META_KEY, None) or {})
        hist = {k[len(HISTORY_PREFIX) + 1:]: v for k, v in arrays.items()
                if k.startswith(HISTORY_PREFIX + "/")}
        arrays = {k: v for k, v in arrays.items() if not k.startswith(HISTORY_PREFIX + "/")}
        kind = info.get("kind") or meta.get("kind")
        metadata = dict(info.get("metadata") or {})
        metadata.setdefault("kind", kind)
        trainer = factory(metadata) if factory is not None else build_trainer(kind, metadata)
        if trainer is not None:
            trainer.load_state_dict(*join_state(arrays, meta))
        return trainer, arrays, meta, info, MetricsHistory.from_arrays(hist)

    @classmethod
    def attach(cls, checkpoint, factory: Callable[[dict], Any] | None = None,
               **kwargs) -> "TrainingSession":
        """A read-only session showing checkpoint ``checkpoint``: no training, ever.

        The trainer is rebuilt by ``factory(metadata)`` or the registry
        (``lab.session.registry``) so its ``snapshot()`` feeds the usual views; for an
        unknown kind the snapshot holds the raw arrays under ``"arrays"``.
        """
        trainer, arrays, meta, info, history = cls._load(checkpoint, factory)
        session = cls(trainer, name=kwargs.pop("name", None) or f"{info.get('kind', 'checkpoint')}@{Path(checkpoint).name}",
                      **kwargs)
        if trainer is None:
            session.kind = str(info.get("kind") or meta.get("kind") or "checkpoint")
        session.metadata = dict(info.get("metadata") or session.metadata)
        session.history = history
        session._step = session._done_step = int(info.get("step", meta.get("step", 0)) or 0)
        session._run_seconds = float(info.get("seconds", 0.0) or 0.0)
        session._state = "attached"
        session.source = Path(checkpoint)
        if trainer is not None:
            with session._trainer_lock:
                session._publish_locked()
        else:
            session._publish(freeze({"arrays": arrays, "meta": _jsonable(meta)}))
        return session

    @classmethod
    def from_checkpoint(cls, checkpoint, factory: Callable[[dict], Any] | None = None,
                        **kwargs) -> "TrainingSession":
        """A trainable session continuing from ``checkpoint`` (idle until ``start``)."""
        trainer, _, meta, info, history = cls._load(checkpoint, factory)
        if trainer is None:
            raise ValueError(f"no trainer factory for kind {info.get('kind')!r}: pass factory=")
        session = cls(trainer, **kwargs)
        session.history = history
        session._step = session._done_step = int(info.get("step", meta.get("step", 0)) or 0)
        session._run_seconds = float(info.get("seconds", 0.0) or 0.0)
        return session

    def __repr__(self) -> str:
        return f"<TrainingSession {self.name} {self._state} step={self._step}>"


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
