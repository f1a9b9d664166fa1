"""The classification RBM (thesis 3.3.3; Hinton et al. 2006, Larochelle & Bengio 2008).

The visible layer is the binary input units followed by one multinomial (softmax) label
unit with ``n_classes`` states. Training is generative (the joint of inputs and labels)
with any of the RBM algorithms except PL; classification picks the class with the
greatest conditional probability, computed exactly from free energies:

    log p(y | x) = d_y + sum_j softplus(c_j + W_j.x + U_jy) - logsumexp_y'(...)

``components_`` is (n_hidden, n_features + n_classes): input weights then label weights
(``label_components_`` is a view of the latter), likewise ``intercept_visible_``.
"""
from __future__ import annotations

import time

import numpy as np

from lab.backend import DEFAULT_FLOAT, to_numpy
from lab.undirected._base import check_data
from lab.undirected.parallel import single_threaded_blas_on_cpu
from lab.undirected.rbm import _RBMBase


class ClassificationRBM(_RBMBase):
    """An RBM over (input, label) pairs that classifies by the exact class conditional.

    Same hyperparameters as :class:`lab.undirected.BinaryRBM` (``algorithm`` one of
    ``"cd"``, ``"mfcd"``, ``"pcd"``, ``"fpcd"``). ``score`` is accuracy.
    """

    def __init__(self, n_hidden: int = 500, *, algorithm: str = "pcd", cd_k: int = 1,
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

    # the softmax group size is known once the classes are
    @property
    def _n_softmax(self) -> int:
        return len(self.classes_) if hasattr(self, "classes_") else 0

    @property
    def n_classes_(self) -> int:
        return len(self.classes_)

    @property
    def label_components_(self):
        """(n_hidden, n_classes) weights of the label unit."""
        self._check_is_fitted("components_")
        return self.components_[:, -self.n_classes_:]

    @property
    def intercept_label_(self):
        self._check_is_fitted("components_")
        return self.intercept_visible_[-self.n_classes_:]

    def _encode(self, y):
        y = np.asarray(to_numpy(y))
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D, got shape {y.shape}")
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        if not np.all(self.classes_[idx] == y):
            unknown = sorted(set(y.tolist()) - set(self.classes_.tolist()))
            raise ValueError(f"y contains labels not in classes_: {unknown[:10]}")
        return idx

    def _joint(self, X, y):
        """[X, one-hot(y)] as float32 on the device."""
        xp = self.backend_.xp if hasattr(self, "backend_") else np
        idx = self._encode(y)
        onehot = np.zeros((len(idx), len(self.classes_)), dtype=DEFAULT_FLOAT)
        onehot[np.arange(len(idx)), idx] = 1
        if xp is np:
            return np.concatenate([np.asarray(X, dtype=DEFAULT_FLOAT), onehot], axis=1)
        return xp.concatenate([xp.asarray(X, dtype=DEFAULT_FLOAT), xp.asarray(onehot)], axis=1)

    def _check_Xy(self, X, y, fitted):
        n_features = self.n_features_ if fitted else None
        X = check_data(X, n_features=n_features, allow_probabilities=self.binarize)
        y = np.asarray(to_numpy(y))
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}")
        return X, y

    @single_threaded_blas_on_cpu
    def fit(self, X, y) -> "ClassificationRBM":
        """Train from scratch on inputs ``X`` and labels ``y``. Returns self."""
        X, y = self._check_Xy(X, y, fitted=False)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError("y needs at least two classes")
        self.n_features_ = X.shape[1]
        self._initialize(X.shape[1] + len(self.classes_),
                         data_mean=lambda: self._joint(X, y).mean(axis=0))
        self._fit_loop(X, labels=self._encode(y))
        return self

    def _fit_loop(self, X, labels=None):
        # the joint matrix is formed per batch (inputs may be re-binarized each time)
        self._labels_dev = self.backend_.asarray(labels)
        try:
            super()._fit_loop(X, labels)
        finally:
            del self._labels_dev

    def _with_labels(self, v, labels, idx):
        xp = self._xp
        onehot = xp.zeros((v.shape[0], self.n_classes_), dtype=DEFAULT_FLOAT)
        onehot[xp.arange(v.shape[0]), self._labels_dev[idx]] = 1
        return xp.concatenate([v, onehot], axis=1)

    @single_threaded_blas_on_cpu
    def partial_fit(self, X, y, classes=None) -> "ClassificationRBM":
        """One update on the minibatch ``(X, y)``; ``classes`` is required on the first call."""
        fitted = hasattr(self, "components_")
        if not fitted:
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit")
            self.classes_ = np.unique(np.asarray(classes))
        X, y = self._check_Xy(X, y, fitted=fitted)
        if not fitted:
            self.n_features_ = X.shape[1]
            self._initialize(X.shape[1] + len(self.classes_),
                             data_mean=lambda: self._joint(X, y).mean(axis=0))
        start = time.perf_counter()
        with self._lock:
            v = self.backend_.asarray(X, dtype=DEFAULT_FLOAT)
            if self.binarize:
                from lab.undirected.algorithms import bernoulli  # noqa: PLC0415
                v = bernoulli(v, self.random_stream_)
            self._update(self._joint(v, y))
            self.train_seconds_ += time.perf_counter() - start
        return self

    @single_threaded_blas_on_cpu
    def predict_log_proba(self, X, chunk: int = 2000):
        """Exact log p(y | x) (n_samples, n_classes), float64 numpy."""
        self._check_is_fitted("components_")
        X = check_data(X, n_features=self.n_features_, allow_probabilities=True)
        xp = self._xp
        nf = self.n_features_
        W = self.components_.astype(xp.float64)
        Wx, U = W[:, :nf], W[:, nf:]
        c = self.intercept_hidden_.astype(xp.float64)
        d = self.intercept_visible_[nf:].astype(xp.float64)
        out = []
        for s in range(0, X.shape[0], chunk):
            x = self.backend_.asarray(X[s:s + chunk], dtype=xp.float64)
            pre = x @ Wx.T + c                                    # (n, H)
            act = xp.logaddexp(0, pre[:, None, :] + U.T[None, :, :]).sum(axis=2) + d  # (n, K)
            act -= act.max(axis=1, keepdims=True)
            act -= xp.log(xp.exp(act).sum(axis=1, keepdims=True))
            out.append(to_numpy(act))
        return np.concatenate(out, axis=0)

    def predict_proba(self, X):
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        self._check_is_fitted("components_")
        return self.classes_[np.argmax(self.predict_log_proba(X), axis=1)]

    def score(self, X, y) -> float:
        """Fraction of cases classified correctly."""
        y = np.asarray(to_numpy(y))
        return float(np.mean(self.predict(X) == y))

    @single_threaded_blas_on_cpu
    def transform(self, X):
        """P(h = 1 | x) with the label summed out is not factorial; this returns the
        hidden probabilities given x and the predicted label."""
        self._check_is_fitted("components_")
        X = check_data(X, n_features=self.n_features_, allow_probabilities=True)
        joint = self._joint(X, self.predict(X))
        return self._hidden_mean(joint)
