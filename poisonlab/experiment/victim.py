"""The victim every experiment trains: its data, architecture, recipe and seed, and the one way to fit it.

``Victim`` is the shared part of every config that trains a classifier; ``load_data`` and ``fit`` are
the source and train stages; ``fit_phases`` trains a training-time attack's model through its phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, overload

import torch
from torch import Tensor, nn

from poisonlab.core import ImageSet, LossFn, Phase, PoisonlabError, Samples, check_seed, in_memory, require
from poisonlab.data import DATASETS, holdout_rows, open_dataset, row_files
from poisonlab.experiment.config import check_component, helped
from poisonlab.models import build_model, model_factory
from poisonlab.training import Recipe, train
from poisonlab.training.trainer import cross_entropy, train_phases


@dataclass(frozen=True)
class Victim:
    """What a run trains: a dataset, an architecture, a recipe and a seed."""

    dataset: str = helped("mnist", "dataset spec: mnist, fashion-mnist, digits, folder:PATH, npz:PATH, ...")
    model: str = helped("badnets-cnn", "architecture: badnets-cnn, small-cnn, package.module:factory or a "
                                       "TorchScript file")
    training: Recipe = helped(Recipe(), "the trainer's recipe: epochs, batch_size, lr, weight_decay")
    train_size: int | None = helped(None, "train on a seeded random subset of this many images (default: all)")
    test_size: int | None = helped(None, "evaluate on a seeded random subset of this many test images (default: all)")
    seed: int = helped(0, "seed for subsets, poisoning, initialisation and batching")
    holdout: float | None = helped(None, "hold out this share of the training rows as the test set (for data "
                                         "without a test part)")

    def __post_init__(self) -> None:
        check_component("dataset", self.dataset, DATASETS)
        try:
            model_factory(self.model)
        except PoisonlabError as e:
            raise PoisonlabError(f"model: {e}") from None
        check_seed(self.seed)
        require(self.holdout is None or 0.0 < self.holdout < 1.0, "holdout", self.holdout, "a share in (0, 1)")
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, value, "an integer >= 1, or leave it out for all")


S = TypeVar("S", ImageSet, Samples)


@dataclass(frozen=True)
class Rows(Generic[S]):
    """A victim's data: the training and test sets, the dataset row (and file) of every training sample, and
    ``total``, how many training rows the dataset has (before any holdout or subset)."""

    train: S
    test: S
    rows: Tensor
    files: list[str] | None
    total: int


@overload
def load_rows(victim: Victim, need_test: bool = ..., *, lazy: Literal[False] = ...) -> Rows[ImageSet]: ...


@overload
def load_rows(victim: Victim, need_test: bool = ..., *, lazy: Literal[True]) -> Rows[Samples]: ...


def load_rows(victim: Victim, need_test: bool = True, *, lazy: bool = False) -> Rows[ImageSet] | Rows[Samples]:
    """The victim's data: ``holdout`` carves the test set out of the training rows; subsets are seeded.

    ``need_test`` refuses data without a test part (and no holdout) with a one-line error naming the fix.
    ``lazy`` leaves a folder's images in their files, to be decoded a batch at a time.
    """
    train_set, test = open_dataset(victim.dataset, victim.seed)
    total, files = len(train_set), row_files(train_set)
    rows = torch.arange(total)
    if victim.holdout is not None:
        if len(test):
            raise PoisonlabError(f"holdout: {victim.dataset} has a test part of its own; leave holdout out")
        rows, held = holdout_rows(train_set.y, victim.holdout)
        train_set, test = train_set.subset(rows), train_set.subset(held)
    if need_test and not len(test):
        raise PoisonlabError(f"dataset {victim.dataset}: has no test part (x_test/y_test, or train/ and test/ "
                             "folders); set holdout = 0.2 (--holdout 0.2) to hold out a share of its rows")
    gen = torch.Generator().manual_seed(victim.seed)
    if victim.train_size is not None:
        pick = torch.randperm(len(train_set), generator=gen)[: victim.train_size]
        train_set, rows = train_set.subset(pick), rows[pick]
    if victim.test_size is not None and len(test):
        test = test.subset(torch.randperm(len(test), generator=gen)[: victim.test_size])
    chosen = None if files is None else [files[r] for r in rows.tolist()]
    if lazy:
        return Rows[Samples](train_set, test, rows, chosen, total)
    return Rows[ImageSet](in_memory(train_set), in_memory(test), rows, chosen, total)


def load_data(victim: Victim) -> tuple[ImageSet, ImageSet]:
    """The (train, test) pair of ``load_rows``."""
    data = load_rows(victim)
    return data.train, data.test


def fit(victim: Victim, data: Samples, description: str, progress: bool = False, loss: LossFn | None = None
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
