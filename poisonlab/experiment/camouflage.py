"""Poisoning through the pipeline's downscale (Quiring & Rieck, DLS 2020) against visible BadNets, and its defenses.

A high-resolution training set is made by upscaling the victim's (seeded subset of the) dataset ``ratio``
times with bicubic interpolation (rounded to 8-bit levels; stated in the report, since MNIST's originals are
28x28). The victim pipeline's preprocess stage downscales with ``resizer`` back to the original size before
training. Runs, all with the same victim, recipe, seed and poisoned-sample budget:

- ``clean``: no poison;
- ``visible-badnets``: BadNets on the pipeline's output (the trigger is visible in the training data);
- ``camouflage``: the trigger hidden in the downscale of relabelled high-resolution images;
- ``camouflage+median``: the same data, every image selective-median filtered before the downscale;
- ``camouflage+ROBUST``: the same data, the pipeline switched to ``robust_resizer`` (robust scaling);
- ``clean-label`` and ``clean-label+median``: target-class images, labels untouched, whose downscale is a
  triggered image of another class.

CA is on the test set through each run's pipeline; ASR(visible) stamps the trigger on the model's input (did
the model learn the backdoor?); ASR(camouflaged) hides it in high-resolution test images that then go through
the run's pipeline (what the attacker can do at test time). The data scanners are scored on the camouflaged
training set as the pipeline delivers it: the camouflage hides the poison from people, not from the model.
A plain pipeline config runs the same attack too: ``[attack] name = "scaling-camouflage"`` with
``preprocessing = ["opencv-linear:28x28"]`` on high-resolution data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from poisonlab.attacks.badnets import BadNets
from poisonlab.attacks.scaling_camouflage import ScalingCamouflage
from poisonlab.core import AllToOne, ImageSet, PoisonlabError, require, stamped
from poisonlab.defenses.apply import apply_defenses
from poisonlab.experiment.config import helped
from poisonlab.experiment.run import Experiment, Result, Run, register
from poisonlab.experiment.victim import Victim, fit, load_data
from poisonlab.metrics import ASR_DEFINITION, evaluate
from poisonlab.report.figures import image_grid, save_figure
from poisonlab.report.tables import camouflage_tables
from poisonlab.scaling.camouflage import CamouflagedTrigger
from poisonlab.scaling.craft import psnr
from poisonlab.scaling.defenses import median_filtered
from poisonlab.scaling.preprocess import Resize, upscale
from poisonlab.scaling.resize import RESIZERS
from poisonlab.training import Recipe
from poisonlab.triggers import parse_trigger

SCANNERS = ("spectral", "activation-clustering")


@dataclass(frozen=True)
class CamouflageConfig(Victim):
    """The victim (subset sizes, recipe), the upscale ratio, the pipeline's resizers, the trigger and budget."""

    model: str = helped("small-cnn", "architecture: small-cnn or badnets-cnn")
    training: Recipe = helped(Recipe(epochs=3), "every model's recipe: epochs, batch_size, lr, weight_decay")
    train_size: int | None = helped(10000, "seeded training subset that is upscaled")
    test_size: int | None = helped(2000, "seeded test subset that is upscaled")
    ratio: int = helped(4, "upscale factor of the high-resolution set")
    resizer: str = helped("opencv-linear", "the victim pipeline's downscale")
    robust_resizer: str = helped("opencv-area", "the robust-scaling defense's downscale")
    trigger: str = helped("patch:size=3", "trigger spec")
    target: int = helped(0, "target class")
    count: int = helped(100, "poisoned images")
    clean_label: bool = helped(True, "also run the clean-label variant")
    scanners: bool = helped(True, "score the data scanners on the camouflaged data")

    def __post_init__(self) -> None:
        super().__post_init__()
        RESIZERS.get(self.resizer)
        RESIZERS.get(self.robust_resizer)
        parse_trigger(self.trigger)
        require(self.ratio >= 2, "ratio", self.ratio, "an integer upscale factor >= 2")
        require(self.count >= 1, "count", self.count, "at least 1")
        if self.train_size is not None and self.count >= self.train_size:
            raise PoisonlabError(f"count {self.count}: expected fewer poisoned images than train_size "
                                 f"{self.train_size}")


def run_camouflage(cfg: CamouflageConfig, run: Run) -> Result:
    """Every run of the module docstring; camouflage.png shows originals, poison and what the model sees."""
    low_train, low_test = load_data(cfg)
    size: tuple[int, int] = tuple(low_train.shape[-2:])  # type: ignore[assignment]
    hr_train, hr_test = upscale(low_train, cfg.ratio), upscale(low_test, cfg.ratio)
    trigger, to_target = parse_trigger(cfg.trigger), AllToOne(cfg.target)
    target = to_target(low_test.y)
    hidden = ImageSet(CamouflagedTrigger(trigger, cfg.resizer, size)(hr_test.x, target), target, hr_test.classes)

    def pipeline(resizer: str, median: bool) -> Callable[[ImageSet], ImageSet]:
        stage = Resize(resizer, size)
        if median:
            return lambda d: stage(ImageSet(median_filtered(d.x, resizer, size), d.y, d.classes))
        return stage

    def scores(model: nn.Module, prep: Callable[[ImageSet], ImageSet], camouflaged: bool) -> dict[str, float]:
        test = prep(hr_test)
        visible = evaluate(model, test, stamped(test, trigger, to_target))
        row = {"clean_accuracy": visible["clean_accuracy"], "asr_visible": visible["attack_success_rate"]}
        if camouflaged:
            row["asr_camouflaged"] = evaluate(model, test, prep(hidden))["attack_success_rate"]
        return row

    runs: dict[str, dict[str, Any]] = {}
    linear = pipeline(cfg.resizer, False)
    low = linear(hr_train)
    runs["clean"] = scores(fit(cfg, low, "clean", run.progress), linear, False)
    visible = BadNets(trigger=trigger, target=cfg.target, count=cfg.count).poison(low, torch.Generator().manual_seed(1))
    runs["visible-badnets"] = {
        **scores(fit(cfg, visible.data, "visible-badnets", run.progress), linear, False),
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
            seen = prep(poisoned.data)
            model = fit(cfg, seen, label, run.progress)
            runs[label] = {**scores(model, prep, True), **(quality if label == name else {})}
            if cfg.scanners and label == name:
                detection[name] = apply_defenses(SCANNERS, model, seen, idx, None, seed=cfg.seed)
        show = idx[:6]
        figure_rows += [(f"{name}: original", hr_train.x[show], [low_train.classes[int(c)] for c in hr_train.y[show]]),
                        (f"{name}: poisoned", poisoned.data.x[show],
                         [f"label {low_train.classes[int(c)]}" for c in poisoned.data.y[show]]),
                        (f"{name}: after {cfg.resizer}", linear(poisoned.data.subset(show)).x,
                         ["what the model sees"] * 6)]
    save_figure(image_grid(figure_rows, title=f"scaling camouflage: full-size images look clean, the {cfg.resizer} "
                                              "downscale carries the trigger"), run.out / "camouflage.png")
    metrics = {"runs": runs, "detection": detection, "train_size": len(low_train), "test_size": len(low_test),
               "high_resolution": [int(s * cfg.ratio) for s in size], "pipeline_size": list(size),
               "upscaled_note": f"{cfg.dataset} upscaled {cfg.ratio}x bicubic to make the high-resolution set",
               "asr_definition": ASR_DEFINITION}
    return Result(metrics, ["camouflage.png"])


register("scaling-camouflage", "backdoor poison hidden in the pipeline's downscale (Quiring & Rieck 2020)",
         Experiment(CamouflageConfig, run_camouflage, camouflage_tables))
