"""Atomic capsules: learned templates and their rendering (ACR, thesis fig 2.3; 2.7.1).

An AC's intrinsic nature is its template (a learned constant); its instantiation is
an iGeo pose (world -> template matrix and intensity). Templates are kept as raw
values and passed through softplus10 (2.4.4: no "negative ink", and near-zero
template pixels are easy to make).

Multi-channel ACs (2.7.1): an AC may own M templates rendered with the same
geometry, each with its own intensity, and added up ("the templates would be
linearly combined, weighted by their intensities") before the output model, so the
output model still sees one contribution per AC. With M = 1 this is the plain ACR.
The rendering itself is ``lab.graphics.render_templates`` (a fused op with its own
backward). With ``depth=True`` every AC also owns a depth template for the
explicit-depth output model of 2.7.2 (``lab.capsules.depth``).
"""
from __future__ import annotations

import numpy as np

from lab.autodiff import Tensor, broadcast_to, concatenate, getitem, reshape, softplus10
from lab.autodiff import sum as tsum
from lab.graphics import render_templates


def initial_templates(n_acs: int, n_channels: int, size: int, rng: np.random.Generator,
                      dtype=np.float32) -> np.ndarray:
    """Raw template values (before softplus10): a soft blob plus noise.

    A blob puts ink where a new template is placed, so every AC draws something and
    gets a gradient from the start (2.4.3's "gradient maintenance"); the noise breaks
    the symmetry between ACs.
    """
    r = (np.arange(size) - (size - 1) / 2) / (size / 2)
    blob = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 0.35 ** 2))
    raw = 0.6 * blob[None, None] - 0.1 + 0.15 * rng.standard_normal((n_acs, n_channels, size, size))
    return raw.astype(dtype)


class ACR:
    """``n_acs`` atomic capsules with ``n_channels`` templates of ``size``x``size`` each.

    ``render(world_to_template (B,K,3,3), intensity (B,K,M)) -> (B,K,H,W)``: the
    per-AC contributions that the output model combines.
    """

    def __init__(self, n_acs: int, template_size: int, output_size, n_channels: int = 1,
                 depth: bool = False, rng: np.random.Generator | None = None, dtype=np.float32,
                 prefix: str = "acs"):
        rng = rng or np.random.default_rng(0)
        self.n_acs, self.n_channels, self.template_size = n_acs, n_channels, template_size
        self.depth = bool(depth)
        self.output_size = tuple(output_size)
        self.prefix = prefix
        self.params = {f"{prefix}.templates": Tensor(
            initial_templates(n_acs, n_channels + self.depth, template_size, rng, dtype),
            requires_grad=True)}

    @property
    def raw_templates(self) -> Tensor:
        return self.params[f"{self.prefix}.templates"]

    def templates(self) -> Tensor:
        """The non-negative templates (K, M, T, T); with ``depth`` (2.7.2) the last of
        M + 1 channels is the depth template."""
        return softplus10(self.raw_templates)

    def render_with_depth(self, world_to_template: Tensor, intensity: Tensor):
        """(values (B,K,H,W), depths (B,K,H,W)) for the explicit-depth output model:
        the depth channel is rendered with the AC's geometry and intensity 1."""
        if not self.depth:
            raise ValueError("this ACR has no depth templates (depth=False)")
        B, K = world_to_template.shape[:2]
        M, T = self.n_channels, self.template_size
        H, W = self.output_size
        ones = Tensor(world_to_template.xp.ones((B, K, 1), dtype=world_to_template.dtype))
        inten = concatenate([reshape(intensity, (B, K, M)), ones], axis=2)
        mats = reshape(broadcast_to(reshape(world_to_template, (B, K, 1, 3, 3)),
                                    (B, K, M + 1, 3, 3)), (B, K * (M + 1), 3, 3))
        out = render_templates(reshape(self.templates(), (K * (M + 1), T, T)), mats,
                               reshape(inten, (B, K * (M + 1))), size=self.output_size)
        out = reshape(out, (B, K, M + 1, H, W))
        values = tsum(getitem(out, (slice(None), slice(None), slice(0, M))), axis=2)
        return values, reshape(getitem(out, (slice(None), slice(None), M)), (B, K, H, W))

    def render(self, world_to_template: Tensor, intensity: Tensor) -> Tensor:
        B, K = world_to_template.shape[:2]
        M, T = self.n_channels, self.template_size
        if self.depth:
            return self.render_with_depth(world_to_template, intensity)[0]
        templates = self.templates()
        if M == 1:
            return render_templates(reshape(templates, (K, T, T)), world_to_template,
                                    reshape(intensity, (B, K)), size=self.output_size)
        # Every channel is rendered with its AC's matrix, then the channels are added.
        flat_t = reshape(templates, (K * M, T, T))
        mats = broadcast_to(reshape(world_to_template, (B, K, 1, 3, 3)), (B, K, M, 3, 3))
        mats = reshape(mats, (B, K * M, 3, 3))
        out = render_templates(flat_t, mats, reshape(intensity, (B, K * M)), size=self.output_size)
        H, W = self.output_size
        return tsum(reshape(out, (B, K, M, H, W)), axis=2)
