"""Adaptive attacker vs the default ``local`` scaling-attack detector, at the shipped thresholds.

Sources and targets are held-out corpus images (photos disjoint from the calibration ones); attacks are
the exact strong attack (eps = 1). For each config it prints the detection rate (``local``, and the
global ``grid`` score) against:

* region size: the attacker controls a square of 1/k of the model's input (k = 1 ... 256);
* blend strength: the attack aims at resize(S) + alpha (T - resize(S)), the weaker the closer to the
  source's own downscale; "PSNR(out, T)" says how close the model's input gets to the attacker's target;
* decoy grids: the attack's change is copied onto d of the shifted grids the detector compares against
  (the attacker knows which), at the price of changing d + 1 times as many pixels ("PSNR(A, S)" over the
  image and over the attacked region);
* an oracle attacker: per image the strongest blend the detector does not flag (bisection on alpha with
  the detector's own score and threshold), and how close to its target it then gets.

    nice -n 10 python bench/scaling_adaptive.py [--configs opencv-linear:8,opencv-nearest:4] [--attacks 50]
"""

from __future__ import annotations

import argparse
import os
import time
from multiprocessing import Pool
from typing import Any

import cv2
import numpy as np

from poisonlab.scaling import RESIZERS, Resizer, craft_attack, psnr
from poisonlab.scaling.calibration import ratio_key, shipped
from poisonlab.scaling.corpus import benign_corpus
from poisonlab.scaling.grid import grid_contrast, read_grid, shifts
from poisonlab.scaling.operator import operator_for

OUTPUT = 64
REGIONS = (1, 4, 16, 36, 64, 144, 256)
ALPHAS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
DECOYS = (0, 1, 2, 4, 8, 15)


def _box(k: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    side = max(1, round(OUTPUT / np.sqrt(k)))
    top, left = (int(v) for v in rng.integers(0, OUTPUT - side + 1, 2))
    return top, left, side, side


def _goal(small: np.ndarray, target: np.ndarray, box: tuple[int, int, int, int], alpha: float) -> np.ndarray:
    """resize(S) with the box moved a share ``alpha`` of the way to the target."""
    top, left, h, w = box
    goal = small.astype(np.float64)
    region = goal[top:top + h, left:left + w]
    goal[top:top + h, left:left + w] = region + alpha * (target[top:top + h, left:left + w] - region)
    return np.clip(np.rint(goal), 0, 255).astype(np.uint8)


def _decoy(attack: np.ndarray, source: np.ndarray, resizer: Resizer, size: tuple[int, int], d: int) -> np.ndarray:
    """The attack's change on the read grid, also added on the first ``d`` shifted grids of the detector."""
    op = operator_for(resizer, source.shape[:2], size)
    mask = read_grid(op)[..., None]
    delta = (attack.astype(np.float64) - source) * mask
    out = attack.astype(np.float64)
    for (a, b), _ in shifts(mask[..., 0], op)[:d]:
        out += np.roll(delta, (a, b), axis=(0, 1))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _region_psnr(a: np.ndarray, s: np.ndarray, box: tuple[int, int, int, int], ratio: int) -> float:
    top, left, h, w = (v * ratio for v in box)
    return psnr(a[top:top + h, left:left + w], s[top:top + h, left:left + w])


def run(job: tuple[str, int, int, int]) -> dict[str, Any]:
    name, ratio, attacks, seed = job
    resizer, size, side = RESIZERS.get(name), (OUTPUT, OUTPUT), OUTPUT * ratio
    key = ratio_key((side, side), size)
    cut = {s: shipped().entry(name, key, s).thresholds[s] for s in ("local", "grid")}
    rng = np.random.default_rng([seed, ratio, len(name)])
    pool = [img for _, img in benign_corpus("holdout", side, seed=seed)]
    pairs = [tuple(rng.choice(len(pool), 2, replace=False)) for _ in range(attacks)]
    start = time.perf_counter()

    def flags(img: np.ndarray) -> tuple[int, int]:
        g = grid_contrast(img, resizer, size)
        return int(g.local_ratio > cut["local"]), int(g.global_ratio > cut["grid"])  # type: ignore[operator]

    def case(i: int, j: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int, int]]:
        source = pool[i]
        target = cv2.resize(pool[j], size[::-1], interpolation=cv2.INTER_AREA)
        return source, resizer(source, size), target, (0, 0, OUTPUT, OUTPUT) if k == 1 else _box(k, rng)

    out: dict[str, Any] = {"name": name, "ratio": ratio, "attacks": attacks, "cut": cut}
    regions = []
    for k in REGIONS:
        hits = np.zeros(2)
        for i, j in pairs:
            source, small, target, box = case(i, j, k)
            hits += flags(craft_attack(source, _goal(small, target, box, 1.0), resizer).attack)
        regions.append((k, *(hits / attacks)))
    out["regions"] = regions
    blends = []
    for k in (1, 16):
        for alpha in ALPHAS:
            hits, close, look = np.zeros(2), [], []
            for i, j in pairs:
                source, small, target, box = case(i, j, k)
                c = craft_attack(source, _goal(small, target, box, alpha), resizer)
                hits += flags(c.attack)
                top, left, h, w = box
                close.append(psnr(resizer(c.attack, size)[top:top + h, left:left + w],
                                  target[top:top + h, left:left + w]))
                look.append(c.psnr_source)
            blends.append((k, alpha, *(hits / attacks), float(np.mean(close)), float(np.mean(look))))
    out["blends"] = blends
    decoys = []
    n_shifts = len(shifts(read_grid(operator_for(resizer, (side, side), size)),
                          operator_for(resizer, (side, side), size)))
    for k in (1, 16):
        for d in sorted({min(d, n_shifts) for d in DECOYS}):
            hits, look, local_look, err = np.zeros(2), [], [], []
            for i, j in pairs:
                source, small, target, box = case(i, j, k)
                a = _decoy(craft_attack(source, _goal(small, target, box, 1.0), resizer).attack, source, resizer,
                           size, d)
                hits += flags(a)
                look.append(psnr(a, source))
                local_look.append(_region_psnr(a, source, box, ratio))
                err.append(float(np.abs(resizer(a, size).astype(float) - _goal(small, target, box, 1.0)).max()))
            decoys.append((k, d, *(hits / attacks), float(np.mean(look)), float(np.mean(local_look)), max(err)))
    out["decoys"], out["shifts"] = decoys, n_shifts
    oracle = []
    for k in (1, 16):
        alphas, close, base = [], [], []
        for i, j in pairs:
            source, small, target, box = case(i, j, k)
            lo, hi = 1.0, 1.0
            if flags(craft_attack(source, _goal(small, target, box, 1.0), resizer).attack)[0]:
                lo = 0.0
                for _ in range(7):
                    mid = (lo + hi) / 2
                    caught = flags(craft_attack(source, _goal(small, target, box, mid), resizer).attack)[0]
                    lo, hi = (lo, mid) if caught else (mid, hi)
            c = craft_attack(source, _goal(small, target, box, lo), resizer)
            top, left, h, w = box
            alphas.append(lo)
            close.append(psnr(resizer(c.attack, size)[top:top + h, left:left + w], target[top:top + h, left:left + w]))
            base.append(psnr(small[top:top + h, left:left + w], target[top:top + h, left:left + w]))
        oracle.append((k, float(np.median(alphas)), float(np.mean(np.array(alphas) == 1.0)), float(np.mean(close)),
                       float(np.mean(base))))
    out["oracle"], out["seconds"] = oracle, time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="opencv-linear:8,opencv-nearest:4")
    parser.add_argument("--attacks", type=int, default=50, help="attacks per point")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    jobs = [(c.split(":")[0], int(c.split(":")[1]), args.attacks, args.seed) for c in args.configs.split(",")]
    print(f"shipped calibration: {shipped().command}\n{args.attacks} attacks per point; load {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    with Pool(args.jobs) as pool:
        results = pool.map(run, jobs, chunksize=1)
    for r in results:
        print(f"\n{r['name']} ratio {r['ratio']} ({OUTPUT * r['ratio']} -> {OUTPUT} px); thresholds local "
              f"{r['cut']['local']:.4g}, grid {r['cut']['grid']:.4g}; {r['seconds']:.0f} s")
        print("  region of the input   detected: local    grid")
        for k, local, glob in r["regions"]:
            print(f"    1/{k:<4d}                       {100 * local:5.1f}%  {100 * glob:5.1f}%")
        print("  blend strength   region  alpha  PSNR(out, T)  PSNR(A, S)   detected: local    grid")
        for k, alpha, local, glob, close, look in r["blends"]:
            print(f"                   1/{k:<4d} {alpha:5.2f}  {close:8.1f} dB  {look:7.1f} dB"
                  f"              {100 * local:5.1f}%  {100 * glob:5.1f}%")
        print(f"  decoy grids (of {r['shifts']})   region  decoys  PSNR(A, S) image / region  max|out - T|  "
              "detected: local    grid")
        for k, d, local, glob, look, local_look, err in r["decoys"]:
            print(f"                          1/{k:<4d} {d:4d}    {look:7.1f} / {local_look:5.1f} dB     {err:6.1f}"
                  f"                {100 * local:5.1f}%  {100 * glob:5.1f}%")
        print("  oracle attacker (strongest undetected blend)  region  median alpha  undetected at alpha 1  "
              "PSNR(out, T)  vs no attack")
        for k, alpha, free, close, base in r["oracle"]:
            print(f"                                                 1/{k:<4d} {alpha:8.3f}      {100 * free:10.1f}%"
                  f"        {close:7.1f} dB  {base:7.1f} dB")
    print(f"\n{time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
