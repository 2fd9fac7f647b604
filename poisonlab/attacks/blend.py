"""Blended injection (Chen, Liu, Li, Lu, Song 2017, arXiv 1712.05526): a BadNets poisoning whose trigger is a
whole-image blend, x' = (1 - alpha) x + alpha p, toward seeded noise or a chosen image.

No pixel is an obvious patch, so patch-shaped assumptions (a corner, a small support) do not hold;
the paper blends with alpha = 0.2 at training time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from poisonlab.attacks.badnets import BadNets
from poisonlab.core import Trigger
from poisonlab.registry import ATTACKS
from poisonlab.triggers import Blend


@ATTACKS.register("blend", "blended-injection backdoor: noise or image blended at alpha (Chen et al. 2017)")
@dataclass(frozen=True)
class BlendedInjection(BadNets):
    """BadNets' relabelling and budget with a blend trigger (default: uniform noise at alpha 0.2).

    Example:
        >>> poisoned = BlendedInjection(target=0, rate=0.05).poison(train, torch.Generator().manual_seed(0))
    """

    trigger: Trigger = field(default_factory=lambda: Blend(alpha=0.2))
