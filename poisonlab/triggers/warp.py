"""Warping trigger (WaNet: Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021).

A fixed, smooth displacement field moves every pixel by a fraction of a pixel: a k x k grid of
uniform[-1, 1] offsets (two per control point, x and y), normalised by its mean absolute value,
upsampled bicubically to the image and scaled by ``strength / size``, is added to the identity
sampling grid, which is clamped to the image and applied with ``grid_sample``. Nothing is drawn
on the image, so patch- and blend-shaped assumptions do not hold; the paper uses k = 4, s = 0.5.

Shape: x (N, C, H, W) in [0, 1] -> (N, C, H, W); any channel count and size with k <= min(H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from poisonlab.core import PoisonlabError, check_seed
from poisonlab.registry import TRIGGERS


@TRIGGERS.register("warp", "WaNet smooth warping field: k, strength, grid_rescale, seed (Nguyen & Tran 2021)")
@dataclass(frozen=True)
class Warp:
    """The fixed warp drawn from ``seed``: a ``k`` x ``k`` control grid, displacement ``strength``.

    Example:
        >>> warped = Warp(k=4, strength=0.5)(images, None)
    """

    k: int = 4
    strength: float = 0.5
    grid_rescale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 2:
            raise PoisonlabError(f"warp k {self.k}: expected a control grid of at least 2 x 2 points")
        if not self.strength > 0:
            raise PoisonlabError(f"warp strength {self.strength}: expected a number > 0 (0 would leave images as "
                                 "they are)")
        if not 0.0 < self.grid_rescale <= 1.0:
            raise PoisonlabError(f"warp grid_rescale {self.grid_rescale}: expected a value in (0, 1]")
        check_seed(self.seed, "warp seed")

    def flow(self, height: int, width: int) -> Tensor:
        """The (1, H, W, 2) displacement field (x, y) with mean absolute value 1 at the control points."""
        if self.k > min(height, width):
            raise PoisonlabError(f"warp k {self.k}: expected at most the image's smaller side, {min(height, width)}")
        control = torch.rand(1, 2, self.k, self.k, generator=torch.Generator().manual_seed(self.seed)) * 2 - 1
        control = control / control.abs().mean()
        return F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)

    def grid(self, height: int, width: int) -> Tensor:
        """The (1, H, W, 2) sampling grid in ``grid_sample``'s [-1, 1] coordinates, clamped to the image."""
        rows, cols = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        identity = torch.stack((cols, rows), -1)[None]
        size = torch.tensor([width, height], dtype=torch.float32)  # the paper divides by the (square) image side
        return ((identity + self.strength * self.flow(height, width) / size) * self.grid_rescale).clamp(-1, 1)

    def noisy_grid(self, n: int, height: int, width: int, rng: torch.Generator) -> Tensor:
        """``n`` (N, H, W, 2) grids: the warp plus per-pixel uniform noise of up to one grid step (WaNet's noise
        mode, whose samples teach the network that only this exact warp is the trigger)."""
        size = torch.tensor([width, height], dtype=torch.float32)
        noise = (torch.rand(n, height, width, 2, generator=rng) * 2 - 1) / size
        return (self.grid(height, width) + noise).clamp(-1, 1)

    def __call__(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        grid = self.grid(x.shape[-2], x.shape[-1]).expand(len(x), -1, -1, -1)
        return sample(x, grid)


def sample(x: Tensor, grid: Tensor) -> Tensor:
    """``x`` resampled bilinearly at ``grid`` (align_corners: -1 and 1 are the outer pixel centres), in [0, 1]."""
    if not len(x):
        return x.clone()
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return out.clamp(0, 1)
