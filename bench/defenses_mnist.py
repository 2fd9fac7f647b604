"""The issue-7 targets on BadNets MNIST (badnets-cnn, 3x3 white patch, target 8), measured and printed.

Trains (or reuses, from --cache) one backdoored model per poison rate, then prints for each:
Spectral Signatures and Activation Clustering (textbook and whitened) precision/recall/F1/AUROC
and seconds; STRIP detection at 1% false rejection; Neural Cleanse anomaly indices and seconds;
fine-pruning and unlearning CA/ASR after. ``--clean`` also scans a clean model with Neural Cleanse.

    nice -n 10 python bench/defenses_mnist.py --rates 0.01,0.1 --cache /tmp/pl-defenses
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from poisonlab.attacks import BadNets
from poisonlab.core import Evidence
from poisonlab.data import load_dataset
from poisonlab.defenses import ActivationClustering, FinePruning, NeuralCleanse, SpectralSignatures, Strip, Unlearning
from poisonlab.defenses.apply import clean_reserve
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.metrics import evaluate
from poisonlab.models import build_model, load_model, save_model
from poisonlab.training import Recipe, train


def model_for(data, name: str, cache: Path) -> torch.nn.Module:
    path = cache / f"{name}.safetensors"
    if path.exists():
        return load_model("badnets-cnn", data.shape, data.num_classes, path)
    model = train(build_model("badnets-cnn", data, 0), data, Recipe(), 0, description=name)
    save_model(model, path)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="0.01,0.1")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/pl-defenses"))
    ap.add_argument("--parts", default="scan,strip,nc,mitigate", help="comma list of scan, strip, nc, mitigate")
    ap.add_argument("--clean", action="store_true", help="also run Neural Cleanse on a clean model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=None,
                    help="a seeded random subset of this many MNIST training images (default: all 60,000)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    train_set, test = load_dataset("mnist", 0)
    suffix = ""
    if args.train_size is not None:
        train_set = train_set.subset(torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))
                                     [: args.train_size])
        suffix = f"-n{len(train_set)}"
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (above ~2: measured under load)")
    for rate in (float(r) for r in args.rates.split(",")):
        poisoned = BadNets(target=8, rate=rate).poison(train_set, torch.Generator().manual_seed(0))
        model = model_for(poisoned.data, f"badnets-{rate}{suffix}", args.cache)
        triggered = poisoned.triggered(test)
        base = evaluate(model, test, triggered)
        reserve = clean_reserve(train_set, poisoned.indices, 3000, 0)
        print(f"\n== rate {rate:.0%}: {len(poisoned.indices)} poisoned; CA {base['clean_accuracy']:.4f} "
              f"ASR {base['attack_success_rate']:.4f}")
        if "scan" in parts:
            scanners = {
                "SS textbook (removal 1.5 eps)": SpectralSignatures(whiten=False, removal=min(1.5 * rate, 0.9)),
                "SS whitened": SpectralSignatures(),
                "AC textbook (smaller < 35%)": ActivationClustering(whiten=False, rule="size"),
                "AC whitened": ActivationClustering(),
            }
            for name, scanner in scanners.items():
                t = time.perf_counter()
                verdict = scanner.scan(model, poisoned.data)
                s = time.perf_counter() - t
                m = detection_metrics(verdict, poisoned.indices, len(poisoned.data))
                print(f"  {name:30} P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f} "
                      f"AUROC {m['auroc']:.3f} flagged {m['flagged']:5d} "
                      f"classes {verdict.details['suspicious_classes']} {s:.1f} s")
        if "strip" in parts:
            t = time.perf_counter()
            strip = Strip(frr=0.01).fit(model, reserve)
            eligible = triggered.y != test.y
            caught = len(strip.detect(model, triggered.x[eligible]).flagged) / int(eligible.sum())
            rejected = len(strip.detect(model, test.x).flagged) / len(test)
            print(f"  STRIP: detects {caught:.3f} of triggered test images, rejects {rejected:.3f} of clean test "
                  f"images (threshold set for 1% on held-out clean), {time.perf_counter() - t:.1f} s")
        if "nc" in parts or "mitigate" in parts:
            t = time.perf_counter()
            scan = NeuralCleanse().scan(model, reserve, progress=True)
            print(f"  Neural Cleanse: flagged {scan.flagged.tolist()}, anomaly index "
                  f"{[round(a, 2) for a in scan.details['anomaly_index']]}, mask L1 "
                  f"{[round(n, 1) for n in scan.details['mask_l1']]}, {time.perf_counter() - t:.1f} s")
        if "mitigate" in parts:
            for name in ("fine-pruning", "unlearning"):
                t = time.perf_counter()
                evidence = Evidence(reserve, model_scans={"neural-cleanse": scan})
                repaired = (FinePruning() if name == "fine-pruning" else Unlearning()).repair(model, evidence)
                assert repaired.model is not None
                after = evaluate(repaired.model, test, triggered)
                print(f"  {name}: CA {after['clean_accuracy']:.4f} (drop "
                      f"{100 * (base['clean_accuracy'] - after['clean_accuracy']):.2f} points) ASR "
                      f"{after['attack_success_rate']:.4f}; {time.perf_counter() - t:.1f} s; "
                      f"{ {k: v for k, v in repaired.details.items() if not isinstance(v, torch.Tensor)} }")
    if args.clean:
        model = model_for(train_set, f"clean{suffix}", args.cache)
        t = time.perf_counter()
        scan = NeuralCleanse().scan(model, clean_reserve(train_set, torch.empty(0, dtype=torch.long), 3000, 0))
        print(f"\n== clean model: Neural Cleanse flagged {scan.flagged.tolist()}, anomaly index "
              f"{[round(a, 2) for a in scan.details['anomaly_index']]}, {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
