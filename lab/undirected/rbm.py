"""Binary restricted Boltzmann machines (thesis 1.3.2 and chapter 3).

``BinaryRBM`` follows ``sklearn.neural_network.BernoulliRBM`` (same learned attribute
names: ``components_`` (n_hidden, n_visible), ``intercept_hidden_``,
``intercept_visible_``) and adds the thesis's training algorithms (CD-k, MF-CD, PL,
PCD, FPCD), the linear learning-rate decay of 3.3.1 over a run bounded by updates or
wall time, and exact or AIS log-likelihoods.

Energy: ``E(v, h) = -h^T W v - b.v - c.h``; ``W = components_``, ``b = intercept_visible_``,
``c = intercept_hidden_``. Array code uses ``xp`` (numpy or CuPy, ``device=``).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from lab.backend import DEFAULT_FLOAT, get_backend, to_numpy
from lab.undirected import algorithms as alg
from lab.undirected import binary_products as bp
from lab.undirected import parallel
from lab.undirected.parallel import single_threaded_blas_on_cpu
from lab.undirected import fpcd_step, logistic, philox_uniforms
from lab.undirected._base import Estimator, ScheduledTrainer, check_data, make_stream, sigmoid_
from lab.undirected.partition import rbm_free_energy, rbm_log_partition


@dataclass(frozen=True)
class LogPartition:
    """An estimate of ``log Z``: exact (lower == upper == value) or AIS with a ±3σ interval."""

    value: float
    lower: float
    upper: float
    method: str
    seconds: float


class _RBMBase(ScheduledTrainer, Estimator):
    """Training machinery shared by ``BinaryRBM`` and ``ClassificationRBM``."""

    _n_softmax = 0     # trailing visible units that form one softmax group

    # -- state -------------------------------------------------------------------
    @property
    def _xp(self):
        return self.backend_.xp

    @property
    def _visible(self) -> alg.VisibleLayer:
        return alg.VisibleLayer(self._n_softmax)

    def _check_hyperparameters(self) -> None:
        if self.algorithm not in alg.ALGORITHMS:
            raise ValueError(f"algorithm must be one of {alg.ALGORITHMS}, got {self.algorithm!r}")
        if self.algorithm == "pl" and self._n_softmax:
            raise ValueError("algorithm='pl' is implemented for binary RBMs only")
        for name in ("n_hidden", "batch_size", "n_fantasy", "cd_k"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.learning_rate >= 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate!r}")
        if not 0 <= self.fast_decay <= 1:
            raise ValueError(f"fast_decay must be in [0, 1], got {self.fast_decay!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.n_updates is not None and self.n_updates < 0:
            raise ValueError(f"n_updates must be >= 0 or None, got {self.n_updates!r}")
        if self.max_seconds is not None and self.max_seconds < 0:
            raise ValueError(f"max_seconds must be >= 0 or None, got {self.max_seconds!r}")
        if self.learning_rate_schedule not in ("linear", "constant"):
            raise ValueError("learning_rate_schedule must be 'linear' or 'constant', "
                             f"got {self.learning_rate_schedule!r}")
        if self.n_jobs is not None and (not isinstance(self.n_jobs, (int, np.integer)) or self.n_jobs < 1):
            raise ValueError(f"n_jobs must be None or a positive integer, got {self.n_jobs!r}")
        if self.visible_bias_init not in ("zero", "data"):
            raise ValueError(f"visible_bias_init must be 'zero' or 'data', got {self.visible_bias_init!r}")

    def _initialize(self, n_visible: int, data_mean=None) -> None:
        """Create the learned state (thesis 3.2.4 'Initialization'). ``data_mean``: a
        function giving the training data's mean, called only for
        ``visible_bias_init="data"``."""
        self._check_hyperparameters()
        self.backend_ = get_backend(self.device)
        xp = self._xp
        self.random_stream_ = make_stream(self.random_state, self.backend_)
        self.n_features_in_ = n_visible
        # slow weights: small random values; visible biases: zero or the data's log-odds
        self.components_ = self.random_stream_.normal((self.n_hidden, n_visible), scale=0.01,
                                                      dtype=DEFAULT_FLOAT)
        if self.backend_.name == "cpu":
            # each visible unit's weights contiguous (as sklearn's BernoulliRBM keeps
            # them): products with binary states sum these rows (binary_products)
            self.components_ = np.asfortranarray(self.components_)
            bp.warm_up()
            logistic.warm_up()
            philox_uniforms.warm_up()
            fpcd_step.warm_up()
        self.intercept_hidden_ = xp.zeros(self.n_hidden, dtype=DEFAULT_FLOAT)
        self.intercept_visible_ = xp.zeros(n_visible, dtype=DEFAULT_FLOAT)
        if self.visible_bias_init == "data" and data_mean is not None:
            self.intercept_visible_ = self._log_odds(data_mean())
        # persistent chains start at all-zero states
        self.fantasy_particles_ = None
        if self.algorithm in alg.PERSISTENT:
            self.fantasy_particles_ = xp.zeros((self.n_fantasy, n_visible), dtype=DEFAULT_FLOAT)
        # FPCD's fast overlay theta_delta = theta_fast - theta_slow starts at zero
        self.fast_components_ = self.fast_intercept_hidden_ = self.fast_intercept_visible_ = None
        if self.algorithm == "fpcd":
            self.fast_components_ = xp.zeros_like(self.components_)
            self.fast_intercept_hidden_ = xp.zeros_like(self.intercept_hidden_)
            self.fast_intercept_visible_ = xp.zeros_like(self.intercept_visible_)
        self._velocity = None
        if self.momentum:
            self._velocity = [xp.zeros_like(self.components_), xp.zeros_like(self.intercept_visible_),
                              xp.zeros_like(self.intercept_hidden_)]
        self.n_updates_ = 0
        self.train_seconds_ = 0.0
        self.learning_rate_ = float(self.learning_rate)
        self.n_jobs_ = self._resolve_n_jobs(n_visible)
        self._phases = alg.Phases(parallel.Slices(self.n_jobs_), self.n_hidden, self._visible,
                                  n_visible, self.random_stream_, xp)
        self._visible_sum = xp.zeros(n_visible, dtype=np.float64)
        self._n_seen = 0
        self._logz_cache: dict = {}
        self._lock = threading.RLock()

    def _resolve_n_jobs(self, n_visible: int) -> int:
        """Worker threads for the updates: one on the GPU, or when threads cannot pay off
        (small models, or no ``threadpoolctl`` to keep BLAS single-threaded)."""
        if self.backend_.name != "cpu":
            return 1
        if self.n_jobs is not None:
            return int(self.n_jobs) if parallel.have_blas_control() else 1
        big = self.n_hidden * n_visible >= 1 << 16
        return min(2, parallel.cpu_count()) if (big and parallel.have_blas_control()) else 1

    def _log_odds(self, mean):
        xp = self._xp
        mean = xp.clip(xp.asarray(mean, dtype=np.float64), 1e-3, 1 - 1e-3)
        out = xp.log(mean / (1 - mean)).astype(DEFAULT_FLOAT)
        if self._n_softmax:
            out[-self._n_softmax:] = 0
        return out

    # -- schedule ----------------------------------------------------------------
    @property
    def current_learning_rate_(self) -> float:
        """The slow learning rate the next update will use."""
        self._check_is_fitted("components_")
        return self.schedule_.rate(self.n_updates_, self.train_seconds_)

    @property
    def effective_fast_learning_rate_(self) -> float:
        """FPCD's constant fast learning rate (default: the initial slow learning rate)."""
        return float(self.learning_rate if self.fast_learning_rate is None else self.fast_learning_rate)

    @property
    def base_rate_(self):
        """Mean of the training data seen so far (the AIS base-rate model uses it)."""
        self._check_is_fitted("components_")
        return self._visible_sum / max(1, self._n_seen)

    # -- one update ---------------------------------------------------------------
    def _prepare_batch(self, v):
        """Training cases as a float32 device array; binarized afresh when asked (3.3.2)."""
        v = self.backend_.asarray(v, dtype=DEFAULT_FLOAT)
        if self.binarize:
            v = alg.bernoulli(v, self.random_stream_)
        return v

    def _ensure_state(self) -> None:
        """State an algorithm needs, created if hyperparameters changed after fitting (a
        dashboard may switch PCD to FPCD or turn on momentum mid-run)."""
        xp = self._xp
        if self.algorithm in alg.PERSISTENT and (self.fantasy_particles_ is None or
                                                 self.fantasy_particles_.shape[0] != self.n_fantasy):
            self.fantasy_particles_ = xp.zeros((self.n_fantasy, self.components_.shape[1]),
                                               dtype=DEFAULT_FLOAT)
        if self.algorithm == "fpcd" and self.fast_components_ is None:
            self.fast_components_ = xp.zeros_like(self.components_)
            self.fast_intercept_hidden_ = xp.zeros_like(self.intercept_hidden_)
            self.fast_intercept_visible_ = xp.zeros_like(self.intercept_visible_)
        if self.momentum and self._velocity is None:
            self._velocity = [xp.zeros_like(self.components_), xp.zeros_like(self.intercept_visible_),
                              xp.zeros_like(self.intercept_hidden_)]
        if not self.momentum:
            self._velocity = None
        if self.backend_.name == "cpu" and not bp.weights_fit(self.components_):
            # weights assigned from outside (a checkpoint, a user): back to the layout
            # of _initialize, values unchanged
            self.components_ = np.asfortranarray(self.components_)
            if self.fast_components_ is not None:
                self.fast_components_ = np.asfortranarray(self.fast_components_)
            if self._velocity is not None:
                self._velocity[0] = np.asfortranarray(self._velocity[0])

    def _update(self, v_pos) -> None:
        """One parameter update from the minibatch ``v_pos`` (float32, on the device)."""
        if self._fused_gpu_update_applies():
            self._update_fused_gpu(v_pos)
            return
        self._ensure_state()
        xp = self._xp
        lr = self.schedule_.rate(self.n_updates_, self.train_seconds_)
        W, b, c = self.components_, self.intercept_visible_, self.intercept_hidden_
        ph = self._phases
        ph.forget_states()
        algorithm = self.algorithm
        if algorithm == "pl":
            gW, gb, gc = alg.pl_gradient(v_pos, W, b, c, xp)
            self._apply_rows(slice(None), gW, lr)
            self._apply_biases(gb, gc, lr)
        elif algorithm in alg.PERSISTENT:
            self._persistent_update(v_pos, lr)
        else:
            if algorithm == "cd":
                h_pos, v_neg, h_neg = alg.cd_statistics(ph, v_pos, W, b, c, self.cd_k)
            else:
                h_pos, v_neg, h_neg = alg.mfcd_statistics(ph, v_pos, W, b, c, self.cd_k)
            self._apply_statistics(v_pos, h_pos, v_neg, h_neg, lr)
        self._visible_sum += v_pos.sum(axis=0)
        self._n_seen += v_pos.shape[0]
        self.n_updates_ += 1
        self.learning_rate_ = lr

    # -- the fused GPU update (lab.undirected.gpu_update) ----------------------------
    #: Record the fused update as a CUDA graph after its first (eager) step; a failed
    #: capture falls back to eager launches (``_gpu_graph_error`` says why).
    _gpu_graph = True

    def _fused_gpu_update_applies(self) -> bool:
        """PCD/FPCD on the GPU, no momentum, binary visible layer: the fused kernels."""
        return (self.backend_.name == "gpu" and self.algorithm in alg.PERSISTENT
                and not self.momentum and self._n_softmax == 0)

    def _update_fused_gpu(self, v_pos) -> None:
        """Steps 2-7 of 3.2.4 as ``PersistentUpdateGPU`` (cuBLAS products and three fused
        kernels, in-kernel Philox), then the same bookkeeping as the generic update. The
        estimator's arrays are views of its buffers (``bind``); it is rebuilt when the
        batch size, the algorithm or ``n_fantasy`` change, or when any of those arrays was
        replaced from outside (checked on an H100 by benchmarks/gpu_check.py)."""
        from lab.undirected.gpu_update import PersistentUpdateGPU  # noqa: PLC0415
        self._ensure_state()
        lr = self.schedule_.rate(self.n_updates_, self.train_seconds_)
        key = (int(v_pos.shape[0]), self.algorithm, int(self.n_fantasy))
        names = ("components_", "intercept_visible_", "intercept_hidden_", "fantasy_particles_",
                 "fast_components_", "fast_intercept_visible_", "fast_intercept_hidden_")
        up = getattr(self, "_gpu_update", None)
        bound = getattr(self, "_gpu_bound", None)
        if (up is None or self._gpu_update_key != key or bound is None
                or any(getattr(self, n) is not a for n, a in zip(names, bound))):
            up = PersistentUpdateGPU.from_rbm(self, key[0])
            up.bind(self)
            self._gpu_update, self._gpu_update_key = up, key
            self._gpu_bound = tuple(getattr(self, n) for n in names)
            self._gpu_steps = 0
        up.step(v_pos, lr=lr, fast_lr=self.effective_fast_learning_rate_,
                fast_decay=self.fast_decay, weight_decay=self.weight_decay)
        self._gpu_steps += 1
        if self._gpu_graph and self._gpu_steps == 1 and up.graph is None:
            try:
                up.capture()
            except Exception as exc:   # stay eager: correct, only slower
                self._gpu_graph_error = f"{type(exc).__name__}: {exc}"
        self._visible_sum += v_pos.sum(axis=0)
        self._n_seen += v_pos.shape[0]
        self.n_updates_ += 1
        self.learning_rate_ = lr

    def _persistent_update(self, v_pos, lr: float) -> None:
        """PCD / FPCD: steps 2-7 of the pseudocode in 3.2.4, in one pass of the workers.

        Each worker owns a slice of the hidden units and, for it: P(h | v_pos) under the
        slow weights (step 2) and P(h | particles) under the negative-phase weights
        (step 3: slow for PCD, slow + fast overlay for FPCD), the particles' hidden sample
        and that slice's share of the visible pre-activation for the Gibbs update
        (step 4, taken before the weights move), then the gradient of its rows (one
        product ``[h_pos/n; -h_neg/m]^T [v_pos; particles]``) and their update (steps
        5-7). The calling thread meanwhile draws the uniforms (the hidden ones first: the
        workers wait for them only after steps 2-3, and for the rest before they move any
        weight, so a failed draw leaves no slice updated), then takes the last slice
        itself; it then finishes step 4 (sum of the shares, sample) and updates the biases. One
        hand-off per update: on a VM, waking a sleeping worker costs as much as a small
        product. The draws come in the same order with or without workers. FPCD's
        negative-phase weights are formed per slice, in the workers. PCD and FPCD do the
        same arithmetic, so a zero fast learning rate gives PCD bit for bit. When the data
        and the particles are binary and sparse, the first worker lists their 1s before
        step 2, and steps 2, 3 and 5-7 are row sums (``binary_products``); step 4's
        hidden sample stays a dense product.
        """
        xp = self._xp
        W, b, c = self.components_, self.intercept_visible_, self.intercept_hidden_
        fpcd = self.algorithm == "fpcd"
        bn, cn = ((b + self.fast_intercept_visible_, c + self.fast_intercept_hidden_)
                  if fpcd else (b, c))
        particles = self.fantasy_particles_
        n, m = v_pos.shape[0], particles.shape[0]
        negative_weights = self._negative_weights_buffer() if fpcd else W   # step 3's weights
        ph = self._phases
        slices = ph.hidden_slices
        binary = self._row_sum_layout()
        H = xp.empty((n + m, W.shape[0]), dtype=W.dtype)
        gc = xp.empty(W.shape[0], dtype=W.dtype)
        shares = [None] * len(slices)
        draws = {}
        listed = threading.Event()
        hidden_drawn, all_drawn = threading.Event(), threading.Event()
        stack_lock = threading.Lock()

        def states_of(v):     # where binary v is 1, for row-sum products; None: dense
            return bp.BinaryStates.of(v) if binary else None

        def draw():
            # in the calling thread while the first worker lists the 1s of v_pos and
            # of the particles and the others do steps 2-3: the hidden uniforms (the
            # workers sample with them), then the visible ones (the workers wait for
            # these before moving any weight: a failed draw leaves no slice updated)
            try:
                draws["u_h"] = ph.hidden_uniforms(m)
                hidden_drawn.set()
                draws["u_v"] = ph.visible_uniforms(m, particles.dtype)
                draws["gb"] = alg.vcat_bias(v_pos, particles)
            finally:
                hidden_drawn.set()
                all_drawn.set()

        def stacked():        # steps 5-7 need [v_pos; particles]: their 1s, or them
            with stack_lock:
                if "both" not in draws:
                    pos, neg = draws["pos"], draws["neg"]
                    both = None if pos is None or neg is None else bp.BinaryStates.stack(pos, neg)
                    draws["V"] = xp.concatenate([v_pos, particles]) if both is None else None
                    draws["both"] = both
                return draws["both"], draws["V"]

        def wait_for(event, key):
            event.wait()
            if key not in draws:
                raise RuntimeError("preparing this update's random numbers or states failed")

        def work(k):
            sl = slices[k]
            hs = H[:, sl]
            if fpcd:                                             # slow + fast overlay
                xp.add(W[sl], self.fast_components_[sl], out=negative_weights[sl])
            Wn = negative_weights[sl]
            if k == 0:
                try:
                    draws["pos"] = states_of(v_pos)
                    draws["neg"] = states_of(particles)
                finally:
                    listed.set()
            wait_for(listed, "neg")
            if draws["pos"] is None:
                xp.matmul(v_pos, W[sl].T, out=hs[:n])            # step 2
            else:                                                # the same, as row sums
                bp.hidden_pre(draws["pos"], W.T, sl.start, H[:n], sl)
            if draws["neg"] is None:
                xp.matmul(particles, Wn.T, out=hs[n:])           # step 3
            else:
                bp.hidden_pre(draws["neg"], negative_weights.T, sl.start, H[n:], sl)
            hs[:n] += c[sl]
            hs[n:] += cn[sl]
            sigmoid_(hs, xp)
            wait_for(hidden_drawn, "u_h")
            h_sample = xp.less(draws["u_h"][:, sl], hs[n:]).astype(hs.dtype)
            shares[k] = h_sample @ Wn                            # step 4, this slice's share
            wait_for(all_drawn, "gb")
            states, V = stacked()
            self._statistics_step(sl, H, V, n, lr, gc, states)          # steps 5-7

        ph.runner.run(work, range(len(slices)), meanwhile=draw)
        pre = shares[0]
        for share in shares[1:]:
            pre += share
        pre += bn
        self.fantasy_particles_ = self._visible.sample_(pre, draws["u_v"], xp)   # step 4
        self._apply_biases(draws["gb"], gc, lr)

    def _negative_weights_buffer(self):
        """Where FPCD's workers form slow + fast weights each update (step 3's weights):
        kept across updates, in the weights' layout, so that step 3's row sums read it
        as they read the slow weights for PCD."""
        W = self.components_
        buf = getattr(self, "_negative_weights", None)
        if (buf is None or type(buf) is not type(W) or buf.dtype != W.dtype
                or buf.shape != W.shape or buf.strides != W.strides):
            buf = self._negative_weights = self._xp.empty_like(W)
        return buf

    def _apply_statistics(self, v_pos, h_pos, v_neg, h_neg, lr: float) -> None:
        """Steps 5-7 of 3.2.4 for CD and MF-CD: g = positive - negative statistics, one
        matrix product ``[h_pos/n; -h_neg/m]^T [v_pos; v_neg]`` per slice of hidden units,
        applied to those rows of the weights in the same thread."""
        xp = self._xp
        n = v_pos.shape[0]
        vcat, hcat = xp.concatenate([v_pos, v_neg]), xp.concatenate([h_pos, h_neg])
        states = self._stacked_states(v_pos, v_neg)
        gc = xp.empty(hcat.shape[1], dtype=hcat.dtype)
        gb = []

        def rows(sl):
            self._statistics_step(sl, hcat, vcat, n, lr, gc, states)

        self._phases.runner.run(rows, self._phases.hidden_slices,
                                meanwhile=lambda: gb.append(alg.vcat_bias(v_pos, v_neg)))
        self._apply_biases(gb[0], gc, lr)

    def _row_sum_layout(self) -> bool:
        """Whether the weights (and FPCD's fast overlay) are laid out for row-sum products
        (Fortran order, as ``_initialize`` and ``_ensure_state`` keep them on the CPU)."""
        return bp.weights_fit(self.components_) and (
            self.algorithm != "fpcd" or bp.weights_fit(self.fast_components_))

    def _stacked_states(self, v_pos, v_neg):
        """``BinaryStates`` of ``[v_pos; v_neg]`` when both are binary and sparse enough
        and the weights are laid out for row sums; None: dense products."""
        if not self._row_sum_layout():
            return None
        pos, neg = self._phases.states(v_pos), self._phases.states(v_neg)
        if pos is None or neg is None:
            return None
        both = bp.BinaryStates.stack(pos, neg)
        both.by_unit()      # once, before the workers share it
        return both

    def _statistics_step(self, sl, H, V, n: int, lr: float, gc, states=None) -> None:
        """For the hidden units ``sl``: ``H[:, sl] = [h_pos; h_neg]`` (overwritten) and
        the stacked visible states ``V = [v_pos; v_neg]`` (``n`` positive rows) give the
        hidden-bias gradient (into ``gc[sl]``) and one product ``[h_pos/n; -h_neg/m]^T
        V``, applied to those weight rows. Without momentum the learning rate is folded
        into the product, which is then the step itself. With ``states`` (the 1s of a
        binary ``V``, which may then be None) the product is a row sum; otherwise it is
        formed transposed, in the weights' own layout."""
        hs = H[:, sl]
        m = hs.shape[0] - n
        folded = lr > 0 and self._velocity is None
        scale = lr if folded else 1.0
        gc[sl] = hs[:n].mean(axis=0) - hs[n:].mean(axis=0)
        hs[:n] *= scale / n
        hs[n:] *= -scale / m
        if states is not None and folded:
            self._apply_rows_binary(sl, states, H, lr)
            return
        if states is not None:
            G = bp.weight_gradient(states, H, sl).T
        elif bp.weights_fit(self.components_):
            G = (V.T @ hs).T
        else:
            G = hs.T @ V
        self._apply_rows(sl, G, lr, folded)

    def _apply_rows(self, sl, G, lr: float, folded: bool = False) -> None:
        """Update weight rows ``sl`` with the gradient estimate ``G`` (overwritten), or
        with ``G = lr * gradient`` when ``folded``."""
        W = self.components_
        f = W.dtype.type       # scalars in the weights' precision, as fpcd_step's kernel
        if self.algorithm == "fpcd":
            flr = self.effective_fast_learning_rate_
            if folded and fpcd_step.apply(W, self.fast_components_, sl, G, lr, self.weight_decay,
                                          self.fast_decay, flr):
                return                                           # steps 6-7 in one pass
            # step 7: theta_delta = lambda * theta_delta + g * fast learning rate
            fast = self.fast_components_[sl]
            fast *= f(self.fast_decay)
            fast += f(flr / lr if folded else flr) * G
        if folded:
            # step 6: theta_slow += g * learning rate, with the weight decay term
            if self.weight_decay:
                W[sl] *= f(1.0 - lr * self.weight_decay)        # slow weights only
            W[sl] += G
            return
        if self.weight_decay:
            G -= self.weight_decay * W[sl]                       # slow weights only
        # step 6: theta_slow += g * learning rate (with optional momentum)
        if self._velocity is not None:
            vel = self._velocity[0][sl]
            vel *= self.momentum
            vel += lr * G
            W[sl] += vel
        else:
            G *= lr
            W[sl] += G

    def _apply_rows_binary(self, sl, states, H, lr: float) -> None:
        """``_apply_rows`` of the folded step ``G = H[:, sl]^T V`` for binary ``V``
        (its 1s in ``states``), G a row sum. PCD: G is added into the weights by the
        kernel without being formed (see ``_row_sum_layout``). FPCD: G is formed once
        and applied to the slow weights and the fast overlay (``fpcd_step``; summing it
        twice, once into each, made FPCD's update 27% slower than PCD's); the rounding
        is the same."""
        if self.algorithm == "fpcd":
            self._apply_rows(sl, bp.weight_gradient(states, H, sl).T, lr, folded=True)
            return
        if self.weight_decay:
            self.components_[sl] *= self.components_.dtype.type(1.0 - lr * self.weight_decay)
        bp.weight_gradient(states, H, sl, out=self.components_)

    def _apply_biases(self, gb, gc, lr: float) -> None:
        if self.algorithm == "fpcd":
            flr = self.effective_fast_learning_rate_
            for fast, g in ((self.fast_intercept_visible_, gb), (self.fast_intercept_hidden_, gc)):
                fast *= self.fast_decay
                fast += flr * g
        params = (self.intercept_visible_, self.intercept_hidden_)
        if self._velocity is not None:
            for vel, p, g in zip(self._velocity[1:], params, (gb, gc)):
                vel *= self.momentum
                vel += lr * g
                p += vel
        else:
            for p, g in zip(params, (gb, gc)):
                p += lr * g

    # -- public training API ------------------------------------------------------
    def _fit_loop(self, X, labels=None) -> None:
        """Minibatch passes over ``X`` until the schedule's bound is reached (10 epochs
        at a constant rate when the run has no bound, as sklearn's default)."""
        X_dev = self.backend_.asarray(X, dtype=DEFAULT_FLOAT)
        n = X_dev.shape[0]
        bs = min(self.batch_size, n)
        n_batches = max(1, n // bs)
        schedule = self.schedule_
        limit = self.n_updates if schedule.bounded() else 10 * n_batches
        bar = None
        if self.verbose:
            from lab.progress import Progress  # noqa: PLC0415
            name = f"{type(self).__name__}[{self.algorithm}]"
            bar = (Progress(self.max_seconds, name, unit="s")
                   if self.max_seconds is not None and self.n_updates is None
                   else Progress(limit, name))
        start, base_seconds = time.perf_counter(), self.train_seconds_
        try:
            for idx in self._minibatch_indices(n, bs, n_batches):
                self.train_seconds_ = base_seconds + time.perf_counter() - start
                if limit is not None and self.n_updates_ >= limit:
                    break
                if schedule.bounded() and schedule.progress(self.n_updates_, self.train_seconds_) >= 1:
                    break
                v = X_dev[idx]
                if self.binarize:
                    v = alg.bernoulli(v, self.random_stream_)
                with self._lock:
                    self._update(self._with_labels(v, labels, idx))
                if bar is not None:
                    bar.set(self.train_seconds_ if bar.unit == "s" else self.n_updates_,
                            lr=self.learning_rate_)
        finally:
            self.train_seconds_ = base_seconds + time.perf_counter() - start
            if bar is not None:
                bar.close()

    def _minibatch_indices(self, n, bs, n_batches):
        """Endless epochs of shuffled minibatch indices (an incomplete last batch is skipped)."""
        xp = self._xp
        while True:
            order = self.random_stream_.permutation(n)
            if xp is not np:     # one upload per epoch; a batch is a slice on the device
                order = xp.asarray(order)
            for k in range(n_batches):
                yield order[k * bs:(k + 1) * bs]

    def _with_labels(self, v, labels, idx):
        return v

    def snapshot(self) -> dict:
        """Numpy copies of the parameters and particles, taken under the update lock
        (for viewers polling a model that a training thread updates)."""
        self._check_is_fitted("components_")
        with self._lock:
            out = {name: to_numpy(getattr(self, name)).copy()
                   for name in ("components_", "intercept_visible_", "intercept_hidden_",
                                "fantasy_particles_", "fast_components_",
                                "fast_intercept_visible_", "fast_intercept_hidden_")
                   if getattr(self, name, None) is not None}
            out.update(n_updates=self.n_updates_, train_seconds=self.train_seconds_,
                       learning_rate=self.learning_rate_)
        return out

    # -- inference ----------------------------------------------------------------
    def _hidden_mean(self, v):
        return alg.hidden_mean(v, self.components_, self.intercept_hidden_, self._xp)

    def _sample_visible(self, pre, stream):
        u = self._visible.uniforms(pre.shape[0], pre.shape[1], stream, pre.dtype)
        return self._visible.sample_(pre, u, self._xp)

    @single_threaded_blas_on_cpu
    def gibbs(self, v):
        """One full Gibbs step ``v -> h -> v'`` (sampled states), as in sklearn."""
        self._check_is_fitted("components_")
        v = check_data(v, n_features=self.components_.shape[1], name="v")
        v = self.backend_.asarray(v, dtype=DEFAULT_FLOAT)
        h = alg.bernoulli(self._hidden_mean(v), self.random_stream_)
        return self._sample_visible(alg.visible_pre(h, self.components_, self.intercept_visible_),
                                    self.random_stream_)

    @single_threaded_blas_on_cpu
    def sample(self, n_samples: int = 100, n_steps: int = 1000, init=None, random_state=None,
               return_mean: bool = False):
        """Run ``n_samples`` Gibbs chains for ``n_steps`` full steps and return the final
        visible states (fig 3.2).

        ``init``: None (independent draws from the visible biases), ``"fantasy"`` (the
        persistent particles, repeated as needed) or an array. ``return_mean``: return
        P(v | h) of the last step instead of a binary sample (smoother pictures).
        """
        self._check_is_fitted("components_")
        xp = self._xp
        stream = self.random_stream_ if random_state is None else make_stream(random_state, self.backend_)
        W, b, c = self.components_, self.intercept_visible_, self.intercept_hidden_
        if init is None:
            v = self._sample_visible(xp.tile(b, (n_samples, 1)), stream)
        elif isinstance(init, str) and init == "fantasy":
            if self.fantasy_particles_ is None:
                raise ValueError("init='fantasy' needs a persistent algorithm (pcd or fpcd)")
            reps = -(-n_samples // self.fantasy_particles_.shape[0])
            v = xp.tile(self.fantasy_particles_, (reps, 1))[:n_samples].copy()
        else:
            v = self.backend_.asarray(check_data(init, n_features=W.shape[1], name="init"),
                                      dtype=DEFAULT_FLOAT)
        mean = None
        for _ in range(n_steps):
            h = alg.bernoulli(alg.hidden_mean(v, W, c, xp), stream)
            pre = alg.visible_pre(h, W, b)
            if return_mean:
                mean = self._visible.mean_(pre.copy(), xp)
            v = self._sample_visible(pre, stream)
        return mean if (return_mean and mean is not None) else v


class BinaryRBM(_RBMBase):
    """A binary RBM trained with CD-k, MF-CD, PL, PCD or FPCD (thesis chapter 3).

    Parameters
    ----------
    n_hidden : number of binary hidden units.
    algorithm : ``"pcd"`` (default), ``"fpcd"``, ``"cd"``, ``"mfcd"`` or ``"pl"``.
    cd_k : Gibbs steps for ``cd``/``mfcd`` (CD-1, CD-10 in the thesis).
    learning_rate : initial (slow) learning rate; the gradient is a mean over cases.
    batch_size : training cases per update (100 in all thesis experiments, 3.3.1).
    n_fantasy : persistent chains for PCD/FPCD (Nf = 100, 3.2.4).
    fast_learning_rate : FPCD's constant fast learning rate; None means equal to
        ``learning_rate`` (the heuristic of Tieleman & Hinton 2009). 0 gives PCD.
    fast_decay : FPCD's overlay decay lambda per update (19/20, 3.2.4).
    weight_decay : L2 penalty on the (slow) weights, not on biases.
    momentum : classical momentum on the slow parameters (3.2.2 explains why PCD
        dislikes it).
    n_updates, max_seconds : bound of a ``fit`` run, in updates and/or wall-clock
        seconds (whichever comes first); the learning rate decays linearly to zero over
        it (3.3.1). With neither, ``fit`` does 10 epochs at a constant rate, and
        ``partial_fit`` keeps a constant rate.
    learning_rate_schedule : ``"linear"`` (3.3.1) or ``"constant"``.
    binarize : treat ``X`` as probabilities in [0, 1] and sample a fresh binary version
        of every minibatch (stochastically binarized MNIST, 3.3.2).
    visible_bias_init : ``"zero"`` (sklearn) or ``"data"`` (log-odds of the data means).
    n_jobs : CPU worker threads for an update (each layer is split between them, BLAS
        runs single-threaded; see ``lab.undirected.parallel``). None: 2 for models with
        at least 65,536 weights when ``threadpoolctl`` is installed, else 1.
    random_state : seed (int), None, or a ``lab.backend.RandomStream``.
    device : ``"cpu"``, ``"gpu"``, ``"auto"`` or None (``$LAB_DEVICE``).
    verbose : show a progress bar during ``fit``.

    Attributes
    ----------
    components_ : (n_hidden, n_visible) slow weights W.
    intercept_hidden_, intercept_visible_ : biases c and b.
    fantasy_particles_ : (n_fantasy, n_visible) persistent chains (PCD/FPCD), else None.
    fast_components_, fast_intercept_hidden_, fast_intercept_visible_ : FPCD's fast
        overlay theta_delta (the fast weights are slow + overlay), else None.
    n_updates_, train_seconds_ : updates done and training seconds spent.
    learning_rate_ : the slow learning rate of the last update.
    random_stream_ : the RandomStream (its ``get_state()`` is JSON-able).
    n_jobs_ : the worker threads actually used.
    """

    def __init__(self, n_hidden: int = 256, *, algorithm: str = "pcd", cd_k: int = 1,
                 learning_rate: float = 0.01, batch_size: int = 100, n_fantasy: int = 100,
                 fast_learning_rate: float | None = None, fast_decay: float = 19 / 20,
                 weight_decay: float = 0.0, momentum: float = 0.0,
                 n_updates: int | None = None, max_seconds: float | None = None,
                 learning_rate_schedule: str = "linear", binarize: bool = False,
                 visible_bias_init: str = "zero", n_jobs: int | None = None, random_state=None,
                 device: str | None = None, verbose: bool = False):
        self.n_hidden = n_hidden
        self.algorithm = algorithm
        self.cd_k = cd_k
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.n_fantasy = n_fantasy
        self.fast_learning_rate = fast_learning_rate
        self.fast_decay = fast_decay
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.n_updates = n_updates
        self.max_seconds = max_seconds
        self.learning_rate_schedule = learning_rate_schedule
        self.binarize = binarize
        self.visible_bias_init = visible_bias_init
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def _check_X(self, X, fitted: bool):
        n_features = self.components_.shape[1] if fitted else None
        return check_data(X, n_features=n_features, allow_probabilities=self.binarize)

    @single_threaded_blas_on_cpu
    def fit(self, X, y=None) -> "BinaryRBM":
        """Train from scratch on ``X`` (n_samples, n_visible) until ``n_updates`` or
        ``max_seconds`` (10 epochs when neither is set). Returns self."""
        X = self._check_X(X, fitted=False)
        self._initialize(X.shape[1], data_mean=lambda: X.mean(axis=0))
        self._fit_loop(X)
        return self

    @single_threaded_blas_on_cpu
    def partial_fit(self, X, y=None) -> "BinaryRBM":
        """One update using all of ``X`` as the minibatch (initializes on first call).

        The learning rate follows the schedule (``current_learning_rate_``), so a
        training thread calling this in a loop reproduces ``fit``'s decay.
        """
        fitted = hasattr(self, "components_")
        X = self._check_X(X, fitted=fitted)
        if not fitted:
            self._initialize(X.shape[1], data_mean=lambda: X.mean(axis=0))
        start = time.perf_counter()
        with self._lock:
            self._update(self._prepare_batch(X))
            self.train_seconds_ += time.perf_counter() - start
        return self

    @single_threaded_blas_on_cpu
    def transform(self, X):
        """Hidden activation probabilities P(h = 1 | v = X)."""
        self._check_is_fitted("components_")
        X = check_data(X, n_features=self.components_.shape[1], allow_probabilities=True)
        return self._hidden_mean(self.backend_.asarray(X, dtype=DEFAULT_FLOAT))

    @single_threaded_blas_on_cpu
    def free_energy(self, X):
        """F(v) = -log sum_h exp(-E(v, h)) per row, float64."""
        self._check_is_fitted("components_")
        X = check_data(X, n_features=self.components_.shape[1], allow_probabilities=True)
        X = self.backend_.asarray(X, dtype=np.float64)
        return to_numpy(rbm_free_energy(X, self.components_, self.intercept_visible_,
                                        self.intercept_hidden_))

    @single_threaded_blas_on_cpu
    def log_partition(self, method: str = "exact", *, n_runs: int = 100, betas=None,
                      base_rate=None, random_state=None, threads: int | None = None) -> LogPartition:
        """``log Z`` by enumerating the smaller layer (``"exact"``) or by AIS (``"ais"``,
        Salakhutdinov & Murray 2008, base-rate model fitted to the training data)."""
        self._check_is_fitted("components_")
        W = to_numpy(self.components_).astype(np.float64)
        b = to_numpy(self.intercept_visible_).astype(np.float64)
        c = to_numpy(self.intercept_hidden_).astype(np.float64)
        key = (method, float(W.sum()), float(b.sum()), float(c.sum()), self.n_updates_)
        if method == "exact" and key in self._logz_cache:
            return self._logz_cache[key]
        start = time.perf_counter()
        if method == "exact":
            if self.backend_.name == "cpu":
                value = rbm_log_partition(W, b, c, threads=threads)
            else:   # the fused enumeration kernel (lab.undirected.gpu_update), float64 softplus
                from lab.undirected.gpu_update import log_partition_gpu  # noqa: PLC0415
                value = log_partition_gpu(self.components_, self.intercept_visible_,
                                          self.intercept_hidden_, dtype=np.float64)
            result = LogPartition(value, value, value, "exact", time.perf_counter() - start)
            self._logz_cache[key] = result
            return result
        if method == "ais":
            from lab.undirected.ais import ais_log_partition  # noqa: PLC0415
            base = to_numpy(self.base_rate_) if base_rate is None else np.asarray(base_rate)
            stream = make_stream(self.random_state if random_state is None else random_state,
                                 self.backend_)
            res = ais_log_partition(self.components_, self.intercept_visible_,
                                    self.intercept_hidden_, base, n_runs=n_runs, betas=betas,
                                    stream=stream)
            return LogPartition(res.log_z, res.lower, res.upper, "ais", time.perf_counter() - start)
        raise ValueError(f"method must be 'exact' or 'ais', got {method!r}")

    @single_threaded_blas_on_cpu
    def score_samples(self, X, method: str = "exact", **kwargs):
        """log p(v) per row of ``X`` (float64 numpy), with log Z exact or from AIS."""
        log_z = self.log_partition(method, **kwargs).value
        X = check_data(X, n_features=self.components_.shape[1])
        return -self.free_energy(X) - log_z

    def score(self, X, y=None, method: str = "exact", **kwargs) -> float:
        """Mean log-likelihood per case (nats)."""
        return float(np.mean(self.score_samples(X, method=method, **kwargs)))
