"""Poisoning through image scaling (Quiring & Rieck, DLS 2020, "Backdooring and Poisoning Neural Networks
with Image-Scaling Attacks").

The training set is high-resolution; the pipeline downscales it before the model sees it. The attacker
hides the poison in the downscale with the strong scaling attack, so a person inspecting the training
images sees clean originals:

* dirty-label (camouflaged BadNets): a few images of other classes, relabelled to the target, whose
  downscale carries the trigger;
* clean-label: images of the target class, correctly labelled and looking so at full size, whose downscale
  is a triggered image of another class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from poisonlab.core import ImageSet, Poisoned, PoisonlabError, Trigger
from poisonlab.scaling.craft import craft_planes
from poisonlab.scaling.operator import ScalingOperator, operator_for
from poisonlab.scaling.resize import RESIZERS
from poisonlab.triggers import Patch


def _operator(resizer: str, images: Tensor, size: tuple[int, int]) -> ScalingOperator:
    h, w = images.shape[-2:]
    if size[0] > h or size[1] > w:
        raise PoisonlabError(f"pipeline size {size}: expected no larger than the images' {(h, w)}")
    return operator_for(RESIZERS.get(resizer), (int(h), int(w)), size)


def downscale(images: Tensor, resizer: str, size: tuple[int, int]) -> Tensor:
    """The pipeline's resize of NCHW images in [0, 1] (the library's float path, via its recovered operator)."""
    op = _operator(resizer, images, size)
    planes = images.detach().cpu().double().numpy().reshape(-1, *images.shape[-2:])
    out = np.clip(op.apply(planes), 0.0, 1.0).reshape(*images.shape[:2], *size)
    return torch.from_numpy(out).float()


def camouflage(source: Tensor, target: Tensor, resizer: str, eps: float = 1.0) -> Tensor:
    """High-resolution NCHW images close to ``source`` whose downscale is within eps/255 of ``target``."""
    op = _operator(resizer, source, tuple(target.shape[-2:]))  # type: ignore[arg-type]
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


@dataclass(frozen=True)
class ScalingCamouflage:
    """Camouflaged BadNets through the pipeline's downscale; ``clean_label`` keeps every label correct.

    ``train`` holds the high-resolution images; ``resizer`` and ``size`` (height, width) are the victim
    pipeline's. Dirty-label: ``count`` (or ``rate``) non-target images relabelled to ``target`` whose
    downscale carries the trigger. Clean-label: that many target-class images whose downscale is a
    triggered image of another class (drawn at random), labels untouched.

    Example:
        >>> attack = ScalingCamouflage(resizer="opencv-linear", size=(28, 28), target=0, count=100)
        >>> poisoned = attack.poison(train_112px, torch.Generator().manual_seed(0))
    """

    resizer: str = "opencv-linear"
    size: tuple[int, int] = (28, 28)
    trigger: Trigger = field(default_factory=Patch)
    target: int = 0
    rate: float = 0.01
    count: int | None = None
    clean_label: bool = False
    eps: float = 1.0

    def __post_init__(self) -> None:
        RESIZERS.get(self.resizer)
        if min(self.size) < 1:
            raise PoisonlabError(f"pipeline size {self.size}: expected positive (height, width)")

    def poison(self, train: ImageSet, rng: torch.Generator) -> Poisoned:
        from poisonlab.attacks.badnets import AllToOne, poison_count  # here: poisonlab.attacks registers this class

        if not 0 <= self.target < train.num_classes:
            raise PoisonlabError(f"scaling-camouflage target {self.target}: expected a class in "
                                 f"[0, {train.num_classes - 1}]")
        n = poison_count(len(train), self.rate, self.count)
        is_target = train.y == self.target
        pool = torch.nonzero(is_target if self.clean_label else ~is_target).flatten()
        if n > len(pool):
            raise PoisonlabError(f"poison budget {n} exceeds the {len(pool)} candidate samples")
        idx = pool[torch.randperm(len(pool), generator=rng)[:n]].sort().values
        target_map = AllToOne(self.target)
        trigger = CamouflagedTrigger(self.trigger, self.resizer, self.size, self.eps)
        labels = torch.full((n,), self.target, dtype=torch.int64)
        if self.clean_label:
            others = torch.nonzero(~is_target).flatten()
            donors = others[torch.randint(len(others), (n,), generator=rng)]
            shown = self.trigger(downscale(train.x[donors], self.resizer, self.size), labels)
        else:
            shown = self.trigger(downscale(train.x[idx], self.resizer, self.size), labels)
        x, y = train.x.clone(), train.y.clone()
        x[idx] = camouflage(train.x[idx], shown, self.resizer, self.eps)
        y[idx] = labels
        return Poisoned(ImageSet(x, y, train.classes), idx, trigger, target_map)
