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

import torch

from poisonlab.core import AllToOne, ImageSet, Poisoned, PoisonlabError, Trigger, check_target, poison_count
from poisonlab.registry import ATTACKS
from poisonlab.scaling.camouflage import CamouflagedTrigger, camouflage
from poisonlab.scaling.preprocess import downscale
from poisonlab.scaling.resize import RESIZERS
from poisonlab.triggers import Patch


@ATTACKS.register("scaling-camouflage", "trigger hidden in the downscale (Quiring 2020)")
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
        check_target(self.target, train.num_classes, "scaling-camouflage")
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
