"""The BadNets experiment: a clean and a backdoored model trained with one recipe and seed, side by side."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from safetensors.torch import save_file
from torch import Tensor

from poisonlab.attacks.badnets import BadNets, Mode
from poisonlab.core import ImageSet, Poisoned
from poisonlab.data import DATASETS, load_dataset
from poisonlab.experiment.rundir import atomic_write_json, report
from poisonlab.metrics import ASR_DEFINITION, evaluate
from poisonlab.models import MODELS, build_model, save_model
from poisonlab.report.figures import image_grid, save_figure
from poisonlab.training import Recipe, predict, train
from poisonlab.triggers import parse_trigger


@dataclass(frozen=True)
class BadnetsConfig:
    """Everything that determines a BadNets run; saved resolved in the run folder."""

    dataset: str = "mnist"
    model: str = "badnets-cnn"
    mode: Mode = "all-to-one"
    target: int = 8
    rate: float = 0.01
    count: int | None = None
    trigger: str = "patch:size=3,position=bottom-right,color=1.0,margin=1"
    epochs: int = 2
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0

    def validate(self) -> None:
        """Fail on a bad name or value before any data is loaded or any model trained."""
        DATASETS.get(self.dataset.partition(":")[0])
        MODELS.get(self.model)
        parse_trigger(self.trigger)
        BadNets(mode=self.mode, target=self.target, rate=self.rate, count=self.count)
        self.recipe()

    def recipe(self) -> Recipe:
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)


def _examples(
    test: ImageSet, triggered: ImageSet, preds: dict[str, tuple[Tensor, Tensor]], cfg: BadnetsConfig
) -> Figure:
    """One test image per non-target class, clean and triggered, captioned with both models' predictions.

    ``preds[model]`` holds that model's predictions on (test, triggered).
    """
    eligible = triggered.y != test.y
    picks = [
        int(torch.nonzero((test.y == k) & eligible)[0])
        for k in range(test.num_classes)
        if ((test.y == k) & eligible).any()
    ][:10]
    names = test.classes

    def captions(row: int) -> list[str]:
        return [f"clean:{names[preds['clean'][row][i]]} bd:{names[preds['backdoored'][row][i]]}" for i in picks]

    target = "next class" if cfg.mode == "all-to-all" else names[cfg.target]
    return image_grid(
        [("clean", test.x[picks], captions(0)), ("triggered", triggered.x[picks], captions(1))],
        title=f"BadNets {cfg.mode} (target {target}): predictions of the clean and the backdoored model",
    )


def run_badnets(cfg: BadnetsConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Train clean and backdoored models, evaluate both, write the run folder ``out``; return the report."""
    cfg.validate()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train_set, test = load_dataset(cfg.dataset, cfg.seed)
    attack = BadNets(
        trigger=parse_trigger(cfg.trigger), mode=cfg.mode, target=cfg.target, rate=cfg.rate, count=cfg.count
    )
    poisoned: Poisoned = attack.poison(train_set, torch.Generator().manual_seed(cfg.seed))
    timings["data_seconds"] = time.perf_counter() - t0

    models = {}
    for name, data in (("clean", train_set), ("backdoored", poisoned.data)):
        t = time.perf_counter()
        model = build_model(cfg.model, data, cfg.seed)
        models[name] = train(model, data, cfg.recipe(), cfg.seed, progress=progress, description=f"{name} model")
        timings[f"train_{name}_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    metrics: dict[str, Any] = {name: evaluate(m, test, poisoned) for name, m in models.items()}
    triggered = poisoned.triggered(test)
    preds = {name: (predict(m, test.x), predict(m, triggered.x)) for name, m in models.items()}
    timings["evaluate_seconds"] = time.perf_counter() - t
    metrics.update(
        poisoned_samples=len(poisoned.indices),
        poisoned_fraction=len(poisoned.indices) / len(train_set),
        train_size=len(train_set),
        test_size=len(test),
        asr_definition=ASR_DEFINITION,
    )

    for name, m in models.items():
        save_model(m, out / f"{name}.safetensors")
    save_file({"indices": poisoned.indices}, str(out / "poisoned_indices.safetensors"))
    save_figure(_examples(test, triggered, preds, cfg), out / "examples.png")
    atomic_write_json(out / "config.json", {"experiment": "badnets", **dataclasses.asdict(cfg)})
    timings["total_seconds"] = time.perf_counter() - t0
    body = report(
        "badnets",
        dataclasses.asdict(cfg),
        metrics,
        timings=timings,
        files=[
            "clean.safetensors",
            "backdoored.safetensors",
            "poisoned_indices.safetensors",
            "examples.png",
            "config.json",
        ],
    )
    atomic_write_json(out / "report.json", body)
    return body
