"""CCR: composite capsule rendering (thesis fig 2.7, and the box of fig 2.12).

A composite capsule (CC) is a constellation of ACs that move together (2.3.4). Its
pose is an iGeo pose in the world plus a few *distortion* values; its intrinsic
nature is the learned function distortion -> AC-in-CC poses, "a DNN with the same
architecture as the encoder ... except that it doesn't use dropout" (a ``GPNN`` with
``dropout=0``). In the optimized mixture of fig 2.12 the function's input also holds
the manager's {y_i}, so one shared network computes every CC's function and a
near-one-of-N y selects which (``n_components`` > 0 here).

Rendering (fig 2.7): INTM on every AC-in-CC pose, MIGP composes CC-in-world with
AC-in-CC (matrix product for the geometry, product for the intensity), ACR renders
each AC, OM combines the contributions.

Choice left open by the thesis: the function's initial output bias places the ACs at
random spots around the CC's centre, at a scale where one template pixel covers
about one output pixel (``initial_ac_poses``); without it all ACs start on top of
each other and break symmetry slowly. ``y_weight_scale`` multiplies the initial
weights from the {y_i} inputs (config ``decoder_y_init``): with the GPNN's default
scale every CC starts with nearly the same constellation.
"""
from __future__ import annotations

import numpy as np

from lab.autodiff import Tensor, concatenate, getitem, reshape, softplus10
from lab.capsules.acr import ACR
from lab.capsules.gpnn import GPNN
from lab.capsules.poses import compose_igeo, default_nice, intensity_raw_for
from lab.capsules.depth import render_output


def initial_ac_poses(n_acs: int, n_channels: int, template_size: int, output_size,
                     spread: float, rng: np.random.Generator) -> np.ndarray:
    """Raw AC-in-CC iGeoNice poses (K, M+6) to start from (the distortion function's bias).

    Intensities start at 1/M per channel (before softplus10 their raw value is
    ``intensity_raw_for``); centres are uniform within ``±spread`` of the CC's centre
    (in output fractions); no rotation, shear.
    """
    poses = np.zeros((n_acs, n_channels + 6))
    poses[:, :n_channels] = intensity_raw_for(1.0 / n_channels)
    for k in range(n_acs):
        centre = rng.uniform(-spread, spread, size=2)
        poses[k, n_channels:] = default_nice(template_size, output_size, centre)
    return poses


class CCR:
    """Distortion (and y) -> AC-in-CC poses, then the rendering of fig 2.7.

    ``ac_poses(distortion (B,D), y (B,C) or None) -> (B, K, M+6)`` (intensities already
    non-negative); ``render(cc_pose (B, 1+6), ac_poses) -> dict`` with ``output``
    (B,H,W), ``contributions`` (B,K,H,W), ``matrices`` (B,K,3,3), ``intensities`` (B,K,M).
    """

    def __init__(self, n_distortions: int, n_acs: int, template_size: int, output_size,
                 n_hidden: int, n_components: int = 0, n_channels: int = 1,
                 output_kind: str = "max_semi_soft", spread: float = 0.25,
                 y_weight_scale: float = 1.0,
                 rng: np.random.Generator | None = None, dtype=np.float32):
        rng = rng or np.random.default_rng(0)
        self.n_distortions, self.n_components = n_distortions, n_components
        self.n_acs, self.n_channels = n_acs, n_channels
        self.output_size, self.output_kind = tuple(output_size), output_kind
        bias = initial_ac_poses(n_acs, n_channels, template_size, output_size, spread, rng)
        self.pose_fn = GPNN(n_distortions + n_components, n_hidden, n_acs * (n_channels + 6),
                            dropout=0.0, rng=rng, output_bias=bias.reshape(-1), out_scale=0.3,
                            dtype=dtype, prefix="ccr")
        if n_components and y_weight_scale != 1.0:
            # Larger initial weights from the one-of-N {y_i} inputs give every CC its own
            # initial constellation, so the manager has a reason to choose from the start.
            self.pose_fn.p("W1").data[n_distortions:] *= y_weight_scale
        self.acs = ACR(n_acs, template_size, output_size, n_channels,
                       depth=output_kind == "explicit_depth", rng=rng, dtype=dtype)
        self.params = {**self.pose_fn.params, **self.acs.params}

    def ac_poses(self, distortion: Tensor, y: Tensor | None = None) -> Tensor:
        inputs = distortion if y is None else (
            y if self.n_distortions == 0 else concatenate([distortion, y], axis=1))
        raw = self.pose_fn.forward(inputs, train=False)
        B, K, M = raw.shape[0], self.n_acs, self.n_channels
        raw = reshape(raw, (B, K, M + 6))
        return concatenate([softplus10(getitem(raw, (slice(None), slice(None), slice(0, M)))),
                            getitem(raw, (slice(None), slice(None), slice(M, M + 6)))], axis=2)

    def render(self, cc_pose: Tensor, ac_poses: Tensor) -> dict:
        """Render ACs placed by ``cc_pose`` (B, 1+6) (CC-in-world) and ``ac_poses`` (B,K,M+6)."""
        M = self.n_channels
        matrices, intensities = compose_igeo(cc_pose, ac_poses, M)
        out = render_output(self.acs, matrices, intensities, self.output_kind)
        out.update(matrices=matrices, intensities=intensities)
        return out

