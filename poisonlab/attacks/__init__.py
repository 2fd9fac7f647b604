"""Data attacks: each poisons a training set and returns the ground truth of what it touched."""

from __future__ import annotations

from collections.abc import Callable

from poisonlab.attacks.badnets import AllToAll, AllToOne, BadNets
from poisonlab.core import DataAttack
from poisonlab.registry import Registry

ATTACKS: Registry[Callable[..., DataAttack]] = Registry("attack")
ATTACKS.register("badnets", "patch-trigger backdoor, all-to-one or all-to-all (Gu et al. 2017)")(BadNets)

__all__ = ["ATTACKS", "AllToAll", "AllToOne", "BadNets"]
