"""Mixture managers: TMM (fig 2.9) and RMM (fig 2.10), thesis 2.3.5.

Both turn the encoder's preferences {x_i} into responsibilities {y_i} that sum to 1.
The regularized manager adds i.i.d. noise ξ_i ~ U(0, 10) before normalising, so the
manager only keeps control by making its favourite x_i much larger than the rest:
it learns nearly one-of-N choices, which is what lets the optimized mixture of
fig 2.12 render only one (blended) CC. Neither has learned parts.

At test time the RMM is the TMM: the noise is dropped (its mean, 5 for every
component, would cancel in the softmax anyway), so evaluation is deterministic.
"""
from __future__ import annotations

from lab.autodiff import Tensor, softmax


class TMM:
    """Traditional mixture manager: y_i = exp(x_i - log Σ_j exp(x_j))."""

    noise_high = 0.0

    def __call__(self, x: Tensor, train: bool = False, stream=None) -> Tensor:
        return softmax(x, axis=-1)


class RMM(TMM):
    """Regularized mixture manager: y_i = softmax(x_i + ξ_i), ξ_i ~ U(0, ``noise_high``) in training."""

    def __init__(self, noise_high: float = 10.0):
        if noise_high < 0:
            raise ValueError(f"noise_high must be >= 0, got {noise_high}")
        self.noise_high = float(noise_high)

    def __call__(self, x: Tensor, train: bool = False, stream=None) -> Tensor:
        if train and self.noise_high > 0:
            if stream is None:
                raise ValueError("RMM in training needs a random stream for its noise")
            xi = stream.uniform(x.shape, 0.0, self.noise_high, dtype=x.dtype)
            x = x + Tensor(x.xp.asarray(xi))
        return softmax(x, axis=-1)
