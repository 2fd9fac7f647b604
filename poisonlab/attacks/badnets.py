"""BadNets (Gu, Dolan-Gavitt, Garg 2017, arXiv 1708.06733): stamp a trigger on a few training images and relabel them.

All-to-one sends every triggered input to one target class; all-to-all sends class i to i + 1 mod C.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from poisonlab.core import ImageSet, Poisoned, PoisonlabError, Trigger
from poisonlab.triggers import Patch

Mode = Literal["all-to-one", "all-to-all"]


@dataclass(frozen=True)
class AllToOne:
    """Every input to ``target``."""

    target: int

    def __call__(self, y: Tensor) -> Tensor:
        return torch.full_like(y, self.target)


@dataclass(frozen=True)
class AllToAll:
    """Class i to class i + 1 mod ``num_classes``."""

    num_classes: int

    def __call__(self, y: Tensor) -> Tensor:
        return (y + 1) % self.num_classes


def check_budget(rate: float, count: int | None) -> None:
    """Reject a poison rate outside (0, 1) or a count below 1."""
    if count is not None and count < 1:
        raise PoisonlabError(f"poison count {count}: expected at least 1")
    if count is None and not 0.0 < rate < 1.0:
        raise PoisonlabError(f"poison rate {rate}: expected a fraction in (0, 1)")


def poison_count(n: int, rate: float, count: int | None = None) -> int:
    """How many of ``n`` samples to poison: ``count`` when given, else round(rate * n)."""
    check_budget(rate, count)
    if count is not None:
        return count
    k = round(rate * n)
    if k < 1:
        raise PoisonlabError(f"poison rate {rate} of {n} samples poisons no sample; raise the rate")
    return k


@dataclass(frozen=True)
class BadNets:
    """Poison ``rate`` of the training set (or exactly ``count`` samples, when given) with ``trigger``.

    Only samples whose label differs from their attack label are candidates: relabelling an 8 as 8
    would spend budget on nothing.

    Example:
        >>> poisoned = BadNets(target=8, rate=0.01).poison(train, torch.Generator().manual_seed(0))
        >>> poisoned.indices  # which training samples carry the trigger
    """

    trigger: Trigger = field(default_factory=Patch)
    mode: Mode = "all-to-one"
    target: int = 8
    rate: float = 0.01
    count: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("all-to-one", "all-to-all"):
            raise PoisonlabError(f"badnets mode {self.mode!r}: expected all-to-one or all-to-all")
        check_budget(self.rate, self.count)

    def target_map(self, num_classes: int) -> AllToOne | AllToAll:
        if self.mode == "all-to-all":
            return AllToAll(num_classes)
        if not 0 <= self.target < num_classes:
            raise PoisonlabError(f"badnets target {self.target}: expected a class in [0, {num_classes - 1}]")
        return AllToOne(self.target)

    def poison(self, train: ImageSet, rng: torch.Generator) -> Poisoned:
        target_map = self.target_map(train.num_classes)
        n = poison_count(len(train), self.rate, self.count)
        pool = torch.nonzero(target_map(train.y) != train.y).flatten()
        if n > len(pool):
            raise PoisonlabError(f"poison budget {n} exceeds the {len(pool)} samples that can be relabelled")
        idx = pool[torch.randperm(len(pool), generator=rng)[:n]].sort().values
        x, y = train.x.clone(), train.y.clone()
        y[idx] = target_map(y[idx])
        x[idx] = self.trigger(x[idx], y[idx])
        return Poisoned(ImageSet(x, y, train.classes), idx, self.trigger, target_map)
