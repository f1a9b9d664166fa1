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

from lab.autodiff import Tensor, abs, log, maximum, mean, relu, square  # noqa: A004
from lab.autodiff import sum as tsum
from lab.graphics import FILL_DETERMINANT

#: α of the weight decay (2.4.5: "I used α = 10^-6, which is not much").
WEIGHT_DECAY = 1e-6
#: Values within this distance of zero are not penalised (2.4.5).
WEIGHT_DECAY_FREE = 0.1


def weight_decay(params, alpha: float = WEIGHT_DECAY, free: float = WEIGHT_DECAY_FREE) -> Tensor:
    """α Σ max(0, |θ| - free)² over the Tensors in ``params`` (an iterable)."""
    total = None
    for p in params:
        term = tsum(square(relu(abs(p) - free)))
        total = term if total is None else total + term
    if total is None:
        raise ValueError("weight_decay needs at least one parameter")
    return total * alpha


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
