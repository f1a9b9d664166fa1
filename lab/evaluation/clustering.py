"""Clustering metrics: the 25-label protocol of thesis 2.6.6, and k-means(10) + Hungarian.

Evaluation runs on numpy (CuPy inputs are copied to the host once).

**The 25-label protocol** (thesis 2.6.6 and its footnote 22). The mixture manager's
``y`` clusters the data: cluster = argmax y. From each cluster the classifier picks
*one* training case, "the one training case that gets assigned to the cluster with
the highest confidence, by the mixture manager": among the training cases whose argmax
is cluster ``c``, the one with the largest ``y_c`` (ties: the lowest index). Its label
becomes the label of the whole cluster; a test case gets the label of its cluster.
With 25 components that is exactly 25 labelled cases. Choices where the thesis is
silent, and how they show in the result:

* A cluster that no training case falls into gets no label (it costs no label);
  test cases that land in it count as errors (``unlabelled_test_fraction``).
* ``n_labels`` is the budget of labelled cases. When more clusters are non-empty than
  the budget, the largest clusters (by training count) are labelled and the others
  are treated as unlabelled; ``n_labels=None`` labels every non-empty cluster.
* Footnote 22 says labelling each cluster by the majority label of all its training
  cases gave the same labellings; ``majority_agreement`` reports how many of the
  labelled clusters agree, and ``majority_error`` the test error with those majority
  labels, so that claim is checked on every run: where the two errors differ, the
  single labelled case per cluster, not the clustering, made the difference.

**k-means(10) + Hungarian matching** makes the code comparable with modern
unsupervised clustering results (e.g. SCAE's 98.7% on MNIST): cluster into 10 groups,
match groups to classes one-to-one to maximise agreement, report accuracy.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from lab.backend import to_numpy


def _np(a) -> np.ndarray:
    return np.asarray(to_numpy(a))


# -- the thesis protocol --------------------------------------------------------------
def label25_error(train_y, train_labels, test_y, test_labels, n_labels: int | None = 25
                  ) -> tuple[float, dict[str, Any]]:
    """Test error of the 25-label protocol (thesis 2.6.6); returns ``(error, details)``.

    ``train_y``/``test_y``: (N, C) mixture probabilities (the manager's y); labels: (N,) ints.
    ``details`` (JSON-able): ``cluster_labels`` (length C, None = unlabelled),
    ``representatives`` (training index per cluster), ``representative_confidence``,
    ``cluster_sizes_train``/``_test``, ``n_labels_used``, ``unlabelled_test_fraction``,
    ``majority_labels``, ``majority_agreement`` and ``majority_error`` (footnote 22's
    alternative: every cluster labelled by the majority of its training cases).
    """
    train_y, test_y = _np(train_y), _np(test_y)
    train_labels, test_labels = _np(train_labels).ravel(), _np(test_labels).ravel()
    if train_y.ndim != 2 or test_y.ndim != 2 or train_y.shape[1] != test_y.shape[1]:
        raise ValueError(f"train_y and test_y must be (N, C) with the same C, got "
                         f"{train_y.shape} and {test_y.shape}")
    if len(train_labels) != len(train_y) or len(test_labels) != len(test_y):
        raise ValueError("each y needs one label per row")
    if len(test_y) == 0:
        raise ValueError("no test cases")
    n_clusters = train_y.shape[1]
    train_cluster = train_y.argmax(axis=1)
    test_cluster = test_y.argmax(axis=1)
    sizes_train = np.bincount(train_cluster, minlength=n_clusters)
    sizes_test = np.bincount(test_cluster, minlength=n_clusters)

    nonempty = np.flatnonzero(sizes_train)
    if n_labels is not None:
        if n_labels < 1:
            raise ValueError(f"n_labels must be >= 1, got {n_labels}")
        # largest clusters first; stable so equal sizes keep cluster order
        order = nonempty[np.argsort(-sizes_train[nonempty], kind="stable")]
        nonempty = np.sort(order[:n_labels])

    cluster_labels: list[int | None] = [None] * n_clusters
    representatives: list[int | None] = [None] * n_clusters
    confidence: list[float | None] = [None] * n_clusters
    majority: list[int | None] = [None] * n_clusters
    for c in nonempty:
        members = np.flatnonzero(train_cluster == c)
        best = members[np.argmax(train_y[members, c])]  # argmax: first of ties
        representatives[c] = int(best)
        confidence[c] = float(train_y[best, c])
        cluster_labels[c] = _label(train_labels[best])
        values, counts = np.unique(train_labels[members], return_counts=True)
        majority[c] = _label(values[np.argmax(counts)])

    is_labelled = np.array([lab is not None for lab in cluster_labels])
    labelled = is_labelled[test_cluster]
    error = _cluster_label_error(cluster_labels, test_cluster, test_labels)
    details = {
        "cluster_labels": cluster_labels,
        "representatives": representatives,
        "representative_confidence": confidence,
        "cluster_sizes_train": sizes_train.tolist(),
        "cluster_sizes_test": sizes_test.tolist(),
        "n_labels_used": int(len(nonempty)),
        "unlabelled_test_fraction": float(1.0 - labelled.mean()),
        "majority_labels": majority,
        "majority_agreement": int(sum(1 for c in nonempty if majority[c] == cluster_labels[c])),
        "majority_error": _cluster_label_error(majority, test_cluster, test_labels),
    }
    return error, details


def _cluster_label_error(cluster_labels, test_cluster, test_labels) -> float:
    """Test error when every test case gets its cluster's label (None: counted wrong)."""
    correct = np.zeros(len(test_labels), dtype=bool)
    for c, label in enumerate(cluster_labels):
        if label is not None:
            members = test_cluster == c
            correct[members] = test_labels[members] == label
    return 1.0 - float(correct.mean())


def _label(v):
    return v.item() if isinstance(v, np.generic) else v


# -- assignment -----------------------------------------------------------------------------
def linear_assignment(cost, use_scipy: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost matching of rows to columns: ``(rows, cols)`` index arrays.

    Uses ``scipy.optimize.linear_sum_assignment`` when scipy imports (and ``use_scipy``),
    else ``hungarian`` below; both give a minimum-cost assignment of min(n, m) pairs.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if use_scipy:
        try:
            from scipy.optimize import linear_sum_assignment  # noqa: PLC0415 (optional)
        except ImportError:
            pass
        else:
            rows, cols = linear_sum_assignment(cost)
            return np.asarray(rows), np.asarray(cols)
    return hungarian(cost)


def hungarian(cost) -> tuple[np.ndarray, np.ndarray]:
    """The O(n^2 m) Hungarian algorithm (shortest augmenting paths with potentials).

    Rectangular matrices are handled by transposing so rows <= columns. Returns
    ``(rows, cols)`` sorted by row, like scipy.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be 2-d, got shape {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("cost must be finite")
    transposed = cost.shape[0] > cost.shape[1]
    a = cost.T if transposed else cost
    n, m = a.shape
    if n == 0:
        return np.zeros(0, int), np.zeros(0, int)
    # 1-based arrays as in the classical formulation; column 0 is a virtual start.
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=int)      # p[j]: row matched to column j (0 = none)
    way = np.zeros(m + 1, dtype=int)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used[1:]
            cur = a[i0 - 1] - u[i0] - v[1:]
            improve = free & (cur < minv[1:])
            minv[1:][improve] = cur[improve]
            way[1:][improve] = j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    rows, cols = [], []
    for j in range(1, m + 1):
        if p[j]:
            rows.append(p[j] - 1)
            cols.append(j - 1)
    rows, cols = np.array(rows), np.array(cols)
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order], cols[order]


def hungarian_accuracy(pred, labels, use_scipy: bool = True) -> float:
    """Accuracy of cluster ids ``pred`` under the best one-to-one cluster->label matching.

    With more clusters than labels, the unmatched clusters count as wrong.
    """
    pred, labels = _np(pred).ravel(), _np(labels).ravel()
    if pred.shape != labels.shape or pred.size == 0:
        raise ValueError(f"pred and labels must be non-empty and of equal length, got "
                         f"{pred.shape} and {labels.shape}")
    _, p = np.unique(pred, return_inverse=True)
    _, q = np.unique(labels, return_inverse=True)
    counts = np.zeros((p.max() + 1, q.max() + 1), dtype=np.int64)
    np.add.at(counts, (p, q), 1)
    rows, cols = linear_assignment(-counts, use_scipy=use_scipy)
    return float(counts[rows, cols].sum()) / pred.size


def brute_force_accuracy(pred, labels) -> float:
    """``hungarian_accuracy`` by trying every matching (for tests; k <= ~7)."""
    pred, labels = _np(pred).ravel(), _np(labels).ravel()
    clusters, classes = np.unique(pred), np.unique(labels)
    best = 0
    short, long_ = (clusters, classes) if len(clusters) <= len(classes) else (classes, clusters)
    for perm in itertools.permutations(long_, len(short)):
        mapping = dict(zip(short, perm))
        if len(clusters) <= len(classes):
            hits = sum(int(np.sum((pred == c) & (labels == mapping[c]))) for c in short)
        else:
            hits = sum(int(np.sum((labels == c) & (pred == mapping[c]))) for c in short)
        best = max(best, hits)
    return best / pred.size


# -- k-means ------------------------------------------------------------------------------
def _sq_dists(X, X_sq, centers):
    d = X_sq[:, None] - 2.0 * X @ centers.T + (centers * centers).sum(axis=1)[None, :]
    return np.maximum(d, 0.0)


def _cluster_sums(X, assign, counts):
    """Per-cluster sums of rows: sort once, add contiguous runs (np.add.at is far slower)."""
    sums = np.zeros((len(counts), X.shape[1]))
    filled = np.flatnonzero(counts)
    order = np.argsort(assign, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
    sums[filled] = np.add.reduceat(X[order], starts, axis=0)
    return sums


def _kmeans_pp(X, X_sq, k, rng):
    n = len(X)
    centers = np.empty((k, X.shape[1]))
    centers[0] = X[rng.integers(n)]
    closest = _sq_dists(X, X_sq, centers[:1])[:, 0]
    for j in range(1, k):
        total = closest.sum()
        idx = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centers[j] = X[idx]
        closest = np.minimum(closest, _sq_dists(X, X_sq, centers[j:j + 1])[:, 0])
    return centers


def kmeans(X, k: int = 10, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           seed: int | np.random.Generator | None = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """k-means (Lloyd) with k-means++ starts; the best of ``n_init`` runs by inertia.

    Returns ``(centers (k, D), assignment (N,), inertia)``. Converges when the centres
    move less than ``tol`` times the mean per-feature variance (squared, summed), as in
    scikit-learn. An empty cluster is re-seeded with the point farthest from its centre.
    """
    X = _np(X).astype(np.float64).reshape(len(X), -1)
    n = len(X)
    if not (1 <= k <= n):
        raise ValueError(f"k must be in [1, {n}], got {k}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    X_sq = (X * X).sum(axis=1)
    threshold = tol * float(X.var(axis=0).mean())
    best = None
    for _ in range(max(1, n_init)):
        centers = _kmeans_pp(X, X_sq, k, rng)
        for _ in range(max_iter):
            d = _sq_dists(X, X_sq, centers)
            assign = d.argmin(axis=1)
            counts = np.bincount(assign, minlength=k)
            sums = _cluster_sums(X, assign, counts)
            new = centers.copy()
            filled = counts > 0
            new[filled] = sums[filled] / counts[filled, None]
            for c in np.flatnonzero(~filled):
                far = int(d[np.arange(n), assign].argmax())
                new[c] = X[far]
                assign[far] = c
            shift = float(((new - centers) ** 2).sum())
            centers = new
            if shift <= threshold:
                break
        d = _sq_dists(X, X_sq, centers)
        assign = d.argmin(axis=1)
        inertia = float(d[np.arange(n), assign].sum())
        if best is None or inertia < best[2]:
            best = (centers, assign, inertia)
    return best


def kmeans10_accuracy(codes, labels, k: int = 10, n_init: int = 10, seed: int = 0,
                      standardize: bool = False) -> float:
    """k-means(k) on ``codes`` (N, ...) then Hungarian matching to ``labels``: accuracy.

    ``standardize`` scales each feature to unit variance first (for codes that mix
    units, such as poses in pixels and radians); off by default, as in SCAE.
    """
    X = _np(codes).astype(np.float64).reshape(len(codes), -1)
    if standardize:
        std = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    _, assign, _ = kmeans(X, k=k, n_init=n_init, seed=seed)
    return hungarian_accuracy(assign, labels)
