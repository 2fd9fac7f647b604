"""Issue 20 on 3-channel images: EfficientNet-Lite0 fine-tuned on the clip-art set, clean and under BadNets (or any
data attack, ``--attack``).

For each seed: a clean and a BadNets-poisoned model trained with one recipe (CA, ASR, training seconds);
every data scanner on the clean model (false alarms: rows flagged, classes called poisoned) and on the
poisoned model (precision/recall of its flags, AUROC of its scores, TPR at 5% FPR, seconds); the flags of the
scanner with the best F1 removed and the model retrained (CA and ASR after). Models are cached as safetensors under
--cache, so a second run only re-measures.

    nice -n 10 python bench/clipart.py --seeds 0 --cache /tmp/pl-clipart
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import torch

from poisonlab.attacks import BadNets
from poisonlab.core import AllToOne, ImageSet, Poisoned
from poisonlab.data import load_dataset
from poisonlab.defenses import DEFENSES, names_of
from poisonlab.defenses.scoring import as_mask, detection_metrics
from poisonlab.metrics import evaluate
from poisonlab.models import build_model, load_model, save_model
from poisonlab.registry import ATTACKS
from poisonlab.training import Recipe, train
from poisonlab.triggers import parse_trigger


def trained(name: str, data: ImageSet, args: argparse.Namespace, seed: int) -> tuple[torch.nn.Module, float]:
    """The model ``name`` trained on ``data`` (from the cache when there) and its training seconds (0 if cached)."""
    path = args.cache / f"{name}.safetensors"
    if path.exists():
        return load_model(args.model, data.shape, data.num_classes, path), 0.0
    start = time.perf_counter()
    model = train(build_model(args.model, data, seed), data, Recipe(epochs=args.epochs, lr=args.lr,
                                                                      batch_size=args.batch_size), seed,
                  description=name)
    seconds = time.perf_counter() - start
    save_model(model, path)
    return model, seconds


def scan_all(model: torch.nn.Module, poisoned: Poisoned, scanners: list[str]
             ) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor]]:
    """The figures of every data scanner in ``scanners`` on ``poisoned`` for ``model``, and the rows each flagged.

    With no poisoned rows (a clean model on its clean data) the figures are the false alarms: rows flagged
    and the classes called poisoned."""
    n = len(poisoned.data)
    rows: dict[str, dict[str, float]] = {}
    flags: dict[str, torch.Tensor] = {}
    for name in scanners:
        start = time.perf_counter()
        verdict = DEFENSES.build(name).scan(model, poisoned.data)
        seconds = time.perf_counter() - start
        m = detection_metrics(verdict, poisoned.indices, n)
        rows[name] = {**m, "seconds": seconds}
        flags[name] = verdict.flagged if verdict.flagged is not None else torch.empty(0, dtype=torch.long)
        if len(poisoned.indices) == 0:
            print(f"  {name:22} false alarms: flagged {m['flagged']:4d} of {n} ({m['flagged'] / n:.2%}), classes "
                  f"{verdict.details.get('suspicious_classes', [])}  {seconds:5.1f} s", flush=True)
            continue
        print(f"  {name:22} P {m['precision']:.3f} R {m['recall']:.3f} flagged {m['flagged']:5d} "
              f"AUROC {m['auroc']:.4f} TPR@5%FPR {m['tpr_at_5fpr']:.3f}  {seconds:5.1f} s", flush=True)
    return rows, flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="openclipart:size=64")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--target", type=int, default=8)
    ap.add_argument("--trigger", default="checkerboard:size=6")
    ap.add_argument("--attack", default=None, help="any registered data attack instead of BadNets with --trigger, "
                                                   "--target and --rate, e.g. sig:target=1,rate=0.05,test_delta=0.16")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--parts", default="badnets,scan,retrain", help="comma list of badnets, scan, retrain")
    ap.add_argument("--scanners", default=",".join(names_of("data-scanner")),
                    help="comma list of data scanners (default: every registered one)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/pl-clipart"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    scanners = args.scanners.split(",")
    start = time.perf_counter()
    train_set, test = load_dataset(args.dataset, 0)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (above ~2: timed under load); "
          f"{args.dataset}: {len(train_set)} train / {len(test)} test, {train_set.num_classes} classes, "
          f"loaded in {time.perf_counter() - start:.1f} s")
    tag = f"{args.model}-{args.dataset.replace(':', '-').replace(',', '-').replace('=', '')}-e{args.epochs}-lr{args.lr}"
    for seed in args.seeds:
        clean, seconds = trained(f"clean-{tag}-s{seed}", train_set, args, seed)
        base = evaluate(clean, test)["clean_accuracy"]
        print(f"\n== seed {seed}: clean {args.model}: CA {base:.4f} (trained in {seconds:.0f} s; 0 = cached)")
        if "scan" in parts:
            scan_all(clean, Poisoned(train_set, torch.empty(0, dtype=torch.long), parse_trigger(args.trigger),
                                     AllToOne(args.target)), scanners)
        if "badnets" not in parts:
            continue
        attack = BadNets(trigger=parse_trigger(args.trigger), target=args.target, rate=args.rate) \
            if args.attack is None else ATTACKS.build(args.attack)
        poisoned = attack.poison(train_set, torch.Generator().manual_seed(seed))
        spec = f"badnets-{args.trigger}-r{args.rate}" if args.attack is None else args.attack
        name = f"{tag}-{spec.replace(':', '-').replace(',', '-').replace('=', '')}"
        model, seconds = trained(f"{name}-s{seed}", poisoned.data, args, seed)
        triggered = poisoned.triggered(test)
        m = evaluate(model, test, triggered)
        print(f"   {spec} ({len(poisoned.indices)} poisoned): CA "
              f"{m['clean_accuracy']:.4f} ({m['clean_accuracy'] - base:+.4f} vs clean) ASR "
              f"{m['attack_success_rate']:.4f} (trained in {seconds:.0f} s)", flush=True)
        clean_asr = evaluate(clean, test, triggered)["attack_success_rate"]
        print(f"   clean model on triggered images: ASR {clean_asr:.4f}")
        if "scan" not in parts:
            continue
        rows, flags = scan_all(model, poisoned, scanners)
        if "retrain" not in parts:
            continue
        best = max(rows, key=lambda r: (rows[r]["f1"], rows[r]["auroc"]))  # retraining needs flags, not a ranking
        keep = ~as_mask(flags[best], len(poisoned.data))
        kept = poisoned.data.subset(torch.nonzero(keep).flatten())
        removed = hashlib.sha256(torch.nonzero(~keep).flatten().numpy().tobytes()).hexdigest()[:12]
        repaired, seconds = trained(f"{name}-retrain-{removed}-s{seed}", kept, args, seed)  # keyed by the rows removed
        after = evaluate(repaired, test, triggered)
        print(f"   retrained without {best}'s {int((~keep).sum())} flags: CA {after['clean_accuracy']:.4f} ASR "
              f"{after['attack_success_rate']:.4f} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
