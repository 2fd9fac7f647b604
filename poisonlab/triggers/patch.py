"""Patch triggers (BadNets, Gu et al. 2017): a square, a checkerboard or a single pixel stamped at a fixed place."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from poisonlab.core import PoisonlabError
from poisonlab.registry import TRIGGERS

POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")


def _check(size: int, position: str, color: float, margin: int) -> None:
    if position not in POSITIONS:
        raise PoisonlabError(f"trigger position {position!r}: expected one of {', '.join(POSITIONS)}")
    if size < 1 or margin < 0:
        raise PoisonlabError(f"trigger: expected size >= 1 and margin >= 0, got size={size}, margin={margin}")
    if not 0.0 <= color <= 1.0:
        raise PoisonlabError(f"trigger color {color}: expected a value in [0, 1]")


def corner(height: int, width: int, size: int, position: str, margin: int) -> tuple[int, int]:
    """Top-left (row, column) of a ``size`` square at ``position``, ``margin`` pixels from the edges."""
    if size + 2 * margin > min(height, width):
        raise PoisonlabError(f"trigger of size {size} with margin {margin} does not fit a {height}x{width} image")
    bottom, right = height - margin - size, width - margin - size
    return {
        "bottom-right": (bottom, right),
        "bottom-left": (bottom, margin),
        "top-right": (margin, right),
        "top-left": (margin, margin),
        "center": ((height - size) // 2, (width - size) // 2),
    }[position]


@TRIGGERS.register("patch", "solid square: size, position, color, margin")
@dataclass(frozen=True)
class Patch:
    """A solid ``size`` x ``size`` square of intensity ``color`` on every channel."""

    size: int = 3
    position: str = "bottom-right"
    color: float = 1.0
    margin: int = 1

    def __post_init__(self) -> None:
        _check(self.size, self.position, self.color, self.margin)

    def pattern(self) -> Tensor:
        return torch.full((self.size, self.size), float(self.color))

    def __call__(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        r, c = corner(x.shape[-2], x.shape[-1], self.size, self.position, self.margin)
        out = x.clone()
        out[..., r : r + self.size, c : c + self.size] = self.pattern().to(x.dtype)
        return out


@TRIGGERS.register("checkerboard", "square of alternating color/1-color cells: size, position, color, margin")
@dataclass(frozen=True)
class Checkerboard(Patch):
    """Cells alternating between ``color`` and ``1 - color``, top-left cell ``color``."""

    def pattern(self) -> Tensor:
        i = torch.arange(self.size)
        even = (i[:, None] + i[None, :]) % 2 == 0
        return torch.where(even, float(self.color), 1.0 - float(self.color))


@TRIGGERS.register("pixel", "one pixel: position, color, margin")
@dataclass(frozen=True)
class Pixel(Patch):
    """A single pixel (Gu et al.'s single-pixel backdoor)."""

    size: int = 1

    def __post_init__(self) -> None:
        if self.size != 1:
            raise PoisonlabError(f"pixel trigger: size={self.size}, but a pixel trigger is one pixel (size 1); "
                                 "use patch:size=N for a square")
        super().__post_init__()
