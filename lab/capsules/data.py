"""The images each config trains on, scaled to [0, 1] float32 (thesis 2.6, 2.7).

MNIST: thesis 3.3.2's split (50,000 train / 10,000 valid / 10,000 test) from
``lab.data.mnist_splits``. Olivetti faces (the stand-in for the TFD, which may not be
used): 400 images split by a fixed permutation into 320 train / 40 valid / 40 test,
and downsampled by block averaging when ``image_size`` is below 64.
"""
from __future__ import annotations

import numpy as np

from lab.capsules.configs import CapsuleConfig


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 0..1 (floats are passed through as float32)."""
    a = np.asarray(images)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    return a.astype(np.float32, copy=False)


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Block-average (N, S, S) images to (N, size, size); S must be a multiple of size."""
    n, s, s2 = images.shape
    if s == size:
        return images
    if s % size or s != s2:
        raise ValueError(f"cannot block-average {s}x{s2} images to {size}x{size}")
    f = s // size
    return images.reshape(n, size, f, size, f).mean(axis=(2, 4))


def load_data(config: CapsuleConfig, path=None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``{"train", "valid", "test"}`` -> ``(images float32 (N,H,W) in [0,1], labels or None)``."""
    if config.dataset == "mnist":
        from lab.data import mnist_splits  # noqa: PLC0415
        splits = mnist_splits(path)
        out = {k: (to_unit(x), np.asarray(y)) for k, (x, y) in splits.items()}
        if config.image_size != 28:
            raise ValueError("MNIST configs need image_size=28")
        return out
    if config.dataset == "olivetti":
        from lab.data import load_olivetti  # noqa: PLC0415
        loaded = load_olivetti(path)
        images, subjects = (loaded if isinstance(loaded, tuple) else (loaded, None))
        images = downsample(to_unit(images), config.image_size)
        order = np.random.default_rng(0).permutation(len(images))
        parts = {"train": order[:320], "valid": order[320:360], "test": order[360:]}
        return {k: (images[idx], None if subjects is None else np.asarray(subjects)[idx])
                for k, idx in parts.items()}
    raise ValueError(f"unknown dataset {config.dataset!r}")
