"""Poisoning through the pipeline's downscale (Quiring & Rieck, DLS 2020) against visible BadNets, and its defenses.

A high-resolution training set is made by upscaling a seeded subset of the dataset ``ratio`` times with
bicubic interpolation (rounded to 8-bit levels; stated in the report, since MNIST's originals are 28x28).
The victim pipeline downscales with ``resizer`` back to the original size and trains the model. Runs, all
with the same seed, recipe and poisoned-sample budget:

- ``clean``: no poison;
- ``visible-badnets``: BadNets on the pipeline's output (the trigger is visible in the training data);
- ``camouflage``: the trigger hidden in the downscale of relabelled high-resolution images;
- ``camouflage+median``: the same data, every image selective-median filtered before the downscale;
- ``camouflage+area``: the same data, the pipeline switched to area scaling (robust scaling);
- ``clean-label`` and ``clean-label+median``: target-class images, labels untouched, whose downscale is a
  triggered image of another class.

CA is on the test set through each run's pipeline; ASR(visible) stamps the trigger on the model's input (did
the model learn the backdoor?); ASR(camouflaged) hides it in high-resolution test images that then go through
the run's pipeline (what the attacker can do at test time). The data scanners are scored on the camouflaged
training set as the pipeline delivers it: the camouflage hides the poison from people, not from the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from poisonlab.attacks.badnets import BadNets
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data import DATASETS, load_dataset
from poisonlab.defenses import DATA_SCANNERS, DEFENSES, detection_metrics
from poisonlab.experiment.rundir import finish_run
from poisonlab.metrics import ASR_DEFINITION, accuracy, attack_success_rate
from poisonlab.models import MODELS, build_model
from poisonlab.report.figures import image_grid, save_figure
from poisonlab.scaling.camouflage import CamouflagedTrigger, ScalingCamouflage, downscale
from poisonlab.scaling.craft import psnr
from poisonlab.scaling.defenses import selective_median
from poisonlab.scaling.resize import RESIZERS
from poisonlab.training import Recipe, predict, train
from poisonlab.triggers import parse_trigger


@dataclass(frozen=True)
class CamouflageConfig:
    """The data (subset sizes, upscale ratio), the victim pipeline, the trigger and budget, the recipe."""

    dataset: str = "mnist"
    train_size: int = 10000
    test_size: int = 2000
    ratio: int = 4
    resizer: str = "opencv-linear"
    robust_resizer: str = "opencv-area"
    trigger: str = "patch:size=3"
    target: int = 0
    count: int = 100
    clean_label: bool = True
    scanners: bool = True
    model: str = "small-cnn"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0

    def validate(self) -> None:
        """Fail on an unknown name or a bad value before any image is crafted."""
        DATASETS.get(self.dataset.partition(":")[0])
        MODELS.get(self.model)
        RESIZERS.get(self.resizer)
        RESIZERS.get(self.robust_resizer)
        parse_trigger(self.trigger)
        if self.ratio < 2:
            raise PoisonlabError(f"ratio {self.ratio}: expected an integer upscale factor >= 2")
        for name in ("train_size", "test_size", "count"):
            if getattr(self, name) < 1:
                raise PoisonlabError(f"{name} {getattr(self, name)}: expected at least 1")
        if self.count >= self.train_size:
            raise PoisonlabError(f"count {self.count}: expected fewer poisoned images than train_size "
                                 f"{self.train_size}")
        Recipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)

    def recipe(self) -> Recipe:
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)


def upscale(data: ImageSet, ratio: int) -> ImageSet:
    """``ratio``-times bicubic upscale, rounded to 8-bit levels like a stored image."""
    big = F.interpolate(data.x, scale_factor=ratio, mode="bicubic", align_corners=False).clamp(0, 1)
    return ImageSet(torch.round(big * 255) / 255, data.y, data.classes)


def median_filtered(x: Tensor, resizer: str, size: tuple[int, int]) -> Tensor:
    """Selective median filter (against ``resizer``'s pipeline to ``size``) on every plane; full size kept."""
    op = RESIZERS.get(resizer)
    planes = x.numpy().reshape(-1, *x.shape[-2:]) * 255.0
    out = np.stack([selective_median(p, op, size) for p in planes]) / 255.0
    return torch.from_numpy(out).float().reshape(x.shape)


def run_camouflage(cfg: CamouflageConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Every run of the module docstring; write report.json and camouflage.png to ``out``."""
    cfg.validate()
    t0 = time.perf_counter()
    full_train, full_test = load_dataset(cfg.dataset, cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    low_train = full_train.subset(torch.randperm(len(full_train), generator=g)[: cfg.train_size])
    low_test = full_test.subset(torch.randperm(len(full_test), generator=g)[: cfg.test_size])
    size: tuple[int, int] = tuple(low_train.shape[-2:])  # type: ignore[assignment]
    hr_train, hr_test = upscale(low_train, cfg.ratio), upscale(low_test, cfg.ratio)
    trigger = parse_trigger(cfg.trigger)
    target = torch.full_like(low_test.y, cfg.target)
    hidden = CamouflagedTrigger(trigger, cfg.resizer, size)(hr_test.x, target)

    def pipeline(resizer: str, median: bool) -> Callable[[Tensor], Tensor]:
        if median:
            return lambda x: downscale(median_filtered(x, resizer, size), resizer, size)
        return lambda x: downscale(x, resizer, size)

    def fit(x: Tensor, y: Tensor, what: str) -> torch.nn.Module:
        data = ImageSet(x, y, low_train.classes)
        return train(build_model(cfg.model, data, cfg.seed), data, cfg.recipe(), cfg.seed, progress=progress,
                     description=what)

    def scores(model: torch.nn.Module, test_x: Tensor, camouflaged: Tensor | None) -> dict[str, float]:
        row = {"clean_accuracy": accuracy(predict(model, test_x), low_test.y),
               "asr_visible": attack_success_rate(predict(model, trigger(test_x, target)), target, low_test.y)}
        if camouflaged is not None:
            row["asr_camouflaged"] = attack_success_rate(predict(model, camouflaged), target, low_test.y)
        return row

    runs: dict[str, dict[str, Any]] = {}
    linear = pipeline(cfg.resizer, False)
    low = ImageSet(linear(hr_train.x), hr_train.y, low_train.classes)
    runs["clean"] = scores(fit(low.x, low.y, "clean"), linear(hr_test.x), None)
    visible = BadNets(trigger=trigger, target=cfg.target, count=cfg.count).poison(low, torch.Generator().manual_seed(1))
    runs["visible-badnets"] = {
        **scores(fit(visible.data.x, visible.data.y, "visible-badnets"), linear(hr_test.x), None),
        "psnr_poisoned_vs_clean_db": psnr(visible.data.x[visible.indices].numpy() * 255,
                                          low.x[visible.indices].numpy() * 255)}
    detection: dict[str, Any] = {}
    figure_rows = []
    for clean_label in (False, True) if cfg.clean_label else (False,):
        name = "clean-label" if clean_label else "camouflage"
        poisoned = ScalingCamouflage(cfg.resizer, size, trigger, cfg.target, count=cfg.count,
                                     clean_label=clean_label).poison(hr_train, torch.Generator().manual_seed(1))
        idx = poisoned.indices
        quality = {"psnr_poisoned_vs_original_db": psnr(poisoned.data.x[idx].numpy() * 255,
                                                        hr_train.x[idx].numpy() * 255),
                   "labels_changed": int((poisoned.data.y != hr_train.y).sum())}
        variants = {name: (cfg.resizer, False), f"{name}+median": (cfg.resizer, True)}
        if not clean_label:
            variants[f"{name}+{cfg.robust_resizer}"] = (cfg.robust_resizer, False)
        for label, (resizer, median) in variants.items():
            prep = pipeline(resizer, median)
            seen = prep(poisoned.data.x)
            model = fit(seen, poisoned.data.y, label)
            runs[label] = {**scores(model, prep(hr_test.x), prep(hidden)), **(quality if label == name else {})}
            if cfg.scanners and label == name:
                as_seen = ImageSet(seen, poisoned.data.y, low_train.classes)
                detection[name] = {s: detection_metrics(DEFENSES.get(s)().scan(model, as_seen), idx, len(as_seen))
                                   for s in DATA_SCANNERS}
        show = idx[:6]
        figure_rows += [(f"{name}: original", hr_train.x[show], [low_train.classes[int(c)] for c in hr_train.y[show]]),
                        (f"{name}: poisoned", poisoned.data.x[show],
                         [f"label {low_train.classes[int(c)]}" for c in poisoned.data.y[show]]),
                        (f"{name}: after {cfg.resizer}", linear(poisoned.data.x[show]), ["what the model sees"] * 6)]
    save_figure(image_grid(figure_rows, title=f"scaling camouflage: full-size images look clean, the {cfg.resizer} "
                                              "downscale carries the trigger"), out / "camouflage.png")
    metrics = {"runs": runs, "detection": detection, "train_size": cfg.train_size, "test_size": cfg.test_size,
               "high_resolution": [int(s * cfg.ratio) for s in size], "pipeline_size": list(size),
               "upscaled_note": f"{cfg.dataset} upscaled {cfg.ratio}x bicubic to make the high-resolution set",
               "asr_definition": ASR_DEFINITION}
    return finish_run(out, "scaling-camouflage", cfg, metrics, {"total_seconds": time.perf_counter() - t0},
                      ["camouflage.png"])
