"""The victim every experiment trains: its data, architecture, recipe and seed, and the one way to fit it.

``Victim`` is the shared part of every config that trains a classifier; ``load_data`` and ``fit`` are
the source and train stages; ``save_models`` writes weights with ``models.json``, the architecture spec
that lets ``defend``, ``scan --run`` and ``deploy-check`` rebuild a run's models without guessing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poisonlab.core import ImageSet, LossFn, Phase, PoisonlabError, require
from poisonlab.data import DATASETS, load_dataset
from poisonlab.experiment.config import check_component, helped
from poisonlab.models import MODELS, build_model, load_model, save_model
from poisonlab.report.store import atomic_write_json
from poisonlab.training import Recipe, train
from poisonlab.training.trainer import cross_entropy

MODELS_FILE = "models.json"


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
    """A training-time attack's model: each phase trained by the shared trainer, in order (see ``Phase``)."""
    model: nn.Module | None = None
    for phase in phases:
        if phase.start == "fresh":
            model = build_model(victim.model, data, victim.seed)
        elif phase.start == "clean":
            if clean is None:
                raise PoisonlabError(f"training attack phase {phase.name!r}: starts from the clean model, none given")
            model = copy.deepcopy(clean)
        if model is None:
            raise PoisonlabError(f"training attack phase {phase.name!r}: no model to continue from")
        recipe = dataclasses.replace(victim.training, epochs=phase.epochs or victim.training.epochs,
                                     lr=phase.lr or victim.training.lr)
        if phase.before is not None:
            phase.before(model, data.x)
        train(model, data, recipe, victim.seed + phase.seed_offset, loss_fn=phase.loss or cross_entropy,
              progress=progress, description=phase.name)
        if phase.after is not None:
            phase.after(model)
    if model is None:
        raise PoisonlabError("training attack: declares no phase")
    return model.eval()


def save_models(out: Path, architecture: str, data: ImageSet, models: dict[str, nn.Module]) -> list[str]:
    """Write each model as ``NAME.safetensors`` and ``models.json`` (architecture, input, classes); the file names."""
    files = []
    for name, model in models.items():
        save_model(model, out / f"{name}.safetensors")
        files.append(f"{name}.safetensors")
    atomic_write_json(out / MODELS_FILE, {"architecture": architecture, "input_shape": list(data.shape),
                                          "classes": list(data.classes),
                                          "models": {n: f"{n}.safetensors" for n in models}})
    return [*files, MODELS_FILE]


def read_models(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``models.json``; one line when it has none (the run saved no model)."""
    path = run_dir / MODELS_FILE
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise PoisonlabError(f"{run_dir}: holds no {MODELS_FILE}, so no model to load (this run saved none)") from None
    except (OSError, ValueError) as e:
        raise PoisonlabError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(spec, dict) or not {"architecture", "input_shape", "classes", "models"} <= set(spec):
        raise PoisonlabError(f"{path}: expected architecture, input_shape, classes and models")
    return spec


def load_run_model(run_dir: Path, which: str | None = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """(model, its name, models.json) of a run folder; ``which`` names one (default: the backdoored one)."""
    spec = read_models(run_dir)
    names = list(spec["models"])
    name = which or ("backdoored" if "backdoored" in names else names[-1])
    if name not in spec["models"]:
        raise PoisonlabError(f"{run_dir}: no model {name!r}; it holds {', '.join(names)}")
    shape = tuple(spec["input_shape"])
    model = load_model(spec["architecture"], shape, len(spec["classes"]), run_dir / spec["models"][name])  # type: ignore[arg-type]
    return model, name, spec
