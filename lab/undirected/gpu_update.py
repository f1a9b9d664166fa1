"""Binary RBMs on the GPU (thesis chapter 3): PCD/FPCD updates, exact log Z and AIS with
fused CUDA kernels (``lab/gpu/kernels/rbm.cu``, ``logz.cu``) around cuBLAS products.

:class:`PersistentUpdateGPU`
    one PCD or FPCD update (3.2.4, steps 2-7) as 3 (PCD) or 4 (FPCD) matrix products and
    3 fused kernels: biases ride inside the products (augmented parameter matrices),
    sigmoid + sampling are one kernel per layer, and every weight, fast-overlay and bias
    update is one kernel. Products that do not depend on each other run side by side on
    two streams (they are too small to fill the GPU alone). Random numbers come from
    Philox inside the kernels, keyed by a step counter in device memory that the update
    itself advances, so :meth:`~PersistentUpdateGPU.capture` can record the whole update
    as a CUDA graph that draws fresh numbers on each replay.
:func:`reference_update`
    the same update in plain array code (numpy or CuPy) from given uniforms: the CPU
    reference the GPU is checked against (and itself checked against ``BinaryRBM``).
:func:`log_partition_gpu`
    exact log Z by enumerating the smaller layer: a fused "softplus-sum product" kernel
    over (low bits, high bits) state pairs, float64 sums, stable logsumexp.
:func:`ais_log_partition_gpu`
    AIS (``lab.undirected.ais``) with all runs as one batch, two fused kernels per
    temperature, optionally replayed as one captured CUDA graph per temperature.

Only binary visible layers (no softmax label group) and no momentum. Importing this
module does not import CuPy; every function needs CuPy arrays (or converts to them).
Checked against the CPU path and timed beside PyTorch on an H100 by
``benchmarks/gpu_check.py`` (``benchmarks/results/gpu_h100.json``).

Wiring into ``BinaryRBM`` (see the GPU notes in the README): when the backend is the
GPU, the algorithm is ``pcd``/``fpcd``, ``momentum == 0`` and ``n_softmax == 0``,
build ``PersistentUpdateGPU.from_rbm(rbm, batch_size)`` once, let it ``bind(rbm)`` (the
estimator's parameter arrays become views of its buffers) and call
``step(v_pos, lr=..., fast_lr=..., fast_decay=..., weight_decay=...)`` instead of the
generic update.
"""
from __future__ import annotations

import math

import numpy as np

from lab.gpu import kernel

_NULL = np.uint64(0)
_THREADS = 256


def _cupy():
    import cupy  # noqa: PLC0415  (GPU path only)
    return cupy


def _blocks(total: int, threads: int = _THREADS, cap: int = 4096) -> int:
    return max(1, min(cap, (int(total) + threads - 1) // threads))


def _gemm(transa, transb, a, b, out, slot: int = 0):
    """``out = op(a) @ op(b)`` by cuBLAS into a preallocated array (graph-capturable:
    ``lab.gpu.cublas``, since CuPy's own wrappers refuse to run during capture)."""
    from lab.gpu.cublas import gemm  # noqa: PLC0415
    return gemm(transa, transb, a, b, out, slot=slot)


class _Branch:
    """A second stream for products that do not depend on each other: ``fork()`` lets
    it start after the work queued so far on the current stream, ``join()`` makes the
    current stream wait for it. Inside a capture this records two parallel branches."""

    def __init__(self):
        cp = _cupy()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self._forked = cp.cuda.Event(block=False, disable_timing=True)
        self._done = cp.cuda.Event(block=False, disable_timing=True)

    def fork(self):
        self._forked.record(_cupy().cuda.get_current_stream())
        self.stream.wait_event(self._forked)
        return self.stream

    def join(self):
        self._done.record(self.stream)
        _cupy().cuda.get_current_stream().wait_event(self._done)


def _sigmoid(x, xp):
    return 1.0 / (1.0 + xp.exp(-x))


# ----------------------------------------------------------------------------------
# PCD / FPCD
# ----------------------------------------------------------------------------------

def reference_update(W, b, c, particles, v_pos, u_h, u_v, *, fast=None, lr, fast_lr=0.0,
                     fast_decay=19 / 20, weight_decay=0.0):
    """One PCD (``fast=None``) or FPCD update (3.2.4) in array code, from the uniforms
    ``u_h`` (m, n_hidden) and ``u_v`` (m, n_visible) that sample the particles' hidden and
    visible layers. ``fast = (fW, fb, fc)``: the overlay. Returns new arrays
    ``(W, b, c, particles, fast)``; the inputs are left alone."""
    xp = _xp(W)
    n, m = v_pos.shape[0], particles.shape[0]
    if fast is not None:
        Wn, bn, cn = W + fast[0], b + fast[1], c + fast[2]
    else:
        Wn, bn, cn = W, b, c
    h_pos = _sigmoid(v_pos @ W.T + c, xp)
    h_neg = _sigmoid(particles @ Wn.T + cn, xp)                 # steps 2-3
    h_s = (u_h < h_neg).astype(W.dtype)
    new_particles = (u_v < _sigmoid(h_s @ Wn + bn, xp)).astype(W.dtype)   # step 4
    gW = h_pos.T @ v_pos / n - h_neg.T @ particles / m          # step 5
    gb = v_pos.mean(axis=0) - particles.mean(axis=0)
    gc = h_pos.mean(axis=0) - h_neg.mean(axis=0)
    new_fast = None
    if fast is not None:                                        # step 7
        new_fast = tuple(f * fast_decay + fast_lr * g for f, g in zip(fast, (gW, gb, gc)))
    W = W + lr * (gW - weight_decay * W)                        # step 6
    return W, b + lr * gb, c + lr * gc, new_particles, new_fast


def _xp(a):
    from lab.backend import get_array_module  # noqa: PLC0415
    return get_array_module(a)


class PersistentUpdateGPU:
    """PCD/FPCD updates of a binary RBM on CuPy, each a fixed sequence of launches.

    Parameters are held augmented, ``P = [[W, c], [b, 0]]`` (n_hidden+1, n_visible+1),
    likewise the fast overlay ``F`` and the particles' parameters ``Pn = P + F``; the
    batch and the particles are the rows of ``V = [v_pos, 1; particles, 1]``. The usual
    arrays are views (:attr:`W`, :attr:`b`, :attr:`c`, :attr:`fast`, :attr:`particles`).
    ``seed`` keys the in-kernel Philox stream; :attr:`step_counter` (device) counts
    updates and picks fresh random numbers for each.
    """

    def __init__(self, W, b, c, particles, batch_size: int, *, fast=None, fpcd: bool = True,
                 seed: int = 0, fast_decay: float = 19 / 20, weight_decay: float = 0.0):
        cp = _cupy()
        f32 = np.float32
        nh, nv = (int(s) for s in W.shape)
        m, n = int(particles.shape[0]), int(batch_size)
        self.shape = (nh, nv, n, m)
        self.fpcd = bool(fpcd)
        self.P = cp.zeros((nh + 1, nv + 1), f32)
        self.P[:nh, :nv] = cp.asarray(W, f32)
        self.P[:nh, nv] = cp.asarray(c, f32)
        self.P[nh, :nv] = cp.asarray(b, f32)
        self.F = None
        self.Pn = self.P
        if self.fpcd:
            self.F = cp.zeros_like(self.P)
            if fast is not None:
                self.F[:nh, :nv] = cp.asarray(fast[0], f32)
                self.F[nh, :nv] = cp.asarray(fast[1], f32)
                self.F[:nh, nv] = cp.asarray(fast[2], f32)
            self.Pn = self.P + self.F
        self.V = cp.empty((n + m, nv + 1), f32)
        self.V[:, nv] = 1
        self.V[:n, :nv] = 0
        self.V[n:, :nv] = cp.asarray(particles, f32)
        self.H = cp.empty((n + m, nh), f32)
        self.Hcat = cp.empty((n + m, nh + 1), f32)
        self.Hs = cp.empty((m, nh + 1), f32)
        self.Vpre = cp.empty((m, nv + 1), f32)
        self.G = cp.empty((nh + 1, nv + 1), f32)
        self.step_counter = cp.zeros(1, dtype=cp.uint64)
        self.seed = int(seed) & (2**64 - 1)
        self.hyper = cp.zeros(4, f32)          # lr, fast lr, fast decay, weight decay
        self._hyper_host = None
        self.set_rates(0.0, 0.0, fast_decay, weight_decay)
        self.graph = None
        self.branch = _Branch()

    @classmethod
    def from_rbm(cls, rbm, batch_size: int, seed: int | None = None) -> "PersistentUpdateGPU":
        """From a fitted ``BinaryRBM`` (pcd/fpcd, no momentum, binary visible layer)."""
        algorithm = rbm.algorithm
        if algorithm not in ("pcd", "fpcd"):
            raise ValueError(f"PersistentUpdateGPU runs pcd/fpcd, not {algorithm!r}")
        if getattr(rbm, "momentum", 0):
            raise ValueError("PersistentUpdateGPU has no momentum")
        if getattr(rbm, "n_softmax", 0):
            raise ValueError("PersistentUpdateGPU has no softmax label group")
        fast = None
        if algorithm == "fpcd" and rbm.fast_components_ is not None:
            fast = (rbm.fast_components_, rbm.fast_intercept_visible_, rbm.fast_intercept_hidden_)
        if seed is None:
            seed = int(rbm.random_stream_.integers(0, 2**63 - 1))
        return cls(rbm.components_, rbm.intercept_visible_, rbm.intercept_hidden_,
                   rbm.fantasy_particles_, batch_size, fast=fast, fpcd=algorithm == "fpcd",
                   seed=seed, fast_decay=rbm.fast_decay, weight_decay=rbm.weight_decay)

    def bind(self, rbm) -> None:
        """Make the estimator's parameter arrays views of this object's buffers."""
        rbm.components_, rbm.intercept_visible_, rbm.intercept_hidden_ = self.W, self.b, self.c
        rbm.fantasy_particles_ = self.particles
        if self.fpcd:
            rbm.fast_components_, rbm.fast_intercept_visible_, rbm.fast_intercept_hidden_ = self.fast

    # -- views ------------------------------------------------------------------
    @property
    def W(self):
        nh, nv = self.shape[:2]
        return self.P[:nh, :nv]

    @property
    def b(self):
        nh, nv = self.shape[:2]
        return self.P[nh, :nv]

    @property
    def c(self):
        nh, nv = self.shape[:2]
        return self.P[:nh, nv]

    @property
    def fast(self):
        if self.F is None:
            return None
        nh, nv = self.shape[:2]
        return self.F[:nh, :nv], self.F[nh, :nv], self.F[:nh, nv]

    @property
    def particles(self):
        nh, nv, n, m = self.shape
        return self.V[n:, :nv]

    # -- inputs -----------------------------------------------------------------
    def set_rates(self, lr, fast_lr=None, fast_decay=None, weight_decay=None) -> None:
        """Learning rates etc. in device memory (a captured graph reads them there);
        copied only when they change."""
        old = self._hyper_host or (0.0, 0.0, 19 / 20, 0.0)
        new = (float(lr), old[1] if fast_lr is None else float(fast_lr),
               old[2] if fast_decay is None else float(fast_decay),
               old[3] if weight_decay is None else float(weight_decay))
        if new != self._hyper_host:
            self._copy_hyper(new)
            self._hyper_host = new

    _RING = 32

    def _copy_hyper(self, values) -> None:
        """Queue the copy of ``values`` into :attr:`hyper` without waiting for the GPU.

        The learning rate decays at every update, and a copy from ordinary (pageable)
        host memory first waits for the stream to drain, which would serialise the
        host's work with the GPU's. So the values go through a ring of pinned rows,
        each reused only after its previous copy has run (an event per row)."""
        cp = _cupy()
        if getattr(self, "_pinned", None) is None:
            import cupyx  # noqa: PLC0415
            self._pinned = cupyx.empty_pinned((self._RING, 4), np.float32)
            self._pinned_events = [cp.cuda.Event(block=False, disable_timing=True) for _ in range(self._RING)]
            self._pinned_used = [False] * self._RING
            self._ring_pos = 0
        k = self._ring_pos
        self._ring_pos = (k + 1) % self._RING
        if self._pinned_used[k]:
            self._pinned_events[k].synchronize()
        self._pinned[k] = values
        stream = cp.cuda.get_current_stream()
        self.hyper.set(self._pinned[k], stream=stream)
        self._pinned_events[k].record(stream)
        self._pinned_used[k] = True

    def load_batch(self, v) -> None:
        nh, nv, n, m = self.shape
        if tuple(v.shape) != (n, nv):
            raise ValueError(f"batch must be ({n}, {nv}), got {tuple(v.shape)}")
        self.V[:n, :nv] = v

    # -- the update -------------------------------------------------------------
    def _launch(self, u_h=None, u_v=None) -> None:
        nh, nv, n, m = self.shape
        P, Pn, V = self.P, self.Pn, self.V
        if Pn is P:                                                # PCD: one product
            _gemm("N", "T", V, P[:nh], self.H)                     # steps 2-3: [v, 1] P^T
        else:                                                      # FPCD: two, side by side
            with self.branch.fork():
                _gemm("N", "T", V[n:], Pn[:nh], self.H[n:], slot=1)
            _gemm("N", "T", V[:n], P[:nh], self.H[:n])
            self.branch.join()
        kernel("rbm.cu", "rbm_hidden_f32")(
            (_blocks((n + m) * (nh + 1)),), (_THREADS,),
            (self.H, self.Hcat, self.Hs, np.int32(n), np.int32(m), np.int32(nh),
             np.uint64(self.seed), self.step_counter, _NULL if u_h is None else u_h))
        with self.branch.fork():                                   # side by side:
            _gemm("T", "N", self.Hcat, V, self.G, slot=1)          # step 5, before V changes
        _gemm("N", "N", self.Hs, Pn, self.Vpre)                    # step 4: [h, 1] Pn
        self.branch.join()
        kernel("rbm.cu", "rbm_visible_f32")(
            (_blocks(m * (nv + 1)),), (_THREADS,),
            (self.Vpre, V[n:], np.int32(m), np.int32(nv), np.uint64(self.seed),
             self.step_counter, _NULL if u_v is None else u_v))
        kernel("rbm.cu", "rbm_update_f32")(                        # steps 6-7, Pn = P + F
            (_blocks((nh + 1) * (nv + 1)),), (_THREADS,),
            (P, _NULL if self.F is None else self.F, _NULL if self.F is None else Pn, self.G,
             self.hyper, np.int32(nh), np.int32(nv), self.step_counter))

    def step(self, v_pos=None, lr=None, fast_lr=None, fast_decay=None, weight_decay=None,
             u_h=None, u_v=None) -> None:
        """One update with the batch ``v_pos`` (or the one loaded before). ``u_h``/``u_v``:
        explicit uniforms (tests; not with a captured graph)."""
        if v_pos is not None:
            self.load_batch(v_pos)
        if lr is not None or fast_lr is not None or fast_decay is not None or weight_decay is not None:
            old = self._hyper_host
            self.set_rates(old[0] if lr is None else lr, fast_lr, fast_decay, weight_decay)
        if self.graph is not None and u_h is None and u_v is None:
            self.graph.launch(stream=_cupy().cuda.get_current_stream())
        else:
            cp = _cupy()
            if u_h is not None:
                u_h = cp.ascontiguousarray(cp.asarray(u_h, dtype=np.float32))
            if u_v is not None:
                u_v = cp.ascontiguousarray(cp.asarray(u_v, dtype=np.float32))
            self._launch(u_h, u_v)

    def uniforms(self, step: int | None = None):
        """The uniforms ``(u_h, u_v)`` the kernels draw at ``step`` (default: the next
        update), computed on the CPU by the numpy Philox reference."""
        from lab.gpu.philox import uniforms  # noqa: PLC0415
        nh, nv, n, m = self.shape
        if step is None:
            step = int(self.step_counter.get()[0])
        return uniforms(self.seed, 0, step, (m, nh)), uniforms(self.seed, 1, step, (m, nv))

    def capture(self) -> None:
        """Record one update as a CUDA graph; :meth:`step` replays it from then on."""
        cp = _cupy()
        nh, nv, n, m = self.shape
        for name in ("rbm_hidden_f32", "rbm_visible_f32", "rbm_update_f32"):
            kernel("rbm.cu", name)                                 # compile outside the capture
        from lab.gpu.cublas import prepare  # noqa: PLC0415
        prepare((0, 1))                                            # handles, workspaces
        stream = cp.cuda.Stream(non_blocking=True)
        cp.cuda.get_current_stream().synchronize()
        with stream:
            stream.begin_capture()
            try:
                self._launch()
            finally:
                graph = stream.end_capture()
        stream.synchronize()
        self.graph = graph


# ----------------------------------------------------------------------------------
# exact log Z
# ----------------------------------------------------------------------------------

def log_partition_gpu(W, b, c, *, dtype=np.float32, max_pairs: int = 1 << 26) -> float:
    """Exact ``log Z`` of the RBM ``(W, b, c)`` (W: n_hidden x n_visible), enumerating the
    smaller layer (up to 32 units) on the GPU. ``dtype``: the softplus arithmetic
    (float32: fast, |error| about 1e-4 nats for MNIST-sized models; float64: exact to
    rounding); sums are float64 either way."""
    cp = _cupy()
    W = cp.asarray(W, dtype=cp.float64)
    n_hidden, n_visible = W.shape
    if n_hidden <= n_visible:
        A, bias_enum, bias_other = W, cp.asarray(c, cp.float64), cp.asarray(b, cp.float64)
    else:
        A, bias_enum, bias_other = W.T, cp.asarray(b, cp.float64), cp.asarray(c, cp.float64)
    return log_sum_enumerated_gpu(A, bias_enum, bias_other, dtype=dtype, max_pairs=max_pairs)


def split_bits(n: int) -> tuple[int, int]:
    """(low, high) bits of the enumerated units: the low half indexes rows of the pair
    table, the high half its columns."""
    low = (n + 1) // 2
    return low, n - low


def log_sum_enumerated_gpu(A, bias_enum, bias_other, *, dtype=np.float32, max_pairs: int = 1 << 26) -> float:
    """``log sum_s exp(bias_enum . s + sum_i softplus(bias_other_i + (s A)_i))`` over all
    binary ``s`` of length ``A.shape[0]`` (see :func:`log_partition_gpu`)."""
    from lab.gpu import suffix  # noqa: PLC0415
    from lab.undirected.partition import MAX_ENUMERATED_UNITS, state_table  # noqa: PLC0415
    cp = _cupy()
    A = cp.asarray(A, cp.float64)
    n, m = (int(s) for s in A.shape)
    if n > MAX_ENUMERATED_UNITS:
        raise ValueError(f"exact enumeration of 2^{n} states is out of reach (limit 2^{MAX_ENUMERATED_UNITS})")
    dt = np.dtype(dtype)
    low, high = split_bits(n)
    S_low, S_high = state_table(low, cp), state_table(high, cp)
    X_low = cp.ascontiguousarray((cp.asarray(bias_other, cp.float64)[None, :] + S_low @ A[:low]).astype(dt))
    X_high = cp.ascontiguousarray((S_high @ A[low:]).astype(dt)) if high else cp.zeros((1, m), dt)
    e_low = cp.ascontiguousarray(S_low @ cp.asarray(bias_enum, cp.float64)[:low])
    e_high = cp.ascontiguousarray(S_high @ cp.asarray(bias_enum, cp.float64)[low:]) if high \
        else cp.zeros(1, cp.float64)
    n_low, n_high = X_low.shape[0], X_high.shape[0]
    chunk = max(64, (max_pairs // n_low) // 64 * 64)
    fn = kernel("logz.cu", f"logz_pairs_{suffix(dt)}")
    maxima, sums = [], []
    for h0 in range(0, n_high, chunk):
        w = min(chunk, n_high - h0)
        L = cp.empty((n_low, w), cp.float64)
        fn(((w + 63) // 64, (n_low + 63) // 64), (256,),
           (X_low, X_high[h0:], e_low, e_high[h0:], L, np.int32(n_low), np.int32(w), np.int32(m), np.int32(w)))
        mx = L.max()
        maxima.append(mx)
        sums.append(cp.exp(L - mx).sum())
    maxima, sums = cp.stack(maxima), cp.stack(sums)
    top = maxima.max()
    return float(top + cp.log((sums * cp.exp(maxima - top)).sum()))


# ----------------------------------------------------------------------------------
# AIS
# ----------------------------------------------------------------------------------

def ais_log_partition_gpu(W, b, c, base_rate, *, n_runs: int = 100, betas=None, seed: int = 0,
                          graph: bool = False):
    """AIS estimate of log Z (as ``lab.undirected.ais.ais_log_partition``, same path of
    distributions and the same float32/float64 split) with all runs in one batch and two
    fused kernels per temperature; ``graph=True`` records one temperature step as a CUDA
    graph and replays it (the step index and random counter live in device memory).
    Returns an ``AISResult``."""
    import time  # noqa: PLC0415
    from lab.undirected.ais import ais_result, base_rate_biases, default_betas  # noqa: PLC0415
    from lab.backend import to_numpy  # noqa: PLC0415
    from lab.gpu.philox import uniforms  # noqa: PLC0415
    cp = _cupy()
    start = time.perf_counter()
    betas = default_betas() if betas is None else np.asarray(betas, dtype=np.float64)
    if betas[0] != 0.0 or betas[-1] != 1.0 or np.any(np.diff(betas) <= 0):
        raise ValueError("betas must increase strictly from 0 to 1")
    f32 = np.float32
    Wf = cp.ascontiguousarray(cp.asarray(W, f32))
    nh, nv = Wf.shape
    # contiguous copies: the kernels index b[i], c[j], and an estimator's c is a strided
    # column view of PersistentUpdateGPU's augmented parameters
    bB, cB = cp.ascontiguousarray(cp.asarray(b, f32)), cp.ascontiguousarray(cp.asarray(c, f32))
    bA64 = base_rate_biases(base_rate)
    bA = cp.asarray(bA64, f32)
    log_z_base = float(np.logaddexp(0, bA64).sum() + nh * math.log(2.0))
    db = cp.asarray(np.asarray(to_numpy(b), np.float64) - bA64)
    # exact sample of the base model (stream 2 of step 0: the kernels use steps >= 1)
    p0 = 1 / (1 + np.exp(-bA64))
    V = cp.asarray((uniforms(seed, 2, 0, (n_runs, nv)) < p0).astype(f32))
    log_w = cp.zeros(n_runs, cp.float64)
    d_betas = cp.asarray(betas)
    t = cp.ones(1, dtype=cp.uint64)
    X = cp.empty((n_runs, nh), f32)
    Hs = cp.empty((n_runs, nh), f32)
    Vpre = cp.empty((n_runs, nv), f32)
    seed64 = np.uint64(int(seed) & (2**64 - 1))
    hidden = kernel("rbm.cu", "ais_hidden_f32")
    visible = kernel("rbm.cu", "ais_visible_f32")
    advance = kernel("rbm.cu", "counter_advance")

    def one_step():
        _gemm("N", "T", V, Wf, X)
        hidden((min(n_runs, 65535),), (_THREADS,),
               (X, cB, V, db, d_betas, t, log_w, Hs, np.int32(n_runs), np.int32(nh), np.int32(nv), seed64))
        _gemm("N", "N", Hs, Wf, Vpre)
        visible((_blocks(n_runs * nv),), (_THREADS,),
                (Vpre, bA, bB, d_betas, t, V, np.int32(n_runs), np.int32(nv), seed64))
        advance((1,), (1,), (t,))

    steps = len(betas) - 1
    if graph and steps > 1:
        one_step()                                          # compiles, warms cuBLAS: step 1
        stream = cp.cuda.Stream(non_blocking=True)
        cp.cuda.get_current_stream().synchronize()
        with stream:
            stream.begin_capture()
            try:
                one_step()
            finally:
                g = stream.end_capture()
        current = cp.cuda.get_current_stream()
        for _ in range(steps - 1):
            g.launch(stream=current)
    else:
        for _ in range(steps):
            one_step()
    return ais_result(cp.asnumpy(log_w), log_z_base, len(betas), time.perf_counter() - start)
