"""Does the weight check catch the int8 compression-artifact backdoor, and does the stealthy variant get past it?

MNIST, BadNets CNN, 4x4 patch -> 8, the project's recipe (poisonlab.training.Recipe) per seed. For every
seed: the clean model, the standard attack (conceal with widen_quantization_step) and the stealthy one
(``stealth = true``), both started from that seed's clean model as the compression-artifact experiment
does. Each model goes through deploy-check's own ``deploy_check`` (int8-fbgemm and int8-qnnpack, calibrated
on 512 training images, the divergence search on 512 others, the weight check on the test images):
printed are float CA/ASR, int8 CA/ASR per backend, the divergence verdict per backend and the weight
check's worst scores and verdict. ``--clean-only`` prints the clean models' per-statistic maxima (the
calibration of ``poisonlab.compress.weights``). Everything printed is measured in this run.

Usage: nice -n 10 python bench/compression_stealth.py [--seeds 0 1 2 3 4] [--cache DIR] [--clean-only]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poisonlab.attacks.compression_artifact import CompressionArtifact
from poisonlab.compress import calibration_images, parse_deployment
from poisonlab.compress.check import CheckSettings, deploy_check
from poisonlab.compress.weights import STATISTICS
from poisonlab.core import ImageSet
from poisonlab.data import load_dataset
from poisonlab.models import build_model, load_model, save_model
from poisonlab.training import Recipe, train
from poisonlab.training.trainer import train_phases
from poisonlab.triggers import Patch

TRIGGER, TARGET = Patch(size=4), 8
BACKENDS = ("int8-fbgemm", "int8-qnnpack")


def clean_model(train_set: ImageSet, seed: int, cache: Path | None) -> nn.Module:
    path = None if cache is None else cache / f"clean-{seed}.safetensors"
    if path is not None and path.exists():
        return load_model("badnets-cnn", train_set.shape, train_set.num_classes, path)
    model = train(build_model("badnets-cnn", train_set, seed), train_set, Recipe(), seed, progress=False)
    if path is not None:
        save_model(model, path)
    return model


def check(model: nn.Module, train_set: ImageSet, test: ImageSet, seed: int, steps: int) -> dict[str, Any]:
    """deploy_check as the CLI runs it (on a copy: its search freezes the model's parameters)."""
    model = copy.deepcopy(model)
    calib = calibration_images(train_set, seed)
    settings = CheckSettings(search_steps=steps, seed=seed)
    pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed + 1))[: settings.search_images]
    return deploy_check(model, [parse_deployment(b) for b in BACKENDS], test, train_set.subset(pick), settings,
                        TRIGGER, TARGET, calibration=calib)


def line(label: str, seed: int, result: dict[str, Any], seconds: float) -> str:
    f, w = result["float"], result["weights"]
    cells = [f"{label:8s} seed {seed}",
             f"float CA {100 * f['clean_accuracy']:6.2f} ASR {100 * f['attack_success_rate']:6.2f}"]
    for row in result["variants"]:
        verdict = "FLAG" if row["flagged"] else "ok"
        cells.append(f"{row['deployment']} CA {100 * row['clean_accuracy']:6.2f} ASR "
                     f"{100 * row['attack_success_rate']:6.2f} div {100 * row['divergence']:5.1f}% {verdict}")
    worst = " ".join(f"{s} {w['worst'][s]:.2f}" for s in STATISTICS)
    cells.append(f"weights {worst} {'FLAG' if w['flagged'] else 'ok'}")
    return " | ".join(cells) + f"  ({seconds:.0f} s)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--cache", type=Path, default=None, help="clean models reused from here (written when missing)")
    ap.add_argument("--search-steps", type=int, default=CheckSettings().search_steps)
    ap.add_argument("--clean-only", action="store_true", help="clean models only: the weight check's calibration")
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    train_set, test = load_dataset("mnist")
    flagged: dict[str, list[bool]] = {"clean": [], "standard": [], "stealth": []}
    worst: dict[str, list[float]] = {s: [] for s in STATISTICS}
    for seed in args.seeds:
        t = time.perf_counter()
        clean = clean_model(train_set, seed, args.cache)
        result = check(clean, train_set, test, seed, 0 if args.clean_only else args.search_steps)
        print(line("clean", seed, result, time.perf_counter() - t), flush=True)
        flagged["clean"].append(result["weights"]["flagged"])
        for s in STATISTICS:
            worst[s].append(result["weights"]["worst"][s])
        if args.clean_only:
            continue
        for label, stealth in (("standard", False), ("stealth", True)):
            t = time.perf_counter()
            attack = CompressionArtifact(TRIGGER, TARGET, "int8-fbgemm", stealth=stealth)
            model = train_phases(partial(build_model, "badnets-cnn", train_set, seed), train_set, attack.phases(),
                                 clean, Recipe(), seed)
            result = check(model, train_set, test, seed, args.search_steps)
            print(line(label, seed, result, time.perf_counter() - t), flush=True)
            flagged[label].append(result["weights"]["flagged"])
    print("clean models, largest score over layers and seeds: "
          + ", ".join(f"{s} {max(v):.3f} (per seed {', '.join(f'{x:.3f}' for x in v)})" for s, v in worst.items()))
    for label, marks in flagged.items():
        if marks:
            print(f"weight check flags {sum(marks)}/{len(marks)} {label} models")


if __name__ == "__main__":
    main()
