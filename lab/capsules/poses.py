"""Pose algebra used by the capsule models: INTM and MIGP on iGeoNice poses.

Poses follow ``lab.capsules.code``: ``[intensity_1 .. intensity_M, t0, t1, s0, s1, z, θ]``
with the geometry read by ``lab.graphics.nice_to_matrix`` (world -> template, unit
squares; the template's centre appears at world ``(0.5 - t0, 0.5 - t1)`` and is
``1/s`` canvases large).

MIGP (fig 2.8): the AC-in-world pose is the CC-in-world pose times the AC-in-CC pose.
For world -> object matrices (what the renderer wants) that product is
``(world -> AC) = (CC -> AC) · (world -> CC)``; intensities multiply.
"""
from __future__ import annotations

import math

import numpy as np

from lab.autodiff import Tensor, getitem, reshape
from lab.graphics import compose, nice_to_matrix

#: Slice of the geometric part in a pose with M intensities.
POSE_GEOMETRY = "pose[..., M:M+6]"


def intensity_raw_for(value: float) -> float:
    """The raw value whose softplus10 is ``value`` (> 0): log(exp(10 v) - 1) / 10."""
    if value <= 0:
        raise ValueError("softplus10 only reaches positive values")
    return float(value + math.log(-math.expm1(-10.0 * value)) / 10.0)


def default_nice(template_size: int | None, output_size, centre) -> np.ndarray:
    """Nice geometry placing a template's centre at ``centre`` (offsets from the output's
    centre, in canvas fractions) at native pixel size (``s = output / template``);
    ``template_size=None`` gives scale 1 (a frame as large as the canvas: the identity
    at the centre, used for CC-in-world defaults)."""
    h, w = (output_size, output_size) if isinstance(output_size, int) else output_size
    s0, s1 = (1.0, 1.0) if template_size is None else (h / template_size, w / template_size)
    return np.array([-centre[0], -centre[1], s0, s1, 0.0, 0.0])


def split_pose(poses: Tensor, n_intensities: int) -> tuple[Tensor, Tensor]:
    """(..., M+6) -> (intensities (..., M), nice (..., 6))."""
    M = n_intensities
    return (getitem(poses, (Ellipsis, slice(0, M))), getitem(poses, (Ellipsis, slice(M, M + 6))))


def nice_to_igeo(poses: Tensor, n_intensities: int = 1) -> tuple[Tensor, Tensor]:
    """INTM (fig 2.5) for poses (..., M+6): (world -> template matrices (..., 3, 3), intensities (..., M))."""
    intensity, nice = split_pose(poses, n_intensities)
    return nice_to_matrix(nice), intensity


def compose_igeo(cc_pose: Tensor, ac_poses: Tensor, n_intensities: int = 1) -> tuple[Tensor, Tensor]:
    """MIGP (fig 2.8): CC-in-world (B, 1+6) and AC-in-CC (B, K, M+6) -> AC-in-world
    (matrices (B, K, 3, 3) world -> template, intensities (B, K, M))."""
    B = cc_pose.shape[0]
    cc_matrix, cc_intensity = nice_to_igeo(cc_pose, 1)       # (B,3,3), (B,1)
    ac_matrix, ac_intensity = nice_to_igeo(ac_poses, n_intensities)
    return compose(cc_matrix, reshape(cc_intensity, (B, 1, 1)), ac_matrix, ac_intensity)
