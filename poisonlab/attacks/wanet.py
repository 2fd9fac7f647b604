"""WaNet (Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021): BadNets' relabelling
with a fixed smooth warp as the trigger, plus the paper's noise mode.

The warp moves pixels by a fraction of a pixel (``triggers.warp``), so a network could learn "any
warp" instead of this one; the noise mode prevents that: ``cross_ratio`` times as many further
samples are warped with the field plus per-pixel random noise and keep their TRUE labels. The
paper uses k = 4, s = 0.5, grid_rescale = 1, poison rate 0.1 and cross ratio 2 on MNIST and CIFAR-10.

Ground truth: ``indices`` lists only the relabelled, exactly warped samples (the backdoor); the
noise-mode samples are changed but carry no backdoor and are listed in ``noise_indices``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from poisonlab.attacks.badnets import BadNets
from poisonlab.core import ImageSet, Poisoned, PoisonlabError, Trigger
from poisonlab.registry import ATTACKS
from poisonlab.triggers.warp import Warp, sample


@dataclass(frozen=True)
class WarpPoisoned(Poisoned):
    """A WaNet poisoning: ``Poisoned`` plus the rows changed in noise mode (true labels kept, not poison)."""

    noise_indices: Tensor

    @property
    def touched(self) -> Tensor:
        """The backdoor rows and the noise-mode rows, sorted."""
        return torch.cat((self.indices, self.noise_indices)).sort().values


@ATTACKS.register("wanet", "warping-based backdoor with noise mode, all-to-one or all-to-all (Nguyen & Tran 2021)")
@dataclass(frozen=True)
class WaNet(BadNets):
    """Poison ``rate`` of the training set (or ``count`` samples) with a warp; warp ``cross_ratio`` times as many
    other samples with noise, labels kept (0 turns the noise mode off).

    Example:
        >>> poisoned = WaNet(target=0, rate=0.1).poison(train, torch.Generator().manual_seed(0))
        >>> poisoned.indices, poisoned.noise_indices  # the backdoor, the noise-mode samples
    """

    trigger: Trigger = field(default_factory=Warp)
    rate: float = 0.1
    cross_ratio: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.trigger, Warp):
            raise PoisonlabError(f"wanet trigger {self.trigger!r}: expected a warp trigger (warp:k=4,strength=0.5)")
        if not self.cross_ratio >= 0:
            raise PoisonlabError(f"wanet cross_ratio {self.cross_ratio}: expected a number >= 0 (noise-mode samples "
                                 "per poisoned sample)")

    def poison(self, train: ImageSet, rng: torch.Generator) -> WarpPoisoned:
        assert isinstance(self.trigger, Warp)  # __post_init__ refuses any other trigger
        poisoned = super().poison(train, rng)
        n = round(self.cross_ratio * len(poisoned.indices))
        free = torch.ones(len(train), dtype=torch.bool)
        free[poisoned.indices] = False
        pool = torch.nonzero(free).flatten()
        if n > len(pool):
            raise PoisonlabError(f"wanet cross_ratio {self.cross_ratio}: {n} noise-mode samples exceed the "
                                 f"{len(pool)} samples left unpoisoned; lower cross_ratio or the rate")
        noise = pool[torch.randperm(len(pool), generator=rng)[:n]].sort().values
        x = poisoned.data.x  # the copy BadNets made, not the caller's images
        x[noise] = sample(x[noise], self.trigger.noisy_grid(n, x.shape[-2], x.shape[-1], rng))
        return WarpPoisoned(poisoned.data, poisoned.indices, poisoned.trigger, poisoned.target_map, noise)
