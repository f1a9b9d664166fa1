"""The GPU training step recorded once as a CUDA graph and replayed (``CapturedStep``).

Between its checks (every ``sync_every`` steps) the GPU trainer's step is the same
sequence of about 300 kernel launches each time. Issuing them from Python cost 15-18 ms
per ``mnist-thesis`` step on an H100 and an H200, several times their GPU time
(``benchmarks/results/gpu_h200_train_profile_eager.txt``). CuPy's stream capture records
the sequence once; replaying it is one launch. On an H200 that made the step 3.7 ms
(134k images/s, against 27.6k launched from Python; ``benchmarks/results/gpu_h200.json``),
and the replaying run stays as close to an eager run as two eager runs are to each
other (``gpu_check.py``'s ``train_graph``).

What a replay needs, and how it gets it:

* **The same memory.** A graph replays into the addresses it was recorded with. The
  recording allocates from a memory pool of its own that nothing else allocates from, so
  its temporaries stay reserved for the graph. Arrays made before the recording (the
  parameters, the optimizer's averages, cached constants, the random generator's state)
  are kept alive here and only ever change in place. A rollback or a reload rebinds
  them, so those drop the graph.
* **Fresh inputs.** Each step's minibatch is gathered into one fixed input buffer before
  the replay. The random numbers come from CuPy's generator, whose state lives on the
  device and advances with each replay exactly as with eager draws.
* **The same host numbers.** Step sizes (the optimizer's alphas times ``step_scale``) are
  kernel arguments frozen into the graph, so a change of them drops it. Only the
  conservative optimizer (thesis 2.5.3) qualifies: Adam's bias correction changes with
  every step.
* **No host work inside.** No matrix product through CuPy's cuBLAS wrapper (refused while
  recording, so ``MatMul`` takes ``lab.gpu.cublas`` on the GPU), no device->host read,
  and no host->device copy: an upload while recording is reported in :attr:`error`,
  and the trainer then stays eager.

A check (host reads of the loss terms, finiteness and the mixture) replays too and reads
:attr:`CapturedStep.outputs`, the recorded step's ``(loss, terms, out)``, which each replay
overwrites in place. Steps that count the optimizer's rules (a host read inside the
step) run eagerly. So do the steps after a start or a change until one has taken the
path the graph records, which compiles and caches everything the recording would
otherwise upload (the first step sets the optimizer's averages, the second takes its
fused kernel, the third records).
A replay does the Python bookkeeping of the step it stands for: the optimizer's step
count and the random stream's draw count.

``recorder`` is what records: :class:`CudaGraphRecorder` on CuPy, or
:class:`ReplayStandIn`, which replays by running the step function again (numpy), so
that the CPU tests can check the bookkeeping against the eager trainer bit for bit.
"""
from __future__ import annotations

import contextlib
import traceback


class CudaGraphRecorder:
    """Records a step function with CuPy's stream capture into a private memory pool."""

    executes_while_recording = False

    def __init__(self, cupy):
        self.cp = cupy

    def record(self, step_fn):
        """``(graph, keep)``: the recorded graph and what must outlive it (pool, stream).
        Raises ``RuntimeError`` naming every host->device copy made while recording."""
        cp = self.cp
        from lab.gpu.cublas import prepare  # noqa: PLC0415
        prepare((0,))                                   # cuBLAS handle made before recording
        pool = cp.cuda.MemoryPool()
        stream = cp.cuda.Stream(non_blocking=True)
        cp.cuda.get_current_stream().synchronize()
        uploads: list[str] = []
        with _upload_guard(cp, uploads), cp.cuda.using_allocator(pool.malloc), stream:
            stream.begin_capture()
            try:
                step_fn()
            except BaseException:
                with contextlib.suppress(Exception):
                    stream.end_capture()
                raise
            graph = stream.end_capture()
        if uploads:
            raise RuntimeError("host->device copies while recording the step (a graph would "
                               "replay stale host memory): " + "; ".join(uploads[:8]))
        return graph, (pool, stream)

    def launch(self, graph) -> None:
        graph.launch(stream=self.cp.cuda.get_current_stream())


class ReplayStandIn:
    """A CPU stand-in for :class:`CudaGraphRecorder`: "recording" runs the step (numpy
    executes at once) and a replay runs it again with the Python counters it moves
    restored, as a real replay leaves them alone."""

    executes_while_recording = True

    def __init__(self, trainer):
        self.trainer = trainer

    def record(self, step_fn):
        step_fn()
        return step_fn, ()

    def launch(self, graph) -> None:
        t = self.trainer
        counters = (t.optimizer.step_count, t.stream._draws)
        graph()
        t.optimizer.step_count, t.stream._draws = counters


def _lab_frame(frames) -> str | None:
    """``file:line`` of the innermost frame in this package outside this module."""
    for f in reversed(frames):
        if "/lab/" in f.filename and not f.filename.endswith("graph_step.py"):
            return f"{f.filename.rsplit('/lab/', 1)[-1]}:{f.lineno}"
    return None


@contextlib.contextmanager
def _upload_guard(cp, found: list):
    """Note every ``cupy.asarray``/``cupy.array`` of host data (a host->device copy)."""
    originals = cp.asarray, cp.array

    def guarded(fn, name):
        def wrapped(a, *args, **kwargs):
            if not isinstance(a, cp.ndarray):
                where = _lab_frame(traceback.extract_stack(limit=8)) or "?"
                found.append(f"{name}({type(a).__name__}) at {where}")
            return fn(a, *args, **kwargs)
        return wrapped

    cp.asarray, cp.array = guarded(originals[0], "asarray"), guarded(originals[1], "array")
    try:
        yield
    finally:
        cp.asarray, cp.array = originals


class CapturedStep:
    """``CapturedStep(trainer)``: the trainer's non-checking GPU step as a CUDA graph.

    ``run(idx)`` does one step on the training images ``idx`` (device indices) by replay,
    recording first where needed, and leaves its ``(loss, terms, out)`` in :attr:`outputs`;
    it returns False (step not done, :attr:`error` says why) when recording failed, and
    the trainer then steps eagerly for good.
    ``replayable()`` says whether the coming step may be replayed; ``warmed()`` is called
    after each eager step; ``drop()`` forgets the graph.
    """

    def __init__(self, trainer, recorder=None):
        self.trainer = trainer
        xp = trainer.backend.xp
        self.recorder = recorder or (CudaGraphRecorder(xp) if xp.__name__ == "cupy" else ReplayStandIn(trainer))
        self.graph = None
        self.error: str | None = unsupported(trainer)
        self.captures = 0
        self.replays = 0
        self._sig = None            # what the graph was recorded under
        self._warm = None           # the signature of the last eager step that took the fused path
        self._ready = False         # the optimizer's averages were set after the last eager step
        self._keep = ()
        self._draws = 0
        self.batch = None
        self.outputs = None         # the recorded step's (loss, terms, out): in the graph's memory

    # -- when ---------------------------------------------------------------------------
    def _signature(self):
        t, opt = self.trainer, self.trainer.optimizer
        return (float(opt.step_scale), tuple(opt.alphas), repr(opt.overrides),
                id(t.stream), id(t.stream._gen))

    def _counts_rules(self, step: int) -> bool:
        """Does the optimizer's step number ``step`` count its rules (a host read)?"""
        every = int(getattr(self.trainer.optimizer, "record_every", 0) or 0)
        return bool(every) and step % every == 0

    def replayable(self) -> bool:
        """May the coming step replay (recording first if there is no graph)? A graph
        recorded under other step sizes or another random stream is dropped here."""
        if self.error is not None or self._counts_rules(self.trainer.optimizer.step_count + 1):
            return False
        sig = self._signature()
        if self.graph is not None and sig != self._sig:
            self.drop()
        return sig == (self._sig if self.graph is not None else self._warm)

    def warmed(self) -> None:
        """After an eager step: a recording may follow if that step took the path it
        records, so that everything it uploads is cached (the optimizer's fused kernel
        and its constants run only once the averages are set and when rules are not
        counted)."""
        if self.error is not None:
            return
        opt = self.trainer.optimizer
        fused = self._ready and not self._counts_rules(opt.step_count)
        self._warm = self._signature() if fused else None
        self._ready = all(s.get("ready", 1) for s in opt.state.values())

    def drop(self) -> None:
        self.graph, self._sig, self._warm, self._keep, self._ready = None, None, None, (), False
        self.outputs = None

    # -- how ----------------------------------------------------------------------------
    def run(self, idx) -> bool:
        """The step on rows ``idx``, after :meth:`replayable` said yes."""
        t = self.trainer
        xp = t.backend.xp
        if self.batch is None:
            self.batch = xp.empty((len(idx),) + t.train_images.shape[1:], dtype=t._train_dev.dtype)
        xp.take(t._train_dev, idx, axis=0, out=self.batch)
        recorded = False
        if self.graph is None:
            if not self._record():
                return False
            if self.recorder.executes_while_recording:
                return True
            recorded = True                       # its first run is not a replay
        self.recorder.launch(self.graph)
        t.optimizer.step_count += 1
        t.stream._draws += self._draws
        self.replays += 0 if recorded else 1
        return True

    def _step(self) -> None:
        """What is recorded (the stand-in runs it again per replay)."""
        self.outputs = self.trainer._update(self.batch)

    def _record(self) -> bool:
        from lab.autodiff import tensor as _tensor  # noqa: PLC0415
        from lab.optim import conservative_gpu  # noqa: PLC0415
        t = self.trainer
        before = (t.optimizer.step_count, t.stream._draws)
        caches = (_tensor._DEVICE_CONSTANTS, conservative_gpu._coefficients)
        keys = [set(c) for c in caches]
        offset = t.model._offset_cache
        sig = self._signature()
        try:
            graph, keep = self.recorder.record(self._step)
        except Exception as exc:  # noqa: BLE001 - reported, and the trainer stays eager
            t.optimizer.step_count, t.stream._draws = before
            if not self.recorder.executes_while_recording:
                # anything cached while recording holds memory that was never written
                for cache, old in zip(caches, keys):
                    for k in set(cache) - old:
                        del cache[k]
                t.model._offset_cache = offset
            where = _lab_frame(traceback.extract_tb(exc.__traceback__))
            self.error = f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")
            self.drop()
            return False
        self._draws = t.stream._draws - before[1]
        if not self.recorder.executes_while_recording:
            t.optimizer.step_count, t.stream._draws = before
        self.graph, self._sig = graph, sig
        opt = t.optimizer
        self._keep = (keep, self.batch, t.stream, t.stream._gen, t.model._offset_cache,
                      list(_tensor._DEVICE_CONSTANTS.values()), list(conservative_gpu._coefficients.values()),
                      [p.data for p in t.model.params.values()],
                      [a for s in opt.state.values() for a in s.values() if hasattr(a, "shape")])
        self.captures += 1
        return True

    def info(self) -> dict:
        return {"captures": self.captures, "replays": self.replays, "error": self.error}


def unsupported(trainer) -> str | None:
    """Why ``trainer``'s step cannot be recorded as a CUDA graph (None: it can)."""
    from lab.optim.conservative import ConservativeOptimizer  # noqa: PLC0415
    if trainer.backend.name == "cpu":
        return "the CPU trainer steps eagerly"
    if not isinstance(trainer.optimizer, ConservativeOptimizer):
        return (f"optimizer {trainer.optimizer_name!r}: only the conservative optimizer's step "
                "has no per-step host numbers")
    if getattr(trainer.stream, "_numpy_draws", False):
        return "host random numbers (use_host_random) are uploaded every step"
    return None
