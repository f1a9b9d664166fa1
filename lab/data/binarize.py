"""Stochastic binarisation of grey images (thesis 3.3.2)."""
from __future__ import annotations

import numpy as np

from lab.backend import RandomStream, to_numpy


def binarize(images, stream: RandomStream):
    """A fresh 0/1 sample of ``images``, pixel intensities read as Bernoulli probabilities.

    Thesis 3.3.2: "each time a binary data point is required, a real-valued MNIST image
    is binarized by sampling from the given Bernoulli distribution for each pixel", so
    call this once per use (per minibatch), not once per data set. ``images`` are uint8
    (probability ``value / 255``) or floats in [0, 1]; the result is float32 on the
    stream's backend (numpy or CuPy), same shape; ``stream`` supplies the randomness, so
    equal seeds give equal samples and each call advances the stream.
    """
    xp = stream.xp
    images = stream.backend.asarray(images)
    if images.dtype == xp.uint8:
        p = images.astype(xp.float32) / xp.float32(255.0)
    elif images.dtype.kind == "f":
        if images.size:
            lo, hi = float(to_numpy(images.min())), float(to_numpy(images.max()))
            if lo < 0.0 or hi > 1.0 or np.isnan(lo + hi):
                raise ValueError(f"binarize: float intensities must lie in [0, 1], "
                                 f"got [{lo}, {hi}]")
        p = images.astype(xp.float32)  # one code path: equal draws for uint8 and float input
    else:
        raise TypeError(f"binarize: expected uint8 or float images, got {images.dtype}")
    return stream.bernoulli(p, dtype=np.float32)
