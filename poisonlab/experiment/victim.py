"""The victim every experiment trains: its data, architecture, recipe and seed, and the one way to fit it.

``Victim`` is the shared part of every config that trains a classifier; ``load_data`` and ``fit`` are
the source and train stages; ``fit_phases`` trains a training-time attack's model through its phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from poisonlab.core import ImageSet, LossFn, Phase, PoisonlabError, require
from poisonlab.data import DATASETS, load_dataset
from poisonlab.experiment.config import check_component, helped
from poisonlab.models import MODELS, build_model
from poisonlab.training import Recipe, train
from poisonlab.training.trainer import cross_entropy, train_phases


@dataclass(frozen=True)
class Victim:
    """What a run trains: a dataset, an architecture, a recipe and a seed."""

    dataset: str = helped("mnist", "dataset spec: mnist, fashion-mnist, digits, folder:PATH, npz:PATH, ...")
    model: str = helped("badnets-cnn", "architecture: badnets-cnn or small-cnn")
    training: Recipe = helped(Recipe(), "the trainer's recipe: epochs, batch_size, lr, weight_decay")
    train_size: int | None = helped(None, "train on a seeded random subset of this many images (default: all)")
    test_size: int | None = helped(None, "evaluate on a seeded random subset of this many test images (default: all)")
    seed: int = helped(0, "seed for subsets, poisoning, initialisation and batching")

    def __post_init__(self) -> None:
        check_component("dataset", self.dataset, DATASETS)
        if self.model not in MODELS:
            raise PoisonlabError(f"model: unknown model {self.model!r}; expected one of: {', '.join(MODELS.names())}")
        require(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, "an integer >= 1, or leave it out for all")


def load_data(victim: Victim) -> tuple[ImageSet, ImageSet]:
    """The (train, test) pair, each a seeded random subset when ``train_size`` / ``test_size`` is set."""
    train_set, test = load_dataset(victim.dataset, victim.seed)
    gen = torch.Generator().manual_seed(victim.seed)
    if victim.train_size is not None:
        train_set = train_set.subset(torch.randperm(len(train_set), generator=gen)[: victim.train_size])
    if victim.test_size is not None:
        test = test.subset(torch.randperm(len(test), generator=gen)[: victim.test_size])
    return train_set, test


def fit(victim: Victim, data: ImageSet, description: str, progress: bool = False, loss: LossFn | None = None
        ) -> nn.Module:
    """A fresh ``victim.model`` trained on ``data`` with the victim's recipe and seed."""
    model = build_model(victim.model, data, victim.seed)
    return train(model, data, victim.training, victim.seed, loss_fn=loss or cross_entropy, progress=progress,
                 description=description)


def fit_phases(victim: Victim, data: ImageSet, phases: Sequence[Phase], clean: nn.Module | None,
               progress: bool = False) -> nn.Module:
    """A training-time attack's model: its phases run by the shared trainer with the victim's recipe and seed."""
    return train_phases(lambda: build_model(victim.model, data, victim.seed), data, phases, clean, victim.training,
                        victim.seed, progress)
