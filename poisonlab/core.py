"""The few types every stage of the pipeline shares (see DESIGN.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class PoisonlabError(ValueError):
    """A user-facing error: one line that names the thing and what was expected."""


@dataclass(frozen=True)
class ImageSet:
    """Images in memory: ``x`` float32 in [0, 1] shaped (N, C, H, W), ``y`` int64 labels, class names."""

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise PoisonlabError(f"images: expected shape (N, C, H, W), got {tuple(self.x.shape)}")
        if self.x.dtype != torch.float32:
            raise PoisonlabError(f"images: expected float32, got {self.x.dtype}")
        if self.y.ndim != 1 or self.y.dtype != torch.int64:
            raise PoisonlabError(f"labels: expected a 1-D int64 tensor, got {self.y.dtype} {tuple(self.y.shape)}")
        if len(self.x) != len(self.y):
            raise PoisonlabError(f"images and labels differ in length: {len(self.x)} vs {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, index: Tensor | slice) -> ImageSet:
        """The images at ``index`` (a long index, a boolean mask or a slice)."""
        return ImageSet(self.x[index], self.y[index], self.classes)


Trigger = Callable[[Tensor, "Tensor | None"], Tensor]
"""(images, attacker's target classes or None) -> stamped copy of the images."""

TargetMap = Callable[[Tensor], Tensor]
"""True labels -> the classes the attacker wants those images read as."""


@dataclass(frozen=True)
class Poisoned:
    """A poisoned training set, the ground-truth indices of the samples an attack touched, and how to trigger it."""

    data: ImageSet
    indices: Tensor
    trigger: Trigger
    target_map: TargetMap

    def triggered(self, test: ImageSet) -> ImageSet:
        """Every test image stamped with the trigger, labelled with the attacker's target.

        Aligned with ``test``: image i is test image i stamped, so ``test.y`` gives the true
        class. Attack success rate counts only images whose true class differs from the target.
        """
        target = self.target_map(test.y)
        return ImageSet(self.trigger(test.x, target), target, test.classes)


class DataAttack(Protocol):
    """Poisons a training set; never trains or writes files."""

    def poison(self, train: ImageSet, rng: torch.Generator) -> Poisoned: ...


class TrainingAttack(Protocol):
    """Adds loss terms during training (compression-artifact backdoors); the trainer owns the loop."""

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor: ...


class Deployment(Protocol):
    """A transformation a model undergoes before use (int8, pruning, fp16)."""

    name: str

    def __call__(self, model: nn.Module) -> nn.Module: ...


@dataclass
class Verdict:
    """What a defense returns: per-sample (data) or per-class (model) scores, a flagged set, a repaired model."""

    scores: Tensor | None = None
    flagged: Tensor | None = None
    model: nn.Module | None = None
    details: dict[str, Any] = field(default_factory=dict)
