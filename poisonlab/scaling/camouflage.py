"""Camouflage through image scaling (Quiring & Rieck, DLS 2020): images whose downscale is another image.

``camouflage`` crafts high-resolution images close to a source whose pipeline downscale is a target;
``CamouflagedTrigger`` stamps a trigger that exists only after the downscale. The poisoning attack
built on them is ``poisonlab.attacks.scaling_camouflage``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from poisonlab.core import Trigger
from poisonlab.scaling.craft import craft_planes
from poisonlab.scaling.preprocess import downscale, operator


def camouflage(source: Tensor, target: Tensor, resizer: str, eps: float = 1.0) -> Tensor:
    """High-resolution NCHW images close to ``source`` whose downscale is within eps/255 of ``target``."""
    op = operator(resizer, source, tuple(target.shape[-2:]))  # type: ignore[arg-type]
    s = source.detach().cpu().double().numpy().reshape(-1, *source.shape[-2:]) * 255.0
    t = target.detach().cpu().double().numpy().reshape(-1, *target.shape[-2:]) * 255.0
    planes, _ = craft_planes(s, t, op, eps, quantize=True)
    return torch.from_numpy(planes / 255.0).float().reshape(source.shape)


@dataclass(frozen=True)
class CamouflagedTrigger:
    """Stamps ``trigger`` into the downscale of high-resolution images, invisibly at full size."""

    trigger: Trigger
    resizer: str
    size: tuple[int, int]
    eps: float = 1.0

    def __call__(self, x: Tensor, target: Tensor | None) -> Tensor:
        small = downscale(x, self.resizer, self.size)
        return camouflage(x, self.trigger(small, target), self.resizer, self.eps)
