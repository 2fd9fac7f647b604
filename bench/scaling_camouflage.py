"""Poisoning through image scaling on MNIST (Quiring & Rieck, DLS 2020): camouflaged vs visible BadNets.

A high-resolution training set is made by upscaling an MNIST subset 4x with bicubic interpolation (to
112x112; stated: the originals are 28x28). The victim pipeline downscales with OpenCV linear back to
28x28 and trains small-cnn. Runs, all with the same seed, recipe and poisoned-sample budget:

  clean              no poison
  visible-badnets    BadNets on the 28x28 pipeline output (the trigger is visible in the training data)
  camouflage         trigger hidden in the downscale of relabelled high-resolution images
  camouflage+median  the same data, every image selective-median filtered before the downscale
  camouflage+area    the same data, pipeline switched to area scaling (robust scaling)
  clean-label        target-class images, labels untouched, whose downscale is a triggered other-class image
  clean-label+median the same, selective-median filtered

CA is on the clean test set through each run's pipeline; ASR(visible) stamps the trigger on the model's
28x28 input (did the model learn the backdoor?); ASR(camouflaged) hides it in high-resolution test images
that then go through the run's pipeline (what the attacker can do at test time).

    nice -n 10 python bench/scaling_camouflage.py [--train 10000] [--count 100] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from poisonlab.attacks import BadNets
from poisonlab.core import ImageSet
from poisonlab.data import load_dataset
from poisonlab.metrics import accuracy, attack_success_rate
from poisonlab.models import build_model
from poisonlab.scaling import get_resizer, psnr
from poisonlab.scaling.camouflage import CamouflagedTrigger, ScalingCamouflage, downscale
from poisonlab.scaling.defenses import selective_median
from poisonlab.training import Recipe, predict, train
from poisonlab.triggers import Patch

RATIO, LOW = 4, (28, 28)


def upscale(data: ImageSet) -> ImageSet:
    """4x bicubic upscale, rounded to 8-bit levels like a stored image."""
    big = F.interpolate(data.x, scale_factor=RATIO, mode="bicubic", align_corners=False).clamp(0, 1)
    return ImageSet(torch.round(big * 255) / 255, data.y, data.classes)


def median_filtered(x: torch.Tensor) -> torch.Tensor:
    """Selective median filter (against the OpenCV-linear pipeline) on every image."""
    linear = get_resizer("opencv", "linear")
    out = [selective_median(img[0].numpy() * 255.0, linear, LOW) for img in x]
    return torch.from_numpy(np.stack(out)[:, None] / 255.0).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    print(f"load {os.getloadavg()[0]:.1f}")
    full_train, full_test = load_dataset("mnist")
    g = torch.Generator().manual_seed(args.seed)
    tr = full_train.subset(torch.randperm(len(full_train), generator=g)[: args.train])
    te = full_test.subset(torch.randperm(len(full_test), generator=g)[: args.test])
    hr_train, hr_test = upscale(tr), upscale(te)
    trigger = Patch(size=3)
    recipe = Recipe(epochs=args.epochs)
    pipelines = {"linear": lambda x: downscale(x, "opencv-linear", LOW),
                 "area": lambda x: downscale(x, "opencv-area", LOW)}
    hidden_trigger = CamouflagedTrigger(trigger, "opencv-linear", LOW)

    def fit_eval(name: str, x_hr: torch.Tensor, y: torch.Tensor, pipe: str, median: bool,
                 camouflaged_test: bool) -> None:
        prep = (lambda x: pipelines[pipe](median_filtered(x))) if median else pipelines[pipe]
        data = ImageSet(prep(x_hr), y, tr.classes)
        model = build_model("small-cnn", data, args.seed)
        train(model, data, recipe, seed=args.seed, progress=False)
        test_x = prep(hr_test.x)
        target = torch.full_like(te.y, args.target)
        ca = accuracy(predict(model, test_x), te.y)
        asr_visible = attack_success_rate(predict(model, trigger(test_x, target)), target, te.y)
        line = f"{name:20s} CA {100 * ca:6.2f}%  ASR(visible) {100 * asr_visible:6.2f}%"
        if camouflaged_test:
            hidden = hidden_trigger(hr_test.x, target)
            asr_hidden = attack_success_rate(predict(model, prep(hidden)), target, te.y)
            line += f"  ASR(camouflaged) {100 * asr_hidden:6.2f}%"
        print(line, flush=True)

    fit_eval("clean", hr_train.x, hr_train.y, "linear", False, False)
    low = ImageSet(pipelines["linear"](hr_train.x), hr_train.y, tr.classes)
    badnets = BadNets(trigger=trigger, target=args.target, count=args.count)
    visible = badnets.poison(low, torch.Generator().manual_seed(1))
    data = ImageSet(visible.data.x, visible.data.y, tr.classes)
    model = build_model("small-cnn", data, args.seed)
    train(model, data, recipe, seed=args.seed, progress=False)
    test_x = pipelines["linear"](hr_test.x)
    target = torch.full_like(te.y, args.target)
    print(f"{'visible-badnets':20s} CA {100 * accuracy(predict(model, test_x), te.y):6.2f}%  ASR(visible) "
          f"{100 * attack_success_rate(predict(model, trigger(test_x, target)), target, te.y):6.2f}%  "
          f"PSNR(poisoned 28px, clean 28px) "
          f"{psnr(visible.data.x[visible.indices].numpy() * 255, low.x[visible.indices].numpy() * 255):.1f} dB",
          flush=True)
    for clean_label in (False, True):
        attack = ScalingCamouflage("opencv-linear", LOW, trigger, args.target, count=args.count,
                                   clean_label=clean_label)
        poisoned = attack.poison(hr_train, torch.Generator().manual_seed(1))
        idx = poisoned.indices
        seen = downscale(poisoned.data.x[idx], "opencv-linear", LOW)
        patch = trigger(torch.zeros_like(seen[:1]), None) > 0  # where the trigger sits in the 28px image
        name = "clean-label" if clean_label else "camouflage"
        print(f"{name}: PSNR(poisoned 112px, clean original) "
              f"{psnr(poisoned.data.x[idx].numpy() * 255, hr_train.x[idx].numpy() * 255):.1f} dB; after the "
              f"downscale the trigger pixels are >= {255 * seen[patch.expand_as(seen)].min():.2f}/255 (white = 255); "
              f"labels changed {int((poisoned.data.y != hr_train.y).sum())}", flush=True)
        fit_eval(name, poisoned.data.x, poisoned.data.y, "linear", False, True)
        fit_eval(f"{name}+median", poisoned.data.x, poisoned.data.y, "linear", True, True)
        if not clean_label:
            fit_eval(f"{name}+area", poisoned.data.x, poisoned.data.y, "area", False, True)
    print(f"total {time.time() - start:.0f} s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
