"""Adaptive-Blend and Adaptive-Patch (Qi, Xie, Li, Mahloujifar, Mittal, "Revisiting the Assumption of Latent
Separability for Backdoor Defenses", ICLR 2023): backdoors built to defeat defenses that separate poison from clean
samples in a model's latent space (spectral signatures, activation clustering, SCAn, SPECTRE).

Two ingredients. Conservatism: besides the poison rows (relabelled), as many *cover* rows carry the trigger but keep
their true labels, so the model must not answer "target" to every trace of the trigger and the poison's latent
representations stay near their own class. Asymmetry: every training row carries only part of the trigger, weakly
(a random half of a blend pattern's 4 x 4 pieces at opacity 0.15; one of four patches at opacity 0.2 to 0.5), while
the test-time trigger is the whole of it, stronger (the full blend at 0.2; every patch at opacity 1).

Defaults are the authors' CIFAR-10 settings (their backdoor-toolbox README and config.py): adaptive-blend poison
rate 0.003, cover rate 0.003, 16 pieces with half masked, opacity 0.15 for training and 0.2 at test time;
adaptive-patch poison rate 0.003, cover rate 0.006, four patch triggers at training opacities 0.5, 0.2, 0.5, 0.3
and opacity 1 at test time, one patch per row. Their target class is 0. Their blend pattern is an image (a
Hello Kitty picture) and their patches are logo images; here the blend pattern is seeded noise or an image file and
the patches are seeded random squares of 0/1 pixels in the corners. Their adaptive-patch test trigger is two of
the patches; here it is all of them.

Ground truth: ``indices`` lists the relabelled poison rows (the backdoor); the cover rows are changed but keep
their labels and are listed in ``cover_indices``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from poisonlab.attacks.badnets import Mode, TargetModes
from poisonlab.core import (
    ImageSet,
    Poisoned,
    PoisonlabError,
    Trigger,
    check_budget,
    check_seed,
    poison_count,
)
from poisonlab.registry import ATTACKS
from poisonlab.triggers import POSITIONS, Blend
from poisonlab.triggers.patch import corner


@dataclass(frozen=True)
class CoverPoisoned(Poisoned):
    """An adaptive poisoning: ``Poisoned`` plus the cover rows (partial trigger, true label kept, not poison)."""

    cover_indices: Tensor

    @property
    def touched(self) -> Tensor:
        """The poison rows and the cover rows, sorted."""
        return torch.cat((self.indices, self.cover_indices)).sort().values


def _check_opacity(value: float, name: str) -> None:
    if not 0.0 < value <= 1.0:
        raise PoisonlabError(f"{name} {value}: expected an opacity in (0, 1]")


def keep_pieces(rows: int, pieces: int, kept: int, rng: torch.Generator) -> Tensor:
    """A (rows, pieces) boolean mask with ``kept`` pieces chosen uniformly at random in every row."""
    order = torch.rand(rows, pieces, generator=rng).argsort(1)[:, :kept]
    return torch.zeros(rows, pieces, dtype=torch.bool).scatter_(1, order, True)


def blend_pieces(x: Tensor, pattern: Tensor, keep: Tensor, opacity: float) -> Tensor:
    """``x`` blended toward ``pattern`` at ``opacity`` on the kept pieces of a g x g grid only.

    ``keep`` is (N, g * g), row-major over the grid; rows and columns are split as evenly as the image allows.
    """
    height, width = x.shape[-2:]
    grid = math.isqrt(keep.shape[1])
    rows = torch.arange(height) * grid // height
    cols = torch.arange(width) * grid // width
    mask = keep[:, rows[:, None] * grid + cols[None, :]][:, None].to(x)  # (N, 1, H, W)
    return (x + opacity * mask * (pattern.to(x) - x)).clamp(0, 1)


@dataclass(frozen=True)
class PatchSet:
    """Seeded random ``size`` x ``size`` squares of 0/1 pixels at ``positions``, each blended at its own opacity.

    Called as a trigger, it stamps every patch; ``stamp`` stamps only the patches a row keeps.
    """

    positions: tuple[str, ...]
    size: int
    opacity: tuple[float, ...]
    seed: int = 0
    margin: int = 1

    def patterns(self, channels: int) -> Tensor:
        """The (k, C, size, size) patches, 0 or 1 per pixel and channel."""
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, 2, (len(self.positions), channels, self.size, self.size), generator=gen).float()

    def stamp(self, x: Tensor, keep: Tensor) -> Tensor:
        """``x`` with patch j blended in on the rows where ``keep[:, j]`` (N, k) holds."""
        out = x.clone()
        patterns = self.patterns(x.shape[-3]).to(x)
        for j, (position, alpha) in enumerate(zip(self.positions, self.opacity, strict=True)):
            r, c = corner(x.shape[-2], x.shape[-1], self.size, position, self.margin)
            rows = torch.nonzero(keep[:, j]).flatten()
            region = out[rows, :, r : r + self.size, c : c + self.size]
            out[rows, :, r : r + self.size, c : c + self.size] = region + alpha * (patterns[j] - region)
        return out.clamp(0, 1)

    def __call__(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        return self.stamp(x, torch.ones(len(x), len(self.positions), dtype=torch.bool))


@dataclass(frozen=True)
class AdaptiveAttack(TargetModes, ABC):
    """The shared half: budget, target map, poison and cover rows; a subclass says how a row gets part of the trigger.

    ``rate`` (or ``count``) rows whose label differs from their attack label are relabelled; ``cover_rate`` (or
    ``cover_count``) further such rows carry part of the trigger with their true labels (0 turns conservatism off).
    """

    name: ClassVar[str]
    mode: Mode = "all-to-one"
    target: int = 0
    rate: float = 0.003
    count: int | None = None
    cover_rate: float = 0.003
    cover_count: int | None = None
    kept: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        self.check_mode()
        check_budget(self.rate, self.count)
        if self.cover_count is not None and self.cover_count < 0:
            raise PoisonlabError(f"{self.name} cover_count {self.cover_count}: expected a number of rows >= 0")
        if self.cover_count is None and not 0.0 <= self.cover_rate < 1.0:
            raise PoisonlabError(f"{self.name} cover_rate {self.cover_rate}: expected a fraction in [0, 1)")
        if not 0.0 < self.kept <= 1.0:
            raise PoisonlabError(f"{self.name} kept {self.kept}: expected a share of the trigger's pieces in (0, 1]")
        check_seed(self.seed, f"{self.name} seed")

    def kept_pieces(self, pieces: int) -> int:
        """How many of ``pieces`` each training row carries: ``kept`` of them, at least one."""
        return max(1, round(self.kept * pieces))

    @abstractmethod
    def partial(self, x: Tensor, rng: torch.Generator) -> Tensor:
        """``x`` with a random part of the trigger each, at training strength."""

    @abstractmethod
    def test_trigger(self) -> Trigger:
        """The test-time trigger: all of it, at test strength."""

    def poison(self, train: ImageSet, rng: torch.Generator) -> CoverPoisoned:
        target_map = self.target_map(train.num_classes)
        n = poison_count(len(train), self.rate, self.count)
        covers = self.cover_count if self.cover_count is not None else round(self.cover_rate * len(train))
        pool = torch.nonzero(target_map(train.y) != train.y).flatten()
        if n + covers > len(pool):
            raise PoisonlabError(f"{self.name}: {n} poison and {covers} cover rows exceed the {len(pool)} samples "
                                 "that can be relabelled; lower the rate or cover_rate")
        chosen = pool[torch.randperm(len(pool), generator=rng)[: n + covers]]
        idx, cover = chosen[:n].sort().values, chosen[n:].sort().values
        x, y = train.x.clone(), train.y.clone()
        y[idx] = target_map(y[idx])
        both = torch.cat((idx, cover))
        x[both] = self.partial(x[both], rng)
        return CoverPoisoned(ImageSet(x, y, train.classes), idx, self.test_trigger(), target_map, cover)


@ATTACKS.register("adaptive-blend", "blend split into pieces, partial on poison and true-label cover rows, "
                  "full at test (Qi et al. 2023)")
@dataclass(frozen=True)
class AdaptiveBlend(AdaptiveAttack):
    """Blend a random ``kept`` share of the pattern's ``pieces`` (a square number: grid x grid) into every poison
    and cover row at ``train_opacity``; the test trigger is the whole pattern at ``test_opacity``.

    ``pattern`` is ``noise`` (seeded by ``seed``) or an image file, as for the blend trigger.

    Example:
        >>> poisoned = AdaptiveBlend(target=0, rate=0.05, cover_rate=0.05).poison(train, torch.Generator())
        >>> poisoned.indices, poisoned.cover_indices  # relabelled rows, true-label cover rows
    """

    name: ClassVar[str] = "adaptive-blend"
    pieces: int = 16
    train_opacity: float = 0.15
    test_opacity: float = 0.2
    pattern: str = "noise"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pieces < 1 or math.isqrt(self.pieces) ** 2 != self.pieces:
            raise PoisonlabError(f"adaptive-blend pieces {self.pieces}: expected a square number >= 1 "
                                 "(a grid x grid split of the pattern, e.g. 16)")
        _check_opacity(self.train_opacity, "adaptive-blend train_opacity")
        _check_opacity(self.test_opacity, "adaptive-blend test_opacity")
        self.test_trigger()  # the blend trigger checks the pattern and the seed

    def test_trigger(self) -> Blend:
        return Blend(pattern=self.pattern, alpha=self.test_opacity, seed=self.seed)

    def partial(self, x: Tensor, rng: torch.Generator) -> Tensor:
        grid = math.isqrt(self.pieces)
        if grid > min(x.shape[-2:]):
            raise PoisonlabError(f"adaptive-blend pieces {self.pieces}: a {grid} x {grid} grid does not fit "
                                 f"{x.shape[-2]}x{x.shape[-1]} images; use fewer pieces")
        keep = keep_pieces(len(x), self.pieces, self.kept_pieces(self.pieces), rng)
        return blend_pieces(x, self.test_trigger().image(*x.shape[-3:]), keep, self.train_opacity)


@ATTACKS.register("adaptive-patch", "several patches, a random few on poison and true-label cover rows, all "
                  "at test (Qi et al. 2023)")
@dataclass(frozen=True)
class AdaptivePatch(AdaptiveAttack):
    """Stamp a random ``kept`` share of the patches (one square per entry of ``positions``, ``size`` pixels, at
    ``train_opacity``: one value or one per patch) on every poison and cover row; the test trigger is every patch at
    ``test_opacity``.

    Example:
        >>> poisoned = AdaptivePatch(target=0, rate=0.05, cover_rate=0.1).poison(train, torch.Generator())
        >>> poisoned.indices, poisoned.cover_indices  # relabelled rows, true-label cover rows
    """

    name: ClassVar[str] = "adaptive-patch"
    cover_rate: float = 0.006
    kept: float = 0.25
    positions: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
    size: int = 4
    train_opacity: float | tuple[float, ...] = (0.5, 0.2, 0.5, 0.3)
    test_opacity: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.positions or any(p not in POSITIONS for p in self.positions):
            raise PoisonlabError(f"adaptive-patch positions {list(self.positions)}: expected one or more of "
                                 f"{', '.join(POSITIONS)}")
        if len(set(self.positions)) != len(self.positions):
            raise PoisonlabError(f"adaptive-patch positions {list(self.positions)}: expected each place once")
        if self.size < 1:
            raise PoisonlabError(f"adaptive-patch size {self.size}: expected a patch side of at least 1 pixel")
        opacities = self.opacities()
        if len(opacities) != len(self.positions):
            raise PoisonlabError(f"adaptive-patch train_opacity {list(opacities)}: expected one value, or one per "
                                 f"position ({len(self.positions)})")
        for value in opacities:
            _check_opacity(value, "adaptive-patch train_opacity")
        _check_opacity(self.test_opacity, "adaptive-patch test_opacity")

    def opacities(self) -> tuple[float, ...]:
        """The training opacity of each patch (one value serves them all)."""
        values = (float(self.train_opacity),) if isinstance(self.train_opacity, int | float) else self.train_opacity
        return tuple(values) * len(self.positions) if len(values) == 1 else tuple(values)

    def patches(self, opacity: tuple[float, ...]) -> PatchSet:
        return PatchSet(self.positions, self.size, opacity, self.seed)

    def test_trigger(self) -> PatchSet:
        return self.patches((self.test_opacity,) * len(self.positions))

    def partial(self, x: Tensor, rng: torch.Generator) -> Tensor:
        k = len(self.positions)
        return self.patches(self.opacities()).stamp(x, keep_pieces(len(x), k, self.kept_pieces(k), rng))
