"""BadNets (Gu, Dolan-Gavitt, Garg 2017, arXiv 1708.06733): stamp a trigger on a few training images and relabel them.

All-to-one sends every triggered input to one target class; all-to-all sends class i to i + 1 mod C.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from poisonlab.core import (
    AllToAll,
    AllToOne,
    ImageSet,
    Poisoned,
    PoisonlabError,
    Trigger,
    check_budget,
    check_target,
    poison_count,
)
from poisonlab.registry import ATTACKS
from poisonlab.triggers import Patch

Mode = Literal["all-to-one", "all-to-all"]


class TargetModes:
    """The all-to-one / all-to-all rules of an attack with ``mode`` and ``target`` fields, named ``name`` in errors."""

    name: ClassVar[str]
    mode: Mode
    target: int

    def check_mode(self) -> None:
        if self.mode not in ("all-to-one", "all-to-all"):
            raise PoisonlabError(f"{self.name} mode {self.mode!r}: expected all-to-one or all-to-all")

    @classmethod
    def check_given(cls, given: Mapping[str, Any]) -> None:
        """Refuse a ``target`` set beside ``mode = "all-to-all"``, where class i always goes to i + 1."""
        if given.get("mode") == "all-to-all" and "target" in given:
            raise PoisonlabError(f"{cls.name} target {given['target']}: all-to-all sends class i to i + 1 and has no "
                                 "target; leave target out or use mode all-to-one")

    @staticmethod
    def unused(params: Mapping[str, Any]) -> set[str]:
        """Parameters ``params`` make meaningless, left out of a saved config: all-to-all has no target."""
        return {"target"} if params.get("mode") == "all-to-all" else set()

    def target_map(self, num_classes: int) -> AllToOne | AllToAll:
        if self.mode == "all-to-all":
            return AllToAll(num_classes)
        check_target(self.target, num_classes, self.name)
        return AllToOne(self.target)


@ATTACKS.register("badnets", "patch-trigger backdoor, all-to-one or all-to-all (Gu et al. 2017)")
@dataclass(frozen=True)
class BadNets(TargetModes):
    """Poison ``rate`` of the training set (or exactly ``count`` samples, when given) with ``trigger``.

    Only samples whose label differs from their attack label are candidates: relabelling an 8 as 8
    would spend budget on nothing.

    Example:
        >>> poisoned = BadNets(target=8, rate=0.01).poison(train, torch.Generator().manual_seed(0))
        >>> poisoned.indices  # which training samples carry the trigger
    """

    name: ClassVar[str] = "badnets"
    trigger: Trigger = field(default_factory=Patch)
    mode: Mode = "all-to-one"
    target: int = 8
    rate: float = 0.01
    count: int | None = None

    def __post_init__(self) -> None:
        self.check_mode()
        check_budget(self.rate, self.count)

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
