"""The preprocess stage: the resize a real pipeline applies before the model, by library and algorithm.

A stage spec is ``RESIZER:WIDTHxHEIGHT`` (``opencv-linear:64x64``): every image, in training and at test
time, goes through that library's resize (its floating-point path, through the recovered linear
operator, so the result is exactly what the library computes on the same float input). Image-scaling
attacks hide in this stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.scaling.operator import ScalingOperator, operator_for
from poisonlab.scaling.resize import RESIZERS, parse_size


def operator(resizer: str, images: Tensor, size: tuple[int, int]) -> ScalingOperator:
    h, w = images.shape[-2:]
    if size[0] > h or size[1] > w:
        raise PoisonlabError(f"pipeline size {size}: expected no larger than the images' {(h, w)}")
    return operator_for(RESIZERS.get(resizer), (int(h), int(w)), size)


def downscale(images: Tensor, resizer: str, size: tuple[int, int]) -> Tensor:
    """The pipeline's resize of NCHW images in [0, 1] (the library's float path, via its recovered operator)."""
    op = operator(resizer, images, size)
    planes = images.detach().cpu().double().numpy().reshape(-1, *images.shape[-2:])
    out = np.clip(op.apply(planes), 0.0, 1.0).reshape(*images.shape[:2], *size)
    return torch.from_numpy(out).float()


@dataclass(frozen=True)
class Resize:
    """One preprocess stage: ``resizer`` to ``size`` (height, width)."""

    resizer: str
    size: tuple[int, int]

    @staticmethod
    def parse(spec: str) -> Resize:
        """``RESIZER:WIDTHxHEIGHT``; one-line errors for an unknown resizer or a bad size."""
        name, colon, size = spec.strip().partition(":")
        RESIZERS.get(name)
        if not colon:
            raise PoisonlabError(f"preprocessing {spec!r}: expected RESIZER:WIDTHxHEIGHT, e.g. opencv-linear:64x64")
        return Resize(name, parse_size(size))

    def __call__(self, data: ImageSet) -> ImageSet:
        return ImageSet(downscale(data.x, self.resizer, self.size), data.y, data.classes)


def preprocess(specs: tuple[str, ...], data: ImageSet) -> ImageSet:
    """``data`` through every stage in order (unchanged when there is none)."""
    for spec in specs:
        data = Resize.parse(spec)(data)
    return data


def upscale(data: ImageSet, ratio: int) -> ImageSet:
    """``ratio``-times bicubic upscale, rounded to 8-bit levels like a stored image."""
    big = F.interpolate(data.x, scale_factor=ratio, mode="bicubic", align_corners=False).clamp(0, 1)
    return ImageSet(torch.round(big * 255) / 255, data.y, data.classes)
