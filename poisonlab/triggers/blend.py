"""Blend trigger (Chen et al. 2017): every pixel moved toward a fixed pattern, x' = (1 - alpha) x + alpha p."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from poisonlab.core import PoisonlabError, check_regular, check_seed
from poisonlab.data.images import read_image
from poisonlab.registry import TRIGGERS


@TRIGGERS.register("blend", "blend toward noise or an image: pattern=noise|PATH, alpha, seed")
@dataclass(frozen=True)
class Blend:
    """Blend toward seeded uniform noise (``pattern='noise'``) or an image file resized to the input."""

    pattern: str = "noise"
    alpha: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise PoisonlabError(f"blend alpha {self.alpha}: expected a value in (0, 1]")
        check_seed(self.seed, "blend seed")
        if self.pattern != "noise":
            if not self.pattern:
                raise PoisonlabError("blend pattern '': expected 'noise' or an image file")
            check_regular(Path(self.pattern), "image file (blend pattern)")

    def image(self, channels: int, height: int, width: int) -> Tensor:
        """The (C, H, W) pattern blended in."""
        if self.pattern == "noise":
            gen = torch.Generator().manual_seed(self.seed)
            return torch.rand(channels, height, width, generator=gen)
        img = torch.from_numpy(read_image(Path(self.pattern), "L" if channels == 1 else "RGB"))
        return F.interpolate(img[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]

    def __call__(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        p = self.image(*x.shape[-3:]).to(x.dtype)
        return ((1 - self.alpha) * x + self.alpha * p).clamp(0, 1)
