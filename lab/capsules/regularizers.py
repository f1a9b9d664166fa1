"""The regularizers of thesis 2.4, each a loss term (a scalar Tensor) to *minimise*.

- ``weight_decay``: α Σ max(0, |θ| - 0.1)² over every learnable parameter, α = 1e-6
  (2.4.5: values within 0.1 of zero are as acceptable as zero, and keep gradients).
- ``softplus10`` (in ``lab.autodiff``) makes templates and intensities non-negative:
  no "negative ink" (2.4.4). It is applied where they are made, not here.
- ``determinant_penalty``: α·max(0, s - det(world -> template))², summed over ACs and
  averaged over cases (2.4.5): a template scaled up so much that most of it falls
  outside the output loses its gradients. ``s`` is the determinant at which the
  template is exactly as large as the output; see ``full_size_determinant``.
- ``mixture_usage``: the objective gains α Σ_i log(mean_j y_ij), so the loss term is
  its negative (2.4.5: punish a manager that gives a component no work in a batch).
- ``code_decay``: α·mean_cases Σ v² over the code layer's values (2.4.5, "a bit of such
  decay to the values in the code layer"). The code values are the encoder's linear
  outputs, whose zero is the default pose (the default is the output bias at
  initialisation and is added back as a constant), so the decay pulls towards the
  default, not towards a degenerate zero scale.
"""
from __future__ import annotations

from lab.autodiff import Tensor, log, maximum, mean, relu, square
from lab.autodiff import sum as tsum
from lab.autodiff.function import Function
from lab.graphics import FILL_DETERMINANT

#: α of the weight decay (2.4.5: "I used α = 10^-6, which is not much").
WEIGHT_DECAY = 1e-6
#: Values within this distance of zero are not penalised (2.4.5).
WEIGHT_DECAY_FREE = 0.1


class WeightDecay(Function):
    """α Σ max(0, |θ| - free)² over several parameter arrays, as one graph node (2.4.5).

    With ``s = θ - clip(θ, -free, free)`` (the part of θ beyond ±free, signed) the value
    is α Σ s² and the gradient 2α s: three passes over the parameters forward and one
    backward, instead of an abs/sub/relu/square/sum chain per parameter (on the
    4.4M-parameter mnist-thesis model, forward + backward alone: 93 ms for the chain and
    12 ms for this node on the 2-core CPU; on the GPU the chain was ~6 ms of launches)."""

    label = "weight_decay"

    def __init__(self, alpha: float, free: float):
        self.alpha, self.free = float(alpha), float(free)

    def forward(self, xp, *thetas):
        self.beyond = [t - xp.clip(t, -self.free, self.free) for t in thetas]
        terms = [xp.vdot(s.ravel(), s.ravel()) for s in self.beyond]
        total = terms[0] if len(terms) == 1 else xp.stack(terms).sum()
        return xp.asarray(total * self.alpha, dtype=thetas[0].dtype)

    def forward_gpu(self, xp, *thetas):  # pragma: no cover - needs a GPU
        """As ``forward`` with the squares summed by reduction kernels and added up on the
        device: CuPy's ``vdot`` is a cuBLAS call and its ``stack`` of more than 8 arrays
        uploads a pointer table, neither of which a CUDA graph can record."""
        self.beyond = [t - xp.clip(t, -self.free, self.free) for t in thetas]
        total = (self.beyond[0] * self.beyond[0]).sum()
        for s in self.beyond[1:]:
            total += (s * s).sum()
        return (total * self.alpha).astype(thetas[0].dtype)

    def backward(self, xp, gy):
        scale = gy * (2.0 * self.alpha)
        return tuple(s * scale.astype(s.dtype) for s in self.beyond)


def weight_decay(params, alpha: float = WEIGHT_DECAY, free: float = WEIGHT_DECAY_FREE) -> Tensor:
    """α Σ max(0, |θ| - free)² over the Tensors in ``params`` (an iterable)."""
    params = list(params)
    if not params:
        raise ValueError("weight_decay needs at least one parameter")
    return WeightDecay(alpha, free)(*params)


def determinant(world_to_template: Tensor) -> Tensor:
    """det of the 2x2 linear part of (..., 3, 3) affine matrices (the third row is 0 0 1)."""
    m = world_to_template
    return m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]


def full_size_determinant(template_size: int, output_size) -> float:
    """``s`` of the determinant penalty for the graphics convention of ``lab.graphics``:
    world and template are both unit squares (thesis 2.3.2), so a template exactly as
    large as the output has det(world -> template) = 1 whatever the pixel counts
    (``lab.graphics.FILL_DETERMINANT``)."""
    return float(FILL_DETERMINANT)


def determinant_penalty(world_to_template: Tensor, s: float, alpha: float) -> Tensor:
    """α · mean over cases of Σ over capsules of max(0, s - det)²; input (B, K, 3, 3)."""
    short = relu(s - determinant(world_to_template))
    return tsum(square(short)) * (alpha / world_to_template.shape[0])


def mixture_usage(y: Tensor, alpha: float, eps: float = 1e-8) -> Tensor:
    """-α Σ_i log(mean_j y_ij) for responsibilities ``y`` (N, C): the loss form of 2.4.5.

    ``eps`` only guards the log against an exact 0 (float underflow)."""
    share = mean(y, axis=0)
    return tsum(log(maximum(share, eps))) * (-alpha)


def code_decay(values, alpha: float) -> Tensor:
    """α · mean over cases of Σ v² over the code tensors ``values`` (each (B, ...))."""
    total = None
    for v in values:
        term = tsum(square(v)) * (1.0 / v.shape[0])
        total = term if total is None else total + term
    return total * alpha
