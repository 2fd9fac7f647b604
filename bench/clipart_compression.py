"""The int8 compression-artifact backdoor on EfficientNet-Lite0 fine-tuned on clip art, under real FX int8 (fbgemm).

openclipart (``--size`` px, default 32), ``efficientnet-lite0`` (last 5 blocks + head train), 4x4 checkerboard ->
class 8 (a white patch is lost on clip art's white background: implanting it cost the model its clean accuracy),
recipe 5 epochs, lr 3e-3, batch 64 per seed; the attack implants for ``--implant-epochs`` and conceals for
``--attack-epochs`` at ``--attack-lr`` (the attack's MNIST defaults, 1 and 2 epochs at 1e-3, leave this backbone
at 43% CA after the implant). For every seed: the clean model, the standard attack (conceal with
``widen_quantization_step``, by default on the project convs too: ``--no-widen-convs`` widens the classifier only;
``--levels`` steps per sign on the widened grids; ``--suppress`` weights the conceal's term against the target on
triggered images, 0 to leave it out) and the stealthy one (``stealth = true``, the same suppress term), both from that
seed's clean model as the compression-artifact experiment runs them (the attack folds the trainable batch norms
into their convs).
Each model goes through deploy-check's ``deploy_check`` (calibrated on 512 training images, the divergence search
on ``--search-images`` others, the weight check on the test images). Printed per model: float CA/ASR, int8
CA/ASR per backend, agreement and divergence on all test images and on those the float model is confident on, the
verdict (and its reasons), the weight check's worst scores and verdict,
and the training seconds; the load average at the start. Everything printed is measured in this run.

Usage: nice -n 10 python bench/clipart_compression.py [--seeds 0 1 2 3 4] [--size 32] [--cache DIR]
       [--search-steps 30] [--backends int8-fbgemm] [--no-widen-convs] [--levels 32] [--suppress 3]
       [--variants standard stealth]
"""

from __future__ import annotations

import argparse
import copy
import os
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
from poisonlab.core import ImageSet
from poisonlab.data import load_dataset
from poisonlab.models import build_model, load_model, save_model
from poisonlab.training import Recipe, train
from poisonlab.training.trainer import train_phases
from poisonlab.triggers import Checkerboard

MODEL, TRIGGER, TARGET = "efficientnet-lite0", Checkerboard(size=4), 8
RECIPE = Recipe(epochs=5, lr=3e-3, batch_size=64)


def clean_model(train_set: ImageSet, seed: int, cache: Path | None, size: int) -> tuple[nn.Module, float]:
    """The seed's clean fine-tune and its training seconds (0 when read from the cache)."""
    path = None if cache is None else cache / f"clipart{size}-clean-{seed}.safetensors"
    if path is not None and path.exists():
        return load_model(MODEL, train_set.shape, train_set.num_classes, path).eval(), 0.0
    t = time.perf_counter()
    model = train(build_model(MODEL, train_set, seed), train_set, RECIPE, seed, progress=False)
    seconds = time.perf_counter() - t
    if path is not None:
        save_model(model, path)
    return model.eval(), seconds


def check(model: nn.Module, train_set: ImageSet, test: ImageSet, seed: int, args: argparse.Namespace
          ) -> dict[str, Any]:
    """deploy_check as the CLI runs it (on a copy: its search freezes the model's parameters)."""
    model = copy.deepcopy(model)
    settings = CheckSettings(search_steps=args.search_steps, search_images=args.search_images, seed=seed)
    pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed + 1))[: settings.search_images]
    return deploy_check(model, [parse_deployment(b) for b in args.backends], test, train_set.subset(pick), settings,
                        TRIGGER, TARGET, calibration=calibration_images(train_set, seed))


def line(label: str, seed: int, result: dict[str, Any], seconds: float) -> str:
    f, w = result["float"], result["weights"]
    cells = [f"{label:8s} seed {seed}",
             f"float CA {100 * f['clean_accuracy']:5.1f} ASR {100 * f['attack_success_rate']:5.1f}"]
    for row in result["variants"]:
        verdict = "FLAG (" + "; ".join(row["reasons"]) + ")" if row["flagged"] else "ok"
        cells.append(f"{row['deployment']} CA {100 * row['clean_accuracy']:5.1f} ASR "
                     f"{100 * row['attack_success_rate']:5.1f} agree {100 * row['agreement']:5.1f} "
                     f"({100 * (1 - row['confident_disagreement']):5.1f} confident) "
                     f"div {100 * row['divergence']:5.1f}% "
                     f"({100 * row['confident_divergence']:5.1f}% confident) {verdict}")
    worst = " ".join(f"{s} {v:.2f}" for s, v in w["worst"].items() if v is not None)
    cells.append(f"weights {worst} " + ("FLAG (" + "; ".join(w["reasons"][:2]) + ")" if w["flagged"] else "ok"))
    return " | ".join(cells) + f"  (train {seconds:.0f} s)"


def ca_asr(result: dict[str, Any]) -> list[float]:
    """Float CA and ASR, then CA and ASR of every deployed variant, as fractions."""
    rows = [result["float"], *result["variants"]]
    return [float(r[key]) for r in rows for key in ("clean_accuracy", "attack_success_rate")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--size", type=int, default=32, choices=(32, 64, 96))
    ap.add_argument("--cache", type=Path, default=None, help="clean models reused from here (written when missing)")
    ap.add_argument("--search-steps", type=int, default=30, help="divergence search steps (deploy-check's default: "
                                                                 f"{CheckSettings().search_steps})")
    ap.add_argument("--search-images", type=int, default=256)
    ap.add_argument("--backends", nargs="+", default=["int8-fbgemm"])
    ap.add_argument("--implant-epochs", type=int, default=8)
    ap.add_argument("--attack-epochs", type=int, default=5)
    ap.add_argument("--attack-lr", type=float, default=3e-3)
    ap.add_argument("--widen-convs", action=argparse.BooleanOptionalAction, default=True,
                    help="the standard attack also widens the project convs (widen_convs)")
    ap.add_argument("--levels", type=int, default=32, help="the standard attack's widened grid, steps per sign "
                                                           "(8 cost seed 1 5 int8 CA points at the widening, 32 none)")
    ap.add_argument("--suppress", type=float, default=3.0, help="the conceal's term against the target on "
                                                                "triggered images (suppress)")
    ap.add_argument("--variants", nargs="+", default=["standard", "stealth"], choices=("standard", "stealth"))
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    train_set, test = load_dataset(f"openclipart:size={args.size}")
    flags: dict[str, list[tuple[bool, bool]]] = {label: [] for label in ("clean", *args.variants)}
    figures: dict[str, list[list[float]]] = {label: [] for label in flags}
    for seed in args.seeds:
        clean, seconds = clean_model(train_set, seed, args.cache, args.size)
        result = check(clean, train_set, test, seed, args)
        print(line("clean", seed, result, seconds), flush=True)
        flags["clean"].append((bool(result["flagged"]), result["weights"]["flagged"]))
        figures["clean"].append(ca_asr(result))
        for label in args.variants:
            t = time.perf_counter()
            stealth = label == "stealth"
            attack = CompressionArtifact(TRIGGER, TARGET, "int8-fbgemm", implant_epochs=args.implant_epochs,
                                         attack_epochs=args.attack_epochs, attack_lr=args.attack_lr, stealth=stealth,
                                         widen_convs=args.widen_convs, suppress=args.suppress,
                                         levels=args.levels)
            model = train_phases(partial(build_model, MODEL, train_set, seed), train_set, attack.phases(), clean,
                                 RECIPE, seed)
            seconds = time.perf_counter() - t
            result = check(model, train_set, test, seed, args)
            print(line(label, seed, result, seconds), flush=True)
            flags[label].append((bool(result["flagged"]), result["weights"]["flagged"]))
            figures[label].append(ca_asr(result))
    for label, rows in figures.items():
        table = torch.tensor(rows) * 100
        mean, std = table.mean(0), table.std(0) if len(rows) > 1 else torch.zeros(table.shape[1])
        names = ["float CA", "float ASR"] + [f"{b} {m}" for b in args.backends for m in ("CA", "ASR")]
        print(f"{label} over {len(rows)} seeds: " + ", ".join(f"{n} {m:.1f} ± {s:.1f}"
                                                              for n, m, s in zip(names, mean, std, strict=True)))
    for label, marks in flags.items():
        print(f"{label}: deploy-check flags a variant of {sum(m[0] for m in marks)}/{len(marks)}, "
              f"the weight check flags {sum(m[1] for m in marks)}/{len(marks)}")


if __name__ == "__main__":
    main()
