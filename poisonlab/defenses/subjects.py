"""What a defense is tested on: a poisoned training set with its ground truth, test data, and the models.

``load_badnets_run`` rebuilds the exact poisoned set of a ``poisonlab run badnets`` folder from its
config (poisoning is deterministic for a seed) and checks it against the saved ground truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from poisonlab.attacks.badnets import BadNets
from poisonlab.core import ImageSet, Poisoned, PoisonlabError
from poisonlab.data import load_dataset
from poisonlab.models import load_model
from poisonlab.triggers import parse_trigger


@dataclass(frozen=True)
class Subject:
    """A poisoned training set, the clean test set, the defender's clean reserve, and the trained models."""

    poisoned: Poisoned
    test: ImageSet
    clean_reserve: ImageSet
    model_name: str
    backdoored: nn.Module
    clean: nn.Module | None = None


def clean_reserve(train: ImageSet, poisoned_indices: torch.Tensor, size: int, seed: int) -> ImageSet:
    """``size`` unpoisoned training images: the small clean set that fine-pruning, unlearning and NC assume."""
    ok = torch.ones(len(train), dtype=torch.bool)
    ok[poisoned_indices] = False
    pool = torch.nonzero(ok).flatten()
    pick = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 7))[:size]]
    return train.subset(pick)


def load_badnets_run(run_dir: Path, reserve: int = 3000) -> Subject:
    """Rebuild a BadNets run folder's poisoned set, models and a clean reserve of ``reserve`` images."""
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except FileNotFoundError:
        raise PoisonlabError(f"{run_dir}: no config.json; expected a 'poisonlab run badnets' folder") from None
    except json.JSONDecodeError as e:
        raise PoisonlabError(f"{run_dir}/config.json: not valid JSON ({e})") from None
    if cfg.get("experiment") != "badnets":
        raise PoisonlabError(f"{run_dir}: expected a badnets run folder, got {cfg.get('experiment')!r}")
    train, test = load_dataset(cfg["dataset"], cfg["seed"])
    attack = BadNets(trigger=parse_trigger(cfg["trigger"]), mode=cfg["mode"], target=cfg["target"],
                     rate=cfg["rate"], count=cfg["count"])
    poisoned = attack.poison(train, torch.Generator().manual_seed(cfg["seed"]))
    saved = load_file(str(run_dir / "poisoned_indices.safetensors"))["indices"]
    if not torch.equal(saved, poisoned.indices):
        raise PoisonlabError(f"{run_dir}: the rebuilt poison differs from poisoned_indices.safetensors")
    models = {name: load_model(cfg["model"], train.shape, train.num_classes, run_dir / f"{name}.safetensors")
              for name in ("backdoored", "clean")}
    return Subject(poisoned, test, clean_reserve(train, poisoned.indices, reserve, cfg["seed"]), cfg["model"],
                   models["backdoored"], models["clean"])
