"""Data attacks: each poisons a training set and returns the ground truth of what it touched."""

from __future__ import annotations

from collections.abc import Callable

from poisonlab.attacks.backgradient import BackGradientPoisoning
from poisonlab.attacks.badnets import AllToAll, AllToOne, BadNets
from poisonlab.attacks.universal import MultiTargetBadNets, UniversalBackdoor
from poisonlab.core import DataAttack
from poisonlab.registry import Registry
from poisonlab.scaling.camouflage import ScalingCamouflage

ATTACKS: Registry[Callable[..., DataAttack]] = Registry("attack")
ATTACKS.register("badnets", "patch-trigger backdoor, all-to-one or all-to-all (Gu et al. 2017)")(BadNets)
ATTACKS.register("backgradient", "optimised points via back-gradient (Munoz-Gonzalez 2017)")(BackGradientPoisoning)
ATTACKS.register("universal", "any class a target: LDA class-code triggers (Schneider et al. 2023)")(UniversalBackdoor)
ATTACKS.register("multi-target-badnets", "universal baseline: random class codes, same grid")(MultiTargetBadNets)
ATTACKS.register("scaling-camouflage", "trigger hidden in the downscale (Quiring 2020)")(ScalingCamouflage)

__all__ = ["ATTACKS", "AllToAll", "AllToOne", "BadNets"]
