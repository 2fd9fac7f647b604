"""Class-encoding triggers for universal backdoors (Schneider, Lukas, Kerschbaum 2023, arXiv 2312.00157).

Each class k has an n-bit code; the trigger for k writes that code into the image. ``PatchGrid``
draws the bits as black/white cells of a small grid; ``BlendGrid`` splits the whole image into a
grid of regions and blends region j toward one of two colours according to bit j. Both are pure
functions of a batch: ``trigger(x, target)`` stamps image i with the code of class ``target[i]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from poisonlab.core import PoisonlabError
from poisonlab.triggers.patch import POSITIONS


def check_codes(codes: Tensor) -> Tensor:
    """``codes`` as a float (C, n) tensor of 0/1 bits, or a one-line error."""
    if codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
        raise PoisonlabError(f"class codes: expected a (classes, bits) tensor, got shape {tuple(codes.shape)}")
    if not torch.isin(codes, torch.tensor([0, 1], dtype=codes.dtype)).all():
        raise PoisonlabError("class codes: expected bits that are 0 or 1")
    return codes.float()


def grid_shape(bits: int, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols >= ``bits`` and cells as close to square as the image allows."""
    rows = max(1, min(bits, round(math.sqrt(bits * height / width))))
    return rows, math.ceil(bits / rows)


def _edges(length: int, parts: int) -> list[int]:
    return [round(i * length / parts) for i in range(parts + 1)]


def _targets(x: Tensor, target: Tensor | None, num_classes: int) -> Tensor:
    if target is None:
        raise PoisonlabError("class-encoding trigger: expected the target class of every image, got None")
    if target.shape != (len(x),):
        raise PoisonlabError(f"class-encoding trigger: expected {len(x)} targets, got shape {tuple(target.shape)}")
    if len(target) and not (0 <= int(target.min()) and int(target.max()) < num_classes):
        raise PoisonlabError(f"class-encoding trigger: targets must be classes in [0, {num_classes - 1}]")
    return target.long()


@dataclass(frozen=True, eq=False)
class BlendGrid:
    """Blend region j of the image toward ``colors[bit j]`` with opacity ``alpha``.

    The image is split into a rows x cols grid covering all of it (``grid_shape``); cells beyond
    the code length are left untouched.

    Shape: x (N, C, H, W) in [0, 1], target (N,) -> (N, C, H, W).
    """

    codes: Tensor
    alpha: float = 0.25
    colors: tuple[float, float] = (0.0, 1.0)
    rows: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "codes", check_codes(self.codes))
        if not 0.0 < self.alpha <= 1.0:
            raise PoisonlabError(f"blend grid alpha {self.alpha}: expected a value in (0, 1]")
        if not all(0.0 <= c <= 1.0 for c in self.colors) or self.colors[0] == self.colors[1]:
            raise PoisonlabError(f"blend grid colors {self.colors}: expected two different values in [0, 1]")
        if self.rows is not None and not 1 <= self.rows <= self.bits:
            raise PoisonlabError(f"blend grid rows {self.rows}: expected 1 to {self.bits}")

    @property
    def bits(self) -> int:
        return int(self.codes.shape[1])

    def layout(self, height: int, width: int) -> tuple[int, int]:
        if self.rows is not None:
            return self.rows, math.ceil(self.bits / self.rows)
        return grid_shape(self.bits, height, width)

    def regions(self, height: int, width: int) -> Tensor:
        """(bits, H, W) 0/1 masks, mask j covering the region of bit j."""
        rows, cols = self.layout(height, width)
        if rows > height or cols > width:
            raise PoisonlabError(f"blend grid of {rows}x{cols} regions does not fit a {height}x{width} image")
        r, c = _edges(height, rows), _edges(width, cols)
        masks = torch.zeros(self.bits, height, width)
        for j in range(self.bits):
            i, k = divmod(j, cols)
            masks[j, r[i] : r[i + 1], c[k] : c[k + 1]] = 1.0
        return masks

    def __call__(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        target = _targets(x, target, len(self.codes))
        masks = self.regions(x.shape[-2], x.shape[-1])
        low, high = self.colors
        color = low + (high - low) * self.codes[target]  # (N, bits)
        pattern = torch.einsum("nb,bhw->nhw", color, masks)[:, None].to(x.dtype)
        weight = (self.alpha * masks.sum(0)).to(x.dtype)
        return ((1 - weight) * x + weight * pattern).clamp(0, 1)

    def decode(self, stamped: Tensor, clean: Tensor) -> Tensor:
        """The bits carried by ``stamped``, read against the ``clean`` images it was made from: (N, bits)."""
        masks = self.regions(stamped.shape[-2], stamped.shape[-1])
        shift = (stamped - (1 - self.alpha) * clean).mean(1)  # alpha * colour where no clipping occurred
        per_region = torch.einsum("nhw,bhw->nb", shift, masks) / masks.sum((1, 2))
        return (per_region > self.alpha * sum(self.colors) / 2).long()


@dataclass(frozen=True, eq=False)
class PatchGrid:
    """A rows x cols grid of ``cell`` x ``cell`` squares at ``position``: bit 1 white, bit 0 black.

    Cells beyond the code length are drawn grey (0.5) so the grid has a fixed outline.

    Shape: x (N, C, H, W) in [0, 1], target (N,) -> (N, C, H, W).
    """

    codes: Tensor
    cell: int = 2
    position: str = "top-left"
    margin: int = 1
    rows: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "codes", check_codes(self.codes))
        if self.position not in POSITIONS:
            raise PoisonlabError(f"patch grid position {self.position!r}: expected one of {', '.join(POSITIONS)}")
        if self.cell < 1 or self.margin < 0:
            raise PoisonlabError(f"patch grid: expected cell >= 1 and margin >= 0, got {self.cell}, {self.margin}")
        if self.rows is not None and not 1 <= self.rows <= self.bits:
            raise PoisonlabError(f"patch grid rows {self.rows}: expected 1 to {self.bits}")

    @property
    def bits(self) -> int:
        return int(self.codes.shape[1])

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, rows, cols) of the grid in an image of ``height`` x ``width``."""
        rows = self.rows if self.rows is not None else grid_shape(self.bits, height, width)[0]
        cols = math.ceil(self.bits / rows)
        h, w = rows * self.cell, cols * self.cell
        if h + 2 * self.margin > height or w + 2 * self.margin > width:
            raise PoisonlabError(f"patch grid {h}x{w} px, margin {self.margin}, does not fit a {height}x{width} image")
        vertical, horizontal = self.position.split("-")[0], self.position.split("-")[-1]
        top = {"top": self.margin, "bottom": height - self.margin - h}.get(vertical, (height - h) // 2)
        left = {"left": self.margin, "right": width - self.margin - w}.get(horizontal, (width - w) // 2)
        return top, left, rows, cols

    def __call__(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        target = _targets(x, target, len(self.codes))
        top, left, rows, cols = self.box(x.shape[-2], x.shape[-1])
        cells = torch.full((len(x), rows * cols), 0.5)
        cells[:, : self.bits] = self.codes[target]
        block = cells.view(len(x), 1, rows, cols).repeat_interleave(self.cell, 2).repeat_interleave(self.cell, 3)
        out = x.clone()
        out[..., top : top + rows * self.cell, left : left + cols * self.cell] = block.to(x.dtype)
        return out

    def decode(self, stamped: Tensor, clean: Tensor | None = None) -> Tensor:
        """The bits carried by ``stamped`` (the clean image is not needed): (N, bits)."""
        top, left, rows, cols = self.box(stamped.shape[-2], stamped.shape[-1])
        patch = stamped[..., top : top + rows * self.cell, left : left + cols * self.cell].mean(1)
        cells = patch.reshape(len(stamped), rows, self.cell, cols, self.cell).mean((2, 4)).flatten(1)
        return (cells[:, : self.bits] > 0.5).long()
