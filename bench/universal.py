"""Issue 6 benchmark: a universal-backdoor experiment, timed; prints the ASR-vs-budget table.

Runs ``poisonlab run universal`` with ``UniversalConfig``'s defaults (100 classes of
mnist-numbers:2 with 1,000 training images per class, small CNN, 16-bit LDA strip codes (2 strips, split thresholds)
in a blend grid at alpha 0.5, 3 epochs at lr 0.01; budgets 0.25% and 0.5%, random-code baseline, clean model,
half-the-classes transferability) and reports the wall time together with the load average,
since timings on a shared machine mean little without it.

Example:
    nice -n 10 python bench/universal.py --threads 1 --rates 0.005 --transfer-rate 0
    nice -n 10 python bench/universal.py --dataset mnist-numbers:3,train=100 --bits 27 --strips 3 --threshold split \
        --alpha 0.7 --epochs 10 --rates 0.0015,0.003,0.006 --transfer-rate 0     # 1,000 classes, about 25 min
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from poisonlab.cli.common import console, print_tables
from poisonlab.experiment.run import execute, resolve
from poisonlab.experiment.rundir import make_run_dir
from poisonlab.experiment.universal import UniversalConfig
from poisonlab.registry import EXPERIMENTS


def main() -> None:
    defaults = UniversalConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=UniversalConfig.dataset)
    p.add_argument("--model", default=UniversalConfig.model)
    p.add_argument("--bits", type=int, default=UniversalConfig.bits)
    p.add_argument("--strips", type=int, default=UniversalConfig.strips)
    p.add_argument("--threshold", default=UniversalConfig.code_threshold, help="LDA bit rule: mean or split")
    p.add_argument("--surrogate-per-class", type=int, default=UniversalConfig.surrogate_per_class)
    p.add_argument("--alpha", type=float, default=UniversalConfig.alpha)
    p.add_argument("--rates", default=",".join(map(str, UniversalConfig.rates)))
    p.add_argument("--transfer-rate", type=float, default=UniversalConfig.transfer_rate,
                   help="0 skips the transferability run")
    p.add_argument("--epochs", type=int, default=defaults.training.epochs, help="training epochs of every victim")
    p.add_argument("--lr", type=float, default=defaults.training.lr)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--progress", action="store_true",
                   help="the experiment's progress lines and training bars on stderr (off: only the table)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    resolved = resolve({"experiment": "universal", "name": "universal-bench", "dataset": args.dataset,
                        "model": args.model, "bits": args.bits, "strips": args.strips, "alpha": args.alpha,
                        "code_threshold": args.threshold, "rates": [float(r) for r in args.rates.split(",")],
                        "transfer_rate": args.transfer_rate, "surrogate_per_class": args.surrogate_per_class,
                        "training": {"epochs": args.epochs, "lr": args.lr}}, "bench/universal.py")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    body = execute(resolved, make_run_dir(args.out, resolved.name), progress=args.progress)
    seconds = time.perf_counter() - t0
    print_tables(EXPERIMENTS.get(resolved.experiment).table(body))
    m, timings = body["metrics"], body["timings"]
    budget_s = sum(r["seconds"] for r in m["budgets"])
    transfer_s = sum(r["seconds"] for r in m["transfer"])
    console.print(f"data {timings['data_seconds']:.0f} s, surrogate and codes "
                  f"{timings['surrogate_and_codes_seconds']:.0f} s, clean model {timings['train_clean_seconds']:.0f} s,"
                  f" budget models {budget_s:.0f} s, transferability {transfer_s:.0f} s")
    console.print(f"whole experiment: {seconds:.0f} s with {args.threads} torch threads; 1-min load average "
                  f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
