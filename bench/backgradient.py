"""Back-gradient poisoning benchmark: memory of back-gradient vs unrolled autograd as T grows, seconds per
optimised poisoning point for each learner, and the attack's quality (the paper's MNIST experiment, both goals).

Memory is reported two ways, each (method, T) in a fresh subprocess: the peak bytes of distinct storages held
by autograd graphs (poisonlab.backgradient.memory.SavedTensorMeter) and the growth of the process's peak RSS
over the gradient computation (Linux: VmHWM from /proc/self/status, reset through /proc/self/clear_refs).

    python bench/backgradient.py                      # everything (several minutes on an idle machine)
    python bench/backgradient.py --part memory --steps 50,200,800
    python bench/backgradient.py --part quality       # clean / label-flip / attack error and ratios per fraction
    python bench/backgradient.py --part quality --goals availability --no-transfer --set train_size=100 \\
        --set val_size=100 --set test_size=500 --set rates=[0.02]    # a smoke test: seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from poisonlab.backgradient.learners import Descent, build_learner
from poisonlab.backgradient.memory import SavedTensorMeter
from poisonlab.backgradient.reverse import InnerProblem, back_gradient, unrolled_gradient
from poisonlab.cli.common import print_tables
from poisonlab.core import ImageSet
from poisonlab.data import load_dataset
from poisonlab.experiment.backgradient import BackgradientConfig
from poisonlab.experiment.run import execute, resolve
from poisonlab.registry import EXPERIMENTS


def mnist_subsets(n_train: int, n_val: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    train, _ = load_dataset("mnist", seed)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[:n_train]), train.subset(perm[n_train : n_train + n_val])


def peak_rss_kb() -> int:
    """This process's peak resident set size (VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS (Linux clear_refs value 5); return it."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return peak_rss_kb()


def memory_child(method: str, steps: int, n_train: int, lr: float) -> dict[str, float]:
    """One gradient computation in this process; its memory and time."""
    torch.set_num_threads(1)
    train, val = mnist_subsets(n_train, 200)
    learner = build_learner("logreg", train.shape, 10, 1e-3, train.x.mean(0).double())
    labels = (train.y[:5] + 1) % 10
    problem = InnerProblem(learner, train.x.double(), train.y, labels, Descent(steps=steps, lr=lr))
    xv = val.x.double()

    def objective(w: torch.Tensor) -> torch.Tensor:
        return learner.sample_losses(learner.logits(w, xv), val.y).mean()

    w0 = learner.init(0, torch.float64)
    xp = train.x[:5].double()
    fn = back_gradient if method == "back" else unrolled_gradient
    # One short run first: autograd's one-time set-up (seconds, tens of MiB) is not part of either method.
    fn(InnerProblem(learner, problem.x_train, problem.y_train, labels, Descent(steps=1, lr=lr)), w0, xp, objective)
    del train
    gc.collect()
    base_kb = reset_peak_rss()
    t = time.perf_counter()
    with SavedTensorMeter() as meter:
        result = fn(problem, w0, xp, objective)
    seconds = time.perf_counter() - t
    peak_kb = peak_rss_kb()
    torch.save({"grad": result.grad}, f"/tmp/bench_backgradient_{method}_{steps}.pt")
    return {"saved_bytes": meter.peak, "rss_growth_kb": peak_kb - base_kb, "seconds": seconds,
            "w0_error": result.w0_error}


def memory(steps_list: list[int], n_train: int, lr: float) -> None:
    print(f"memory: logistic regression on {n_train} MNIST images (+5 poisoning points), lr {lr}, float64")
    print(f"{'T':>5} {'method':>9} {'graph MiB':>10} {'RSS+ MiB':>9} {'seconds':>8} {'w0 error':>9} {'rel. err':>9}")
    for steps in steps_list:
        rows = {}
        for method in ("back", "unrolled"):
            out = subprocess.run([sys.executable, __file__, "--child", method, "--steps", str(steps),
                                  "--n-train", str(n_train), "--lr", str(lr)],
                                 capture_output=True, text=True, check=True)
            rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
        g = {m: torch.load(f"/tmp/bench_backgradient_{m}_{steps}.pt")["grad"] for m in rows}
        rel = float((g["back"] - g["unrolled"]).norm() / g["unrolled"].norm())
        for method, r in rows.items():
            print(f"{steps:>5} {method:>9} {r['saved_bytes'] / 2**20:>10.2f} {r['rss_growth_kb'] / 1024:>9.1f} "
                  f"{r['seconds']:>8.1f} {r['w0_error']:>9.1e} {rel if method == 'back' else 0:>9.1e}")
        ratio = rows["unrolled"]["saved_bytes"] / rows["back"]["saved_bytes"]
        rss = rows["unrolled"]["rss_growth_kb"] / max(rows["back"]["rss_growth_kb"], 1)
        print(f"{steps:>5} unrolled/back-gradient: graph memory x{ratio:.1f}, RSS growth x{rss:.1f}")


def speed(learners: list[str], points: int) -> None:
    cfg = BackgradientConfig()
    train, val = mnist_subsets(cfg.train_size, cfg.val_size)
    print(f"speed: seconds per optimised poisoning point, MNIST {cfg.train_size} train / {cfg.val_size} validation, "
          f"{points} points, T={cfg.steps} after {cfg.warm_start} warm-start steps, lr {cfg.lr} (adaline 0.02), "
          f"{cfg.iterations} iterations per point, float64, 1 thread")
    for name in learners:
        attack = dataclasses.replace(cfg.attack(val, points), learner=name, lr=cfg.lr if name != "adaline" else 0.02)
        t = time.perf_counter()
        attack.craft(train, torch.Generator().manual_seed(0))
        print(f"{name:>8}: {(time.perf_counter() - t) / points:.2f} s per point (incl. the warm start)")


def quality(goals: list[str], transfer: bool, overrides: dict[str, Any]) -> None:
    """The experiment's defaults (the paper's MNIST setting) for each goal; targeted up to 4% as in the paper.

    ``overrides`` (``--set``) replace config fields of every goal's run, e.g. a smaller ``train_size``.
    """
    for goal in goals:
        raw: dict[str, Any] = {"experiment": "backgradient", "name": f"backgradient-{goal}", "goal": goal}
        if goal == "targeted":
            raw["rates"] = [0.01, 0.02, 0.03, 0.04]
        if not transfer:
            raw["transfer"] = []
        resolved = resolve({**raw, **overrides}, "bench/backgradient.py")
        with tempfile.TemporaryDirectory() as out:
            body = execute(resolved, Path(out), progress=False)
        print_tables(EXPERIMENTS.get(resolved.experiment).table(body))
        t = body["timings"]
        print(f"{goal}: craft {t['craft_seconds']:.0f} s, total {t['total_seconds']:.0f} s, "
              f"max reversal w0 error {body['metrics']['max_reversal_w0_error']:.1e}")


def config_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as (KEY, VALUE): VALUE read as a TOML value (``200``, ``[0.01, 0.02]``), else as a string."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["memory", "speed", "quality", "all"], default="all")
    parser.add_argument("--steps", default="50,200,800", help="T values for the memory part")
    parser.add_argument("--n-train", type=int, default=200, help="training images for the memory part")
    parser.add_argument("--lr", type=float, default=0.1, help="descent step for the memory part")
    parser.add_argument("--learners", default="adaline,logreg,mlp,cnn")
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--goals", default="availability,targeted", help="goals for the quality part")
    parser.add_argument("--no-transfer", action="store_true", help="quality part: skip the MLP/CNN transfer")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=config_override,
                        help="quality part: set a backgradient config field (TOML value, bare strings allowed), "
                             "e.g. --set train_size=200 --set rates=[0.02]; repeatable")
    parser.add_argument("--child", choices=["back", "unrolled"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(memory_child(args.child, int(args.steps), args.n_train, args.lr)))
        return
    torch.set_num_threads(1)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if args.part in ("memory", "all"):
        memory([int(s) for s in args.steps.split(",")], args.n_train, args.lr)
    if args.part in ("speed", "all"):
        speed(args.learners.split(","), args.points)
    if args.part in ("quality", "all"):
        quality(args.goals.split(","), not args.no_transfer, dict(args.set))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
