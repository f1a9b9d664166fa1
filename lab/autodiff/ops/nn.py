"""Neural-network ops: dropout (thesis 2.2.2 and 2.6.2: 50% on hidden units and distortions)."""
from __future__ import annotations

from lab.autodiff.function import Function, register_op


class Dropout(Function):
    """Multiply by a 0/1 mask drawn from the backend stream (kept for backward)."""

    label = "dropout"

    def __init__(self, rate, stream, rescale):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate, self.stream, self.rescale = rate, stream, rescale

    def forward(self, xp, x):
        keep = 1.0 - self.rate
        u = xp.asarray(self.stream.uniform(x.shape, dtype=x.dtype))  # a copy only if devices differ
        mask = (u < keep).astype(x.dtype)
        self.mask = mask / keep if self.rescale else mask
        return x * self.mask

    def backward(self, xp, gy):
        return (gy * self.mask,)


def _dropout_cases(rng):
    from lab.backend import RandomStream  # noqa: PLC0415
    # A fresh stream with the same seed per call: the same mask at every evaluation.
    return [(lambda x: dropout(x, 0.5, RandomStream(7)), [rng.standard_normal((4, 6))]),
            (lambda x: dropout(x, 0.25, RandomStream(3), rescale=True), [rng.standard_normal((3, 5))])]


@register_op("dropout", _dropout_cases)
def dropout(x, rate, stream, rescale=False):
    """Zero each entry with probability ``rate`` (mask from ``stream``, a RandomStream).

    ``rescale=False`` is the thesis's dropout: no scaling in training, and at test
    time the *outgoing weights* are multiplied by ``1 - rate`` (2.6.2).
    ``rescale=True`` is inverted dropout (divide by ``1 - rate`` while training).
    """
    if rate == 0.0:
        from lab.autodiff.tensor import as_tensor  # noqa: PLC0415
        return as_tensor(x)
    return Dropout(rate, stream, rescale)(x)
