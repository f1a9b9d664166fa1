"""A fully visible, fully connected binary Markov random field (thesis 3.3.4).

``p(v) = exp(b.v + 1/2 v^T W v) / Z`` with ``W`` symmetric and zero on the diagonal
(``coupling_``, ``intercept_``). Three training algorithms, as in fig 3.4:

``pl``     pseudo-likelihood: the exact gradient of sum_i log P(v_i | v_-i) on minibatches.
``pcd``    persistent CD. Without hidden units the positive statistics are constant, so
           they are computed once over the whole training set (no minibatch noise); the
           fantasy particles move by one sequential Gibbs sweep per update (units of a
           fully connected MRF cannot be updated in parallel).
``exact``  the exact likelihood gradient, with model moments from enumerating all 2^n
           states (``partition.mrf_moments``): slow, but the yardstick.

Exact log-likelihoods come from the same enumeration. For the 4,032,000 MNIST patches,
pass the distinct patterns with their counts as ``sample_weight`` (each is evaluated once).
"""
from __future__ import annotations

import threading
import time

import numpy as np

from lab.backend import DEFAULT_FLOAT, get_backend, to_numpy
from lab.undirected._base import Estimator, ScheduledTrainer, check_data, make_stream, sigmoid_
from lab.undirected.parallel import single_threaded_blas_on_cpu
from lab.undirected.partition import mrf_log_partition, mrf_log_potential, mrf_moments

MRF_ALGORITHMS = ("pl", "pcd", "exact")


def mrf_pl_gradient(V, W, b, weights=None, xp=np):
    """Gradient of the (weighted) mean pseudo-log-likelihood w.r.t. the symmetric ``W``
    (one parameter per pair: the returned matrix is symmetric, zero diagonal) and ``b``."""
    x = V @ W + b                                  # W symmetric, zero diagonal
    r = V - sigmoid_(x, xp)                        # v_i - P(v_i = 1 | v_-i)
    if weights is None:
        weights = xp.full(V.shape[0], 1.0 / V.shape[0], dtype=V.dtype)
    rw = r * weights[:, None]
    G = rw.T @ V
    G = G + G.T
    n = G.shape[0]
    G[xp.arange(n), xp.arange(n)] = 0
    return G, rw.sum(axis=0)


def mrf_pseudo_log_likelihood(V, W, b, weights=None, xp=np):
    """(Weighted) mean over rows of sum_i log P(v_i | v_-i)."""
    x = V @ W + b
    ll = (V * x - xp.logaddexp(0, x)).sum(axis=1)
    if weights is None:
        return float(ll.mean())
    return float((ll * weights).sum() / weights.sum())


def data_statistics(V, weights=None, xp=np):
    """(E_data[v], E_data[v v^T]) in float64 (weights: counts of distinct patterns)."""
    V = V.astype(xp.float64)
    if weights is None:
        w = xp.full(V.shape[0], 1.0 / V.shape[0])
    else:
        w = xp.asarray(weights, dtype=xp.float64)
        w = w / w.sum()
    return V.T @ w, V.T @ (V * w[:, None])


def unique_patterns(V):
    """Distinct rows of a binary matrix with their counts (via integer codes)."""
    V = np.asarray(to_numpy(V))
    n = V.shape[1]
    if n > 62:
        raise ValueError("unique_patterns handles up to 62 units")
    codes = (V.astype(np.int64) << np.arange(n, dtype=np.int64)).sum(axis=1)
    uniq, counts = np.unique(codes, return_counts=True)
    rows = ((uniq[:, None] >> np.arange(n)) & 1).astype(DEFAULT_FLOAT)
    return rows, counts


class FullyVisibleMRF(ScheduledTrainer, Estimator):
    """A fully connected binary MRF trained with PL, PCD or the exact gradient (3.3.4).

    Parameters
    ----------
    algorithm : ``"pcd"`` (default), ``"pl"`` or ``"exact"``.
    learning_rate : initial learning rate, decayed linearly to zero over the run (3.3.1).
    batch_size : PL minibatch size.
    n_fantasy : PCD's persistent chains.
    weight_decay : L2 penalty on the couplings.
    momentum : classical momentum.
    n_updates, max_seconds : run bound (whichever first); neither means 1000 updates
        for ``fit`` and a constant rate for ``partial_fit``.
    learning_rate_schedule : ``"linear"`` or ``"constant"``.
    bias_init : ``"zero"`` or ``"data"`` (log-odds of the data means: the best model
        without couplings, a common starting point).
    exact_optimizer : for ``algorithm="exact"``: ``"gradient"`` (gradient ascent with the
        learning-rate schedule and momentum) or ``"lbfgs"`` (L-BFGS on the exact
        likelihood; each evaluation counts as an update). The exact gradient is badly
        conditioned here: plain ascent needs hundreds of its slow steps.
    random_state, device, verbose : as for ``BinaryRBM``.

    Attributes
    ----------
    coupling_ : (n, n) symmetric couplings, zero diagonal.  intercept_ : (n,) biases.
    fantasy_particles_ : PCD's chains (else None).  n_updates_, train_seconds_,
    learning_rate_ : as for ``BinaryRBM``.
    """

    _fitted_attribute = "coupling_"

    def __init__(self, *, algorithm: str = "pcd", learning_rate: float = 0.01,
                 batch_size: int = 100, n_fantasy: int = 100, weight_decay: float = 0.0,
                 momentum: float = 0.0, n_updates: int | None = None,
                 max_seconds: float | None = None, learning_rate_schedule: str = "linear",
                 bias_init: str = "zero", exact_optimizer: str = "gradient",
                 random_state=None, device: str | None = None, verbose: bool = False):
        self.algorithm = algorithm
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.n_fantasy = n_fantasy
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.n_updates = n_updates
        self.max_seconds = max_seconds
        self.learning_rate_schedule = learning_rate_schedule
        self.bias_init = bias_init
        self.exact_optimizer = exact_optimizer
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # -- state ---------------------------------------------------------------------
    def _initialize(self, n_units: int, data_mean=None) -> None:
        if self.bias_init not in ("zero", "data"):
            raise ValueError(f"bias_init must be 'zero' or 'data', got {self.bias_init!r}")
        if self.exact_optimizer not in ("gradient", "lbfgs"):
            raise ValueError(f"exact_optimizer must be 'gradient' or 'lbfgs', got {self.exact_optimizer!r}")
        if self.algorithm not in MRF_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {MRF_ALGORITHMS}, got {self.algorithm!r}")
        if self.algorithm == "exact" and n_units > 30:
            raise ValueError(f"algorithm='exact' enumerates 2^{n_units} states: at most 30 units")
        self.backend_ = get_backend(self.device)
        xp = self.backend_.xp
        self.random_stream_ = make_stream(self.random_state, self.backend_)
        self.n_features_in_ = n_units
        self.coupling_ = xp.zeros((n_units, n_units), dtype=DEFAULT_FLOAT)
        self.intercept_ = xp.zeros(n_units, dtype=DEFAULT_FLOAT)
        if self.bias_init == "data" and data_mean is not None:
            p = np.clip(np.asarray(to_numpy(data_mean), np.float64), 1e-3, 1 - 1e-3)
            self.intercept_ = xp.asarray(np.log(p / (1 - p)), dtype=DEFAULT_FLOAT)
        self.fantasy_particles_ = (xp.zeros((self.n_fantasy, n_units), dtype=DEFAULT_FLOAT)
                                   if self.algorithm == "pcd" else None)
        self._velocity = ([xp.zeros_like(self.coupling_), xp.zeros_like(self.intercept_)]
                          if self.momentum else None)
        self.n_updates_ = 0
        self.train_seconds_ = 0.0
        self.learning_rate_ = float(self.learning_rate)
        self._lock = threading.RLock()

    # -- updates -------------------------------------------------------------------
    def _gibbs_sweep(self, V):
        """One sequential Gibbs sweep over all units of every chain (in place)."""
        xp = self.backend_.xp
        W, b = self.coupling_, self.intercept_
        u = self.random_stream_.uniform(V.shape, dtype=V.dtype)
        for i in range(V.shape[1]):
            x = V @ W[:, i] + b[i]
            V[:, i] = u[:, i] < sigmoid_(x, xp)
        return V

    def _gradient(self, V=None, weights=None, stats=None):
        xp = self.backend_.xp
        W, b = self.coupling_, self.intercept_
        if self.algorithm == "pl":
            return mrf_pl_gradient(V, W, b, weights, xp)
        mean_d, second_d = stats
        if self.algorithm == "pcd":
            P = self.fantasy_particles_.astype(xp.float64)
            mean_m, second_m = P.mean(axis=0), (P.T @ P) / P.shape[0]
            self._gibbs_sweep(self.fantasy_particles_)
        else:
            _, mean_m, second_m = mrf_moments(to_numpy(W), to_numpy(b), dtype=np.float32)
            mean_m, second_m = xp.asarray(mean_m), xp.asarray(second_m)
        G = second_d - second_m
        n = G.shape[0]
        G[xp.arange(n), xp.arange(n)] = 0
        return G.astype(DEFAULT_FLOAT), (mean_d - mean_m).astype(DEFAULT_FLOAT)

    def _update(self, V=None, weights=None, stats=None) -> None:
        lr = self.schedule_.rate(self.n_updates_, self.train_seconds_)
        gW, gb = self._gradient(V, weights, stats)
        if self.weight_decay:
            gW = gW - self.weight_decay * self.coupling_
        if self._velocity is not None:
            for vel, p, g in zip(self._velocity, (self.coupling_, self.intercept_), (gW, gb)):
                vel *= self.momentum
                vel += lr * g
                p += vel
        else:
            self.coupling_ += lr * gW
            self.intercept_ += lr * gb
        self.n_updates_ += 1
        self.learning_rate_ = lr

    # -- public API ----------------------------------------------------------------
    @single_threaded_blas_on_cpu
    def fit(self, X, sample_weight=None) -> "FullyVisibleMRF":
        """Train from scratch on binary ``X`` (rows weighted by ``sample_weight``, e.g.
        the counts of distinct patterns). Returns self."""
        X = check_data(X)
        weights = self._check_weights(sample_weight, X.shape[0])
        w = np.full(X.shape[0], 1.0 / X.shape[0]) if weights is None else weights / weights.sum()
        self._initialize(X.shape[1], data_mean=np.asarray(to_numpy(X), np.float64).T @ w)
        if self.algorithm == "exact" and self.exact_optimizer == "lbfgs":
            return self._fit_lbfgs(X, weights)
        xp = self.backend_.xp
        X = self.backend_.asarray(X, dtype=DEFAULT_FLOAT)
        schedule = self.schedule_
        total = self.n_updates if schedule.bounded() else 1000
        stats = None
        if self.algorithm != "pl":
            # the positive statistics do not change: compute them once (3.3.4)
            stats = data_statistics(X, None if weights is None else xp.asarray(weights), xp)
        elif weights is not None:
            cum = xp.asarray(np.cumsum(weights / weights.sum()))
        bar = None
        if self.verbose:
            from lab.progress import Progress  # noqa: PLC0415
            bar = (Progress(self.max_seconds, f"MRF[{self.algorithm}]", unit="s")
                   if self.max_seconds is not None and self.n_updates is None
                   else Progress(total, f"MRF[{self.algorithm}]"))
        start = time.perf_counter()
        n = X.shape[0]
        bs = min(self.batch_size, n)
        order, pos = None, n
        try:
            while True:
                self.train_seconds_ = time.perf_counter() - start
                if total is not None and self.n_updates_ >= total:
                    break
                if schedule.bounded() and schedule.progress(self.n_updates_, self.train_seconds_) >= 1:
                    break
                V = None
                if self.algorithm == "pl":
                    if weights is None:
                        if pos + bs > n:
                            order, pos = self.random_stream_.permutation(n), 0
                        idx = order[pos:pos + bs]
                        pos += bs
                    else:
                        u = self.random_stream_.uniform((bs,), dtype=np.float64)
                        idx = xp.minimum(xp.searchsorted(cum, xp.asarray(u)), n - 1)
                    V = X[xp.asarray(idx)] if xp is not np else X[idx]
                with self._lock:
                    self._update(V, None, stats)
                if bar is not None:
                    bar.set(self.train_seconds_ if bar.unit == "s" else self.n_updates_,
                            lr=self.learning_rate_)
        finally:
            self.train_seconds_ = time.perf_counter() - start
            if bar is not None:
                bar.close()
        return self

    @single_threaded_blas_on_cpu
    def _fit_lbfgs(self, X, weights, memory: int = 10) -> "FullyVisibleMRF":
        """Maximize the exact likelihood with L-BFGS (two-loop recursion, backtracking
        line search), within the run's bound of updates (evaluations) or seconds."""
        xp = self.backend_.xp
        n = X.shape[1]
        iu = np.triu_indices(n, 1)
        mean_d, second_d = (to_numpy(a) for a in data_statistics(
            np.asarray(to_numpy(X), np.float64), weights, np))
        wd = self.weight_decay

        def unpack(theta):
            W = np.zeros((n, n))
            W[iu] = theta[:len(iu[0])]
            return W + W.T, theta[len(iu[0]):]

        def objective(theta):
            """Negative mean log-likelihood (+ weight decay) and its gradient."""
            W, b = unpack(theta)
            log_z, mean_m, second_m = mrf_moments(W, b, dtype=np.float32)
            ll = mean_d @ b + 0.5 * np.sum(second_d * W) - log_z - 0.5 * wd * np.sum(W[iu] ** 2)
            grad = np.concatenate([(second_d - second_m)[iu] - wd * W[iu], mean_d - mean_m])
            return -ll, -grad

        W0, b0 = to_numpy(self.coupling_).astype(np.float64), to_numpy(self.intercept_).astype(np.float64)
        theta = np.concatenate([W0[iu], b0])
        limit = self.n_updates if self.schedule_.bounded() else 1000
        start = time.perf_counter()

        def out_of_budget():
            self.train_seconds_ = time.perf_counter() - start
            if limit is not None and self.n_updates_ >= limit:
                return True
            return self.max_seconds is not None and self.train_seconds_ >= self.max_seconds

        f, g = objective(theta)
        self.n_updates_ += 1
        s_hist, y_hist = [], []
        while not out_of_budget():
            q = g.copy()
            alphas = []
            for s_, y_ in reversed(list(zip(s_hist, y_hist))):
                a = (s_ @ q) / (y_ @ s_)
                alphas.append(a)
                q -= a * y_
            if s_hist:
                q *= (s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1])
            else:
                q *= min(1.0, 1.0 / max(1e-12, np.abs(g).max()))
            for (s_, y_), a in zip(zip(s_hist, y_hist), reversed(alphas)):
                q += s_ * (a - (y_ @ q) / (y_ @ s_))
            direction = -q
            step, accepted = 1.0, False
            while not out_of_budget():
                new = theta + step * direction
                f_new, g_new = objective(new)
                self.n_updates_ += 1
                if f_new <= f + 1e-4 * step * (g @ direction):
                    accepted = True
                    break
                step *= 0.5
            if not accepted:
                break
            s_vec, y_vec = new - theta, g_new - g
            if s_vec @ y_vec > 1e-12:
                s_hist.append(s_vec)
                y_hist.append(y_vec)
                if len(s_hist) > memory:
                    s_hist.pop(0)
                    y_hist.pop(0)
            theta, f, g = new, f_new, g_new
            W, b = unpack(theta)
            with self._lock:
                self.coupling_ = xp.asarray(W, dtype=DEFAULT_FLOAT)
                self.intercept_ = xp.asarray(b, dtype=DEFAULT_FLOAT)
            self.learning_rate_ = step
        self.train_seconds_ = time.perf_counter() - start
        return self

    def partial_fit(self, X, sample_weight=None) -> "FullyVisibleMRF":
        """One update: for PL ``X`` is the minibatch; for PCD/exact ``X`` supplies the
        positive statistics of this step."""
        fitted = hasattr(self, "coupling_")
        X = check_data(X, n_features=self.coupling_.shape[0] if fitted else None)
        weights = self._check_weights(sample_weight, X.shape[0])
        if not fitted:
            self._initialize(X.shape[1], data_mean=np.asarray(X, np.float64).mean(axis=0))
        xp = self.backend_.xp
        start = time.perf_counter()
        V = self.backend_.asarray(X, dtype=DEFAULT_FLOAT)
        w = None if weights is None else xp.asarray(weights / weights.sum(), dtype=DEFAULT_FLOAT)
        with self._lock:
            if self.algorithm == "pl":
                self._update(V, w, None)
            else:
                self._update(None, None, data_statistics(V, w, xp))
            self.train_seconds_ += time.perf_counter() - start
        return self

    @staticmethod
    def _check_weights(sample_weight, n):
        if sample_weight is None:
            return None
        w = np.asarray(to_numpy(sample_weight), dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("sample_weight must be finite, non-negative, and not all zero")
        return w

    @single_threaded_blas_on_cpu
    def log_partition(self) -> float:
        """Exact log Z by enumerating all 2^n states."""
        self._check_is_fitted("coupling_")
        return mrf_log_partition(to_numpy(self.coupling_).astype(np.float64),
                                 to_numpy(self.intercept_).astype(np.float64))

    @single_threaded_blas_on_cpu
    def score_samples(self, X):
        """Exact log p(v) per row (float64 numpy)."""
        self._check_is_fitted("coupling_")
        X = check_data(X, n_features=self.coupling_.shape[0])
        log_z = self.log_partition()
        return mrf_log_potential(X.astype(np.float64), to_numpy(self.coupling_),
                                 to_numpy(self.intercept_)) - log_z

    def score(self, X, sample_weight=None) -> float:
        """Mean (weighted) exact log-likelihood per case, in nats."""
        ll = self.score_samples(X)
        if sample_weight is None:
            return float(ll.mean())
        w = self._check_weights(sample_weight, len(ll))
        return float((ll * w).sum() / w.sum())

    @single_threaded_blas_on_cpu
    def pseudo_log_likelihood(self, X, sample_weight=None) -> float:
        self._check_is_fitted("coupling_")
        X = check_data(X, n_features=self.coupling_.shape[0]).astype(np.float64)
        w = None if sample_weight is None else self._check_weights(sample_weight, X.shape[0])
        return mrf_pseudo_log_likelihood(X, to_numpy(self.coupling_).astype(np.float64),
                                         to_numpy(self.intercept_).astype(np.float64), w)

    @single_threaded_blas_on_cpu
    def sample(self, n_samples: int = 100, n_sweeps: int = 100, random_state=None):
        """Binary samples after ``n_sweeps`` sequential Gibbs sweeps from all-zero states."""
        self._check_is_fitted("coupling_")
        xp = self.backend_.xp
        saved = self.random_stream_
        if random_state is not None:
            self.random_stream_ = make_stream(random_state, self.backend_)
        try:
            V = xp.zeros((n_samples, self.coupling_.shape[0]), dtype=DEFAULT_FLOAT)
            for _ in range(n_sweeps):
                self._gibbs_sweep(V)
        finally:
            self.random_stream_ = saved
        return V
