"""The numbers of thesis 2.6.2 and 2.6.6 for a trained model (``lab eval capsules``).

- Reconstruction error on the test set and on the first ``TRAIN_RECON_IMAGES`` training
  images used (the four numbers of fig 2.14's caption), squared error per pixel and as %
  of that set's variance (mean over pixels of the per-pixel variance,
  ``lab.evaluation``), with dropout (the training network: dropout on hidden units and
  distortions, manager noise; a fixed seed) and without (2.6.2's deterministic
  network). Training error near the test error means the model underfits; the
  thesis's without dropout: 0.0057 (training) and 0.0069 (test).
- The 25-label protocol (2.6.6): cluster = argmax y on the training set, each cluster
  labelled by its most confident training case, test error.
- k-means(10) with Hungarian matching on the code (comparable with unsupervised
  clustering results such as SCAE's): on the standardized code features
  ``code_features`` (the manager's y, the selected CC's pose and distortions, the
  ACs' world matrices and intensities), and on y alone.
- ``code_search`` (optional): the test error of the first N test images when each
  image's code is found by gradient descent through the fixed decoder instead of by
  the encoder (``analysis.code_search``): what the encoder costs (2.2).
- For context, ``pca_same_code_size``: the test error of PCA with as many components
  as the code has numbers per image (``linear_code_size``; ``lab.evaluation.pca_baseline``).
"""
from __future__ import annotations

import numpy as np

from lab.capsules.autoencoders import CapsuleAutoencoder
from lab.capsules.code import CapsuleCode

#: How many training images the training-set reconstruction errors are measured on.
TRAIN_RECON_IMAGES = 10000


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


def recon_errors(model: CapsuleAutoencoder, images, split: str, seed: int = 0) -> dict:
    """``recon_error_{split}_{dropout,nodropout}`` and their ``_percent_variance`` (of
    ``images``' own variance): two of fig 2.14's four numbers. ``seed``: the dropout's."""
    from lab.evaluation import data_variance, reconstruction_error  # noqa: PLC0415
    var = data_variance(images)
    out = {}
    for name, recon in (("dropout", model.reconstruct(images, dropout=True, seed=seed)),
                        ("nodropout", model.reconstruct(images, dropout=False))):
        e = reconstruction_error(images, recon, var)
        out[f"recon_error_{split}_{name}"] = e["mse_per_pixel"]
        out[f"recon_error_{split}_{name}_percent_variance"] = e["percent_of_variance"]
    return out


def evaluate_model(model: CapsuleAutoencoder, data: dict, n_test: int | None = None,
                   n_train: int | None = None, seed: int = 0, kmeans: bool = True,
                   code_search_images: int = 0, code_search_steps: int = 300) -> dict:
    """``data`` as ``lab.capsules.data.load_data``; returns a JSON-able dict.
    ``code_search_images`` > 0: also ``code_search`` on that many test images."""
    from lab.evaluation import (data_variance, kmeans10_accuracy, label25_error,  # noqa: PLC0415
                                pca_baseline)
    test_x, test_y = data["test"]
    train_x, train_y = data["train"]
    if n_test is not None:
        test_x, test_y = test_x[:n_test], (None if test_y is None else test_y[:n_test])
    if n_train is not None:
        train_x, train_y = train_x[:n_train], (None if train_y is None else train_y[:n_train])
    var = data_variance(test_x)
    out = {"n_test": int(len(test_x)), "data_variance": var,
           **recon_errors(model, test_x, "test", seed),
           "n_train_recon": int(min(len(train_x), TRAIN_RECON_IMAGES)),
           **recon_errors(model, train_x[:TRAIN_RECON_IMAGES], "train", seed),
           "label25_error": None, "kmeans10_accuracy": None}
    if code_search_images > 0:
        from lab.capsules.analysis import code_search  # noqa: PLC0415
        images = test_x[:code_search_images]
        found = code_search(model, images, steps=code_search_steps)
        out["code_search"] = {"n_images": int(len(images)), "steps": int(code_search_steps),
                              "encoder_error": float(found["error"][0]),
                              "searched_error": float(found["error"][-1]),
                              "searched_percent_variance": 100.0 * float(found["error"][-1]) / var}
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
                        threads: int | None = 1, data_path=None, code_search_images: int = 0,
                        code_search_steps: int = 300) -> dict:
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
                                kmeans=kmeans, code_search_images=code_search_images,
                                code_search_steps=code_search_steps)
    return {"checkpoint": str(path), "config": model.config.name,
            "step": model.meta.get("step"), **result}
