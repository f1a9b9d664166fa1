"""Reconstruction error as the thesis reports it (fig 2.14's caption, 2.6.2, 2.7).

"The squared reconstruction error per pixel (1/N) sum_i (x_i - xhat_i)^2", averaged
over images, and the same as a percentage of "data variance". The thesis does not
define data variance; this module uses **the mean over pixels of each pixel's variance
across the data set** (= total variance / number of pixels). That is the definition
that reproduces the thesis's MNIST percentages. Held-out (test variance 0.0674):
0.0069 -> 10.2% and 0.0104 -> 15.4% (thesis: 10%, 15%); training (variance 0.0673):
0.0057 -> 8.5% and 0.0095 -> 14.1% (thesis: 9%, 15%: close, not exact). The pooled
variance of all pixel values (0.096) would give 7%, 11%, 6%, 10%: clearly not it.
"""
from __future__ import annotations

import numpy as np

from lab.backend import to_numpy


def data_variance(x) -> float:
    """Mean over pixels of the per-pixel variance across the data set (rows = cases)."""
    x = np.asarray(to_numpy(x), dtype=np.float64).reshape(len(x), -1)
    return float(x.var(axis=0).mean())


def reconstruction_error(x, recon, variance: float | None = None) -> dict[str, float]:
    """``{"mse_per_pixel", "percent_of_variance", "data_variance"}`` for images ``x`` (N, ...).

    ``variance`` overrides the data variance (e.g. the training set's, or the full test
    set's when ``x`` is a subset); by default it is computed from ``x``.
    """
    x = np.asarray(to_numpy(x), dtype=np.float64)
    recon = np.asarray(to_numpy(recon), dtype=np.float64)
    if x.shape != recon.shape:
        raise ValueError(f"x {x.shape} and recon {recon.shape} differ in shape")
    mse = float(np.mean((x - recon) ** 2))
    var = data_variance(x) if variance is None else float(variance)
    return {"mse_per_pixel": mse,
            "percent_of_variance": 100.0 * mse / var if var > 0 else float("inf"),
            "data_variance": var}


def pca_baseline(train, test, n_components: int, variance: float | None = None,
                 max_train: int = 20000) -> dict[str, float]:
    """The error of the best *linear* code of ``n_components`` numbers, for context:
    PCA fitted on (the first ``max_train`` of) ``train``, ``test`` projected onto it and
    back. Returns ``reconstruction_error``'s dict plus ``n_components``.

    A capsule code with the same number of numbers should beat it; the thesis's faces
    model (29% of variance with 17 pose and distortion numbers, 2.7) is close to it.
    """
    train = np.asarray(to_numpy(train), dtype=np.float64).reshape(len(train), -1)[:max_train]
    test_flat = np.asarray(to_numpy(test), dtype=np.float64).reshape(len(test), -1)
    k = int(n_components)
    if not 0 < k <= min(train.shape):
        raise ValueError(f"n_components must be in 1..{min(train.shape)}, got {n_components}")
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:k]
    recon = (test_flat - mean) @ basis.T @ basis + mean
    out = reconstruction_error(test_flat, recon, variance)
    out["n_components"] = k
    return out
