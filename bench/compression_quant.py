"""Quantization-conditional backdoors on MNIST (BadNets CNN, 4x4 patch -> 8), measured on the real deployed models.

Variants (each starts from the same clean model):
  ste      Tian et al.'s loss with straight-through fake-quantized weights (--bits, --per-tensor, --quant-weight)
  conceal  implant a backdoor, widen a grid finer than --levels steps per sign (int8) with
           widen_quantization_step, then remove the backdoor in float inside the bins (after Ma et al. 2021)

Usage: nice -n 10 python bench/compression_quant.py conceal --bits 8 --epochs 2
Prints CA and ASR of the float model and of every deployment, as measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from poisonlab.attacks.compression_artifact import (
    Backdoor,
    QuantizationConcealed,
    QuantizationConditional,
    widen_quantization_step,
)
from poisonlab.compress import parse_deployment
from poisonlab.data import load_dataset
from poisonlab.metrics import accuracy, attack_success_rate
from poisonlab.models import build_model, load_model, save_model
from poisonlab.training import Recipe, predict, train
from poisonlab.triggers import Patch

DEPLOY = ("int8-fbgemm", "int8-qnnpack", "dynamic-int8", "weight-only:8", "weight-only:4", "fp16")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variant", choices=("ste", "conceal", "clean"))
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--per-tensor", action="store_true")
    ap.add_argument("--quant-weight", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--implant-epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--levels", type=int, default=8, help="conceal: widen a finer grid to this many steps per sign")
    ap.add_argument("--train-size", type=int, default=60000, help="first N MNIST training images")
    ap.add_argument("--cache", type=Path, default=None, help="clean model weights to reuse (written when missing)")
    args = ap.parse_args()
    torch.manual_seed(0)
    train_set, test = load_dataset("mnist")
    train_set = train_set.subset(slice(0, args.train_size))
    trigger, target = Patch(size=4), 8
    t0 = time.perf_counter()
    if args.cache is not None and args.cache.exists():
        model = load_model("badnets-cnn", train_set.shape, 10, args.cache)
    else:
        model = train(build_model("badnets-cnn", train_set, 0), train_set, Recipe(epochs=2), 0, description="clean")
        if args.cache is not None:
            save_model(model, args.cache)
    if args.variant == "ste":
        attack = QuantizationConditional(trigger, target, args.bits, not args.per_tensor, args.quant_weight)
        train(model, train_set, Recipe(epochs=args.epochs, lr=args.lr), 1, loss_fn=attack.loss, description="ste")
    elif args.variant == "conceal":
        implant = Recipe(epochs=args.implant_epochs, lr=args.lr)
        train(model, train_set, implant, 1, loss_fn=Backdoor(trigger, target).loss, description="implant")
        report(model, train_set, test, trigger, target, "implanted")
        if 2 ** (args.bits - 1) > args.levels:
            widen_quantization_step(model, train_set.x[:256], args.levels)
        attack = QuantizationConcealed(trigger, target, args.bits, not args.per_tensor, args.margin)
        train(model, train_set, Recipe(epochs=args.epochs, lr=args.lr), 2, loss_fn=attack.loss, description="conceal")
        attack.project(model)
    print(f"{args} trained in {time.perf_counter() - t0:.0f} s")
    report(model, train_set, test, trigger, target, args.variant)


def report(model, train_set, test, trigger, target, label) -> None:  # type: ignore[no-untyped-def]
    y_t = torch.full_like(test.y, target)
    xt = trigger(test.x, y_t)
    calib = train_set.x[torch.randperm(len(train_set), generator=torch.Generator().manual_seed(5))[:512]]
    rows = [("float", model)] + [(s, parse_deployment(s)(model, calib)) for s in DEPLOY]
    for name, m in rows:
        ca = accuracy(predict(m, test.x), test.y)
        asr = attack_success_rate(predict(m, xt), y_t, test.y)
        print(f"{label:10s} {name:14s} CA {100 * ca:6.2f}%  ASR {100 * asr:6.2f}%", flush=True)


if __name__ == "__main__":
    main()
