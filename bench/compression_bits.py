"""At which weight bit width does the bin-constrained concealment (after Ma et al. 2021) still hide a backdoor?

A small CNN on the synthetic set is trained with a 3x3 patch backdoor (-> class 1), then for each
bit width the backdoor is removed from the float model while every weight stays in its quantization
bin. Printed: CA/ASR of the float model, of the real weight-only model at that width, and of the real
int8 models (fbgemm per-channel, qnnpack per-tensor). Everything printed is measured in this run.

Usage: nice -n 10 python bench/compression_bits.py [--bits 4 5 6 7 8] [--epochs 4]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from torch import nn

from poisonlab.attacks.compression_artifact import Backdoor, QuantizationConcealed
from poisonlab.compress import parse_deployment
from poisonlab.core import ImageSet
from poisonlab.data import make_synthetic
from poisonlab.metrics import accuracy, attack_success_rate
from poisonlab.models import build_model
from poisonlab.training import Recipe, predict, train
from poisonlab.triggers import Patch

TRIGGER, TARGET = Patch(size=3), 1


def measure(model: nn.Module, test: ImageSet) -> str:
    y_t = torch.full_like(test.y, TARGET)
    ca = accuracy(predict(model, test.x), test.y)
    asr = attack_success_rate(predict(model, TRIGGER(test.x, y_t)), y_t, test.y)
    return f"CA {100 * ca:5.1f}% ASR {100 * asr:5.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 5, 6, 7, 8])
    ap.add_argument("--epochs", type=int, default=4, help="concealment epochs")
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    full = make_synthetic(1000, num_classes=4, size=12, seed=5)
    train_set, test = full.subset(slice(0, 700)), full.subset(slice(700, 1000))
    implanted = train(build_model("small-cnn", train_set, 0), train_set, Recipe(epochs=4), 0,
                      loss_fn=Backdoor(TRIGGER, TARGET).loss, progress=False)
    print(f"implanted float: {measure(implanted, test)}")
    for bits in args.bits:
        t = time.perf_counter()
        model = copy.deepcopy(implanted)
        attack = QuantizationConcealed(TRIGGER, TARGET, bits=bits, per_channel=True)
        train(model, train_set, Recipe(epochs=args.epochs, lr=1e-3), 2, loss_fn=attack.loss, progress=False)
        attack.project(model)
        cells = [f"float {measure(model, test)}"]
        for spec in (f"weight-only:{bits}", "int8-fbgemm", "int8-qnnpack"):
            cells.append(f"{spec} {measure(parse_deployment(spec)(model, train_set.x[:256]), test)}")
        print(f"concealed for {bits}-bit per-channel weights: " + " | ".join(cells)
              + f"  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
