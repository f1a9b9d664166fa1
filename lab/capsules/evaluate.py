"""The numbers of thesis 2.6.2 and 2.6.6 for a trained model (``lab eval capsules``).

- Reconstruction error on the test set, squared error per pixel and as % of the data
  variance (mean over pixels of the per-pixel variance, ``lab.evaluation``), with
  dropout (the training network: dropout on hidden units and distortions, manager
  noise; a fixed seed) and without (2.6.2's deterministic network).
- The 25-label protocol (2.6.6): cluster = argmax y on the training set, each cluster
  labelled by its most confident training case, test error.
- k-means(10) with Hungarian matching on the code (comparable with unsupervised
  clustering results such as SCAE's): on the standardized code features
  ``code_features`` (the manager's y, the selected CC's pose and distortions, the
  ACs' world matrices and intensities), and on y alone.
- For context, ``pca_same_code_size``: the test error of PCA with as many components
  as the code has numbers per image (``linear_code_size``; ``lab.evaluation.pca_baseline``).
"""
from __future__ import annotations

import numpy as np

from lab.capsules.autoencoders import CapsuleAutoencoder
from lab.capsules.code import CapsuleCode


def code_features(code: CapsuleCode) -> np.ndarray:
    """(N, F) features of a code for clustering (see the module docstring)."""
    n = len(code)
    sel = code.selected()
    parts = [code.mixture, code.poses[np.arange(n), sel]]
    if code.distortions is not None and code.distortions.shape[-1] > 0:
        parts.append(code.distortions[np.arange(n), sel])
    if code.ac_matrices is not None:
        parts.append(code.ac_matrices[:, :, :2, :].reshape(n, -1))
        parts.append(code.ac_intensities.reshape(n, -1))
    return np.concatenate([p.reshape(n, -1) for p in parts], axis=1)


def linear_code_size(model: CapsuleAutoencoder) -> int:
    """How many numbers describe one image, for the PCA comparison: the whole code,
    except in a mixture, where only the selected CC's pose (intensity + 6) and its
    distortions render the image (the discrete choice among the CCs is not counted)."""
    c = model.config
    if getattr(model, "kind", "") == "mixture":
        return 7 + c.n_distortions
    return int(model.code_offset.size)


def evaluate_model(model: CapsuleAutoencoder, data: dict, n_test: int | None = None,
                   n_train: int | None = None, seed: int = 0, kmeans: bool = True) -> dict:
    """``data`` as ``lab.capsules.data.load_data``; returns a JSON-able dict."""
    from lab.evaluation import (data_variance, kmeans10_accuracy, label25_error,  # noqa: PLC0415
                                pca_baseline, reconstruction_error)
    test_x, test_y = data["test"]
    train_x, train_y = data["train"]
    if n_test is not None:
        test_x, test_y = test_x[:n_test], (None if test_y is None else test_y[:n_test])
    if n_train is not None:
        train_x, train_y = train_x[:n_train], (None if train_y is None else train_y[:n_train])
    var = data_variance(test_x)
    rec_drop = model.reconstruct(test_x, dropout=True, seed=seed)
    rec_det = model.reconstruct(test_x, dropout=False)
    e_drop = reconstruction_error(test_x, rec_drop, var)
    e_det = reconstruction_error(test_x, rec_det, var)
    out = {"n_test": int(len(test_x)), "data_variance": var,
           "recon_error_test_dropout": e_drop["mse_per_pixel"],
           "recon_error_test_dropout_percent_variance": e_drop["percent_of_variance"],
           "recon_error_test_nodropout": e_det["mse_per_pixel"],
           "recon_error_test_nodropout_percent_variance": e_det["percent_of_variance"],
           "label25_error": None, "kmeans10_accuracy": None}
    k = linear_code_size(model)
    if k < min(len(train_x), model.n_pixels):
        pca = pca_baseline(train_x, test_x, k, var)
        out["pca_same_code_size"] = {"n_components": k, "recon_error_test": pca["mse_per_pixel"],
                                     "percent_variance": pca["percent_of_variance"]}
    if test_y is None or train_y is None or getattr(model.config, "dataset", "mnist") != "mnist":
        return out  # Olivetti's labels are 40 subjects, not classes to cluster into 10
    test_code = model.encode(test_x)
    if test_code.n_components > 1:
        train_code = model.encode(train_x)
        err, details = label25_error(train_code.mixture, train_y, test_code.mixture, test_y)
        out["label25_error"] = float(err)
        out["label25_error_majority_labels"] = details["majority_error"]  # footnote 22
        out["label25_details"] = {k: details[k] for k in ("cluster_labels", "n_labels_used",
                                                          "unlabelled_test_fraction",
                                                          "majority_agreement")}
        y = test_code.mixture
        out["mixture_max_y_mean"] = float(y.max(axis=1).mean())
        out["mixture_clusters_used"] = int((np.bincount(y.argmax(1), minlength=y.shape[1]) > 0).sum())
    if kmeans:
        out["kmeans10_accuracy"] = float(kmeans10_accuracy(code_features(test_code), test_y,
                                                           standardize=True, seed=seed))
        if test_code.n_components > 1:
            out["kmeans10_accuracy_mixture"] = float(kmeans10_accuracy(test_code.mixture, test_y,
                                                                       seed=seed))
    return out


def evaluate_checkpoint(path, which: str = "final", n_test: int | None = None,
                        n_train: int | None = None, seed: int = 0, kmeans: bool = True,
                        threads: int | None = 1, data_path=None) -> dict:
    """``lab eval capsules``: :func:`evaluate_model` of a checkpoint (a .npz file, or a run
    directory's ``which`` checkpoint, see ``find_checkpoint``) on its config's dataset,
    with ``threads`` BLAS threads; the dict also names the checkpoint, config and step."""
    from lab.capsules import find_checkpoint, load  # noqa: PLC0415
    from lab.capsules.data import load_data  # noqa: PLC0415
    from lab.capsules.run import limit_blas_threads  # noqa: PLC0415
    path = find_checkpoint(path, which)
    with limit_blas_threads(threads):
        model = load(path)
        data = load_data(model.config, data_path)
        result = evaluate_model(model, data, n_test=n_test, n_train=n_train, seed=seed,
                                kmeans=kmeans)
    return {"checkpoint": str(path), "config": model.config.name,
            "step": model.meta.get("step"), **result}
