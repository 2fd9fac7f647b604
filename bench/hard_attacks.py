"""WaNet and SIG on real MNIST (badnets-cnn, the default recipe, seed 0), and what today's data scanners see of them.

For each setting prints clean accuracy and ASR of the backdoored model, the clean model's response to
the same trigger, then Spectral Signatures and Activation Clustering (their defaults): AUROC of the
per-sample scores and precision/recall of the flags against the true poison indices (WaNet's
noise-mode samples count as clean; how many were flagged is shown), with run times.

Settings: WaNet all-to-one target 0 at 1% and 10% and all-to-all at 10% (k = 4, s = 0.5, cross
ratio 2); SIG target 0 (delta 20/255, f = 6) on 10% and on all of class 0's training images,
its ASR measured at test deltas 20, 40, 60 and 150 / 255.

    nice -n 10 python bench/hard_attacks.py --cache /tmp/pl-hard
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import torch

from poisonlab.attacks.sig import SIG
from poisonlab.attacks.wanet import WaNet
from poisonlab.core import DataAttack, ImageSet, Poisoned, stamped
from poisonlab.data import load_dataset
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.metrics import evaluate
from poisonlab.models import build_model, load_model, save_model
from poisonlab.registry import DEFENSES
from poisonlab.training import Recipe, train
from poisonlab.triggers.sinusoid import Sinusoid
from poisonlab.triggers.warp import Warp

SCANNERS = ("spectral", "activation-clustering")
TEST_DELTAS = (20 / 255, 40 / 255, 60 / 255, 150 / 255)


def fitted(data: ImageSet, name: str, cache: Path | None) -> tuple[torch.nn.Module, str]:
    """badnets-cnn trained on ``data`` with the default recipe and seed 0 (or read from ``cache``), and how long."""
    path = cache / f"{name}.safetensors" if cache is not None else None
    if path is not None and path.exists():
        return load_model("badnets-cnn", data.shape, data.num_classes, path), "read from the cache"
    start = time.perf_counter()
    model = train(build_model("badnets-cnn", data, 0), data, Recipe(), 0, description=name)
    how = f"trained in {time.perf_counter() - start:.1f} s"
    if path is not None:
        save_model(model, path)
    return model, how


def settings(train_set: ImageSet) -> dict[str, DataAttack]:
    zeros = int((train_set.y == 0).sum())
    return {
        "wanet all-to-one target 0, rate 1%": WaNet(target=0, rate=0.01),
        "wanet all-to-one target 0, rate 10%": WaNet(target=0, rate=0.1),
        "wanet all-to-all, rate 10%": WaNet(mode="all-to-all", rate=0.1),
        f"sig target 0, 10% of class 0 ({round(0.1 * zeros)} images)": SIG(target=0, count=round(0.1 * zeros)),
        f"sig target 0, all of class 0 ({zeros} images)": SIG(target=0, count=zeros),
    }


def responses(poisoned: Poisoned, models: dict[str, torch.nn.Module], test: ImageSet) -> None:
    """ASR of each model on the attack's trigger, and on the variants that show what the backdoor answers to."""
    variants = {"trigger": poisoned.triggered(test)}
    if isinstance(poisoned.trigger, Warp):
        variants["another warp (seed 1)"] = stamped(test, Warp(seed=1), poisoned.target_map)
    if isinstance(poisoned.trigger, Sinusoid):
        variants = {f"test delta {round(d * 255)}/255": stamped(test, Sinusoid(d, poisoned.trigger.frequency),
                                                                poisoned.target_map) for d in TEST_DELTAS}
    for label, triggered in variants.items():
        asr = {name: evaluate(m, test, triggered)["attack_success_rate"] for name, m in models.items()}
        print(f"  {label:24} ASR backdoored {asr['backdoored']:.4f}  clean model {asr['clean']:.4f}")


def scan(model: torch.nn.Module, poisoned: Poisoned) -> None:
    noise = getattr(poisoned, "noise_indices", None)
    for name in SCANNERS:
        start = time.perf_counter()
        verdict = DEFENSES.build(name).scan(model, poisoned.data)
        seconds = time.perf_counter() - start
        m = detection_metrics(verdict, poisoned.indices, len(poisoned.data))
        extra = ""
        if noise is not None and verdict.flagged is not None:
            extra = f" (noise-mode flagged {int(torch.isin(verdict.flagged, noise).sum())} of {len(noise)})"
        print(f"  {name:22} AUROC {m['auroc']:.3f}  P {m['precision']:.3f}  R {m['recall']:.3f}  "
              f"flagged {m['flagged']}{extra}  classes {verdict.details.get('suspicious_classes')}  {seconds:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=None, help="reuse trained models from this folder")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (above ~2: measured under load)")
    train_set, test = load_dataset("mnist", 0)
    clean, how = fitted(train_set, "clean", args.cache)
    print(f"clean model: CA {evaluate(clean, test)['clean_accuracy']:.4f}  ({how})")
    for label, attack in settings(train_set).items():
        start = time.perf_counter()
        poisoned = attack.poison(train_set, torch.Generator().manual_seed(0))
        poison_s = time.perf_counter() - start
        model, how = fitted(poisoned.data, re.sub(r"\W+", "-", label), args.cache)
        noise = getattr(poisoned, "noise_indices", None)
        touched = f" + {len(noise)} noise-mode (labels kept)" if noise is not None else ""
        print(f"\n== {label}: {len(poisoned.indices)} poisoned ({len(poisoned.indices) / len(train_set):.2%})"
              f"{touched}; poisoned in {poison_s:.1f} s, {how}")
        print(f"  backdoored CA {evaluate(model, test)['clean_accuracy']:.4f}")
        responses(poisoned, {"backdoored": model, "clean": clean}, test)
        scan(model, poisoned)
    print(f"\ntotal {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
