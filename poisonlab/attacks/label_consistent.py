"""Label-consistent backdoor (Turner, Tsipras, Madry, "Label-Consistent Backdoor Attacks", 2019, arXiv 1912.02771).

A clean-label backdoor: the attacker poisons only images of the TARGET class and keeps their labels,
so every poisoned sample looks correctly labelled. A trigger stamped on such images teaches little,
because the network classifies them from their natural features anyway. The attack first makes them
hard to classify: a projected-gradient (PGD) L-inf perturbation of size ``eps`` that raises the loss
of a surrogate the attacker trains on the true label. The network then leans on the trigger to get
these images right, and at test time the trigger sends any image to the target. The paper uses eps
8/255 and 16/255 on CIFAR-10 (MNIST digits need more: tests/test_attacks_label_consistent.py uses
0.2), a 3 x 3 checkerboard in a corner, and a reduced-amplitude stamp (``amplitude``, e.g. 32/255)
that is hard to see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poisonlab.attacks.surrogate import sample_per_class, train_surrogate
from poisonlab.core import (
    AllToOne,
    ImageSet,
    Poisoned,
    PoisonlabError,
    Trigger,
    check_budget,
    target_class_rows,
)
from poisonlab.registry import ATTACKS
from poisonlab.training import Recipe
from poisonlab.triggers import Checkerboard


@dataclass(frozen=True)
class Faded:
    """``trigger`` at ``amplitude``: the change it makes to an image, scaled by ``amplitude`` in (0, 1]."""

    trigger: Trigger
    amplitude: float

    def __call__(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        return (x + self.amplitude * (self.trigger(x, target) - x)).clamp(0, 1)


@ATTACKS.register("label-consistent", "clean-label patch backdoor on adversarially perturbed target-class images "
                  "(Turner et al. 2019)")
@dataclass(frozen=True)
class LabelConsistent:
    """Perturb and stamp ``rate`` of the training set (or ``count`` samples), all drawn from class ``target``.

    The surrogate (``surrogate`` model, ``surrogate_epochs`` epochs) is trained on up to
    ``samples_per_class`` images of every class of the set being poisoned, seeded from the attack's
    generator. PGD takes ``steps`` signed-gradient steps of ``step_size`` (default 2.5 * eps / steps)
    from the clean image, each projected back into the ``eps`` L-inf ball and [0, 1]. The trigger is
    stamped at ``amplitude`` on the poison and at ``test_amplitude`` on test images.

    Example:
        >>> poisoned = LabelConsistent(target=0, rate=0.05).poison(train, torch.Generator().manual_seed(0))
        >>> poisoned.indices  # target-class images, perturbed then stamped, labels unchanged
    """

    trigger: Trigger = field(default_factory=lambda: Checkerboard(size=3, margin=0))
    target: int = 0
    rate: float = 0.05
    count: int | None = None
    eps: float = 16 / 255
    steps: int = 10
    step_size: float | None = None
    amplitude: float = 1.0
    test_amplitude: float = 1.0
    surrogate: str = "small-cnn"
    samples_per_class: int = 500
    surrogate_epochs: int = 2
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_budget(self.rate, self.count)
        for name in ("eps", "amplitude", "test_amplitude"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise PoisonlabError(f"label-consistent {name} {getattr(self, name)}: expected a value in (0, 1]")
        if self.step_size is not None and not self.step_size > 0:
            raise PoisonlabError(f"label-consistent step_size {self.step_size}: expected a number > 0")
        for name in ("steps", "samples_per_class", "surrogate_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise PoisonlabError(f"label-consistent {name} {getattr(self, name)}: expected an integer >= 1")

    def stamp(self, amplitude: float) -> Trigger:
        """The trigger at ``amplitude`` (``amplitude`` or ``test_amplitude``); itself at full amplitude."""
        return self.trigger if amplitude == 1.0 else Faded(self.trigger, amplitude)

    def train_surrogate(self, train: ImageSet, rng: torch.Generator) -> nn.Module:
        """The attacker's own classifier, trained on a per-class sample of ``train``."""
        sample = train.subset(sample_per_class(train.y, self.samples_per_class, rng))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng))
        return train_surrogate(sample, self.surrogate, Recipe(epochs=self.surrogate_epochs), seed)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``x`` moved within ``eps`` (L-inf) to raise ``model``'s cross-entropy on labels ``y`` (PGD)."""
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        model.eval()
        out = torch.empty_like(x)
        with torch.enable_grad():
            for start in range(0, len(x), self.batch_size):
                clean, labels = x[start : start + self.batch_size], y[start : start + self.batch_size]
                adv = clean.clone()
                for _ in range(self.steps):
                    adv.requires_grad_(True)
                    (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), labels), adv)
                    adv = torch.min(torch.max(adv.detach() + step * grad.sign(), clean - self.eps), clean + self.eps)
                    adv = adv.clamp(0, 1)
                out[start : start + len(clean)] = adv
        return out

    def poison(self, train: ImageSet, rng: torch.Generator) -> Poisoned:
        """Draws target-class rows, then trains the surrogate, from ``rng``; perturbs the rows against it and stamps."""
        idx = target_class_rows(train, self.target, self.rate, self.count, rng, "label-consistent")
        hard = self.perturb(self.train_surrogate(train, rng), train.x[idx], train.y[idx])
        x = train.x.clone()
        x[idx] = self.stamp(self.amplitude)(hard, train.y[idx])
        return Poisoned(ImageSet(x, train.y.clone(), train.classes), idx, self.stamp(self.test_amplitude),
                        AllToOne(self.target))
