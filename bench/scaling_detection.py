"""Scaling-attack detection at the shipped calibration: held-out false positives, whole-image and region attacks.

For every (resizer, ratio) it scores the ``holdout`` split of the offline corpus (photos disjoint from the
ones the shipped thresholds were set on; 320 images of 64*ratio px: crops, JPEG q75/q95, noise sigma
5/15, sharpening, textures, bicubic-resized, upscaled from 64 px) and prints the false-positive rate of
every score at its shipped threshold, with the variants that were flagged. Then it crafts strong attacks
(eps = 1, exact after the library's own uint8 resize) on held-out images, hiding another held-out
image in the whole output or in a random square region of 1/4, 1/16 or 1/64 of it, and prints the share
the default ``local`` score (and the global ``grid`` score) flags.

    nice -n 10 python bench/scaling_detection.py [--configs opencv-linear:8,opencv-nearest:4] [--attacks 100]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from multiprocessing import Pool
from typing import Any

import cv2
import numpy as np

from poisonlab.scaling import RESIZERS, craft_attack, craft_region, psnr
from poisonlab.scaling.calibration import SCORES, ratio_key, shipped
from poisonlab.scaling.corpus import benign_corpus
from poisonlab.scaling.defenses import score_all
from poisonlab.scaling.grid import grid_contrast

OUTPUT = 64
REGIONS = (1, 4, 16, 64)
DEFAULT = ",".join(f"{lib}-{alg}:{r}" for r in (4, 8) for lib, alg in (
    ("opencv", "nearest"), ("opencv", "linear"), ("opencv", "cubic"), ("pillow", "nearest"), ("torch", "nearest"),
    ("torch", "bilinear"), ("torch", "bicubic")))


def thresholds(name: str, ratio: int) -> dict[str, float | None]:
    table = shipped()
    return {s: table.entry(name, ratio, s).thresholds[s] for s in SCORES
            if any(e.resizer == name and e.thresholds.get(s) is not None for e in table.entries)}


def run(job: tuple[str, int, int, int]) -> dict[str, Any]:
    name, ratio, attacks, seed = job
    resizer, size, side = RESIZERS.get(name), (OUTPUT, OUTPUT), OUTPUT * ratio
    cut = thresholds(name, ratio_key((side, side), size))
    start = time.perf_counter()
    flagged: dict[str, Counter[str]] = {s: Counter() for s in cut}
    benign = list(benign_corpus("holdout", side, seed=seed))
    for kind, img in benign:
        scores = score_all(img, resizer, size)
        for s, t in cut.items():
            flagged[s][kind] += int(t is not None and scores[s] > t)
    benign_s = time.perf_counter() - start
    rng = np.random.default_rng([seed, ratio, len(name)])
    pool = [img for _, img in benign_corpus("holdout", side, seed=seed + 1)]
    detected = {k: [0, 0] for k in REGIONS}
    psnr_a: dict[int, list[float]] = {k: [] for k in REGIONS}
    missed: dict[int, list[float]] = {k: [] for k in REGIONS}
    errors: list[float] = []
    for _ in range(attacks):
        s_idx, t_idx = rng.choice(len(pool), 2, replace=False)
        source = pool[s_idx]
        target = cv2.resize(pool[t_idx], size[::-1], interpolation=cv2.INTER_AREA)
        for k in REGIONS:
            h = round(OUTPUT / np.sqrt(k))
            top, left = (int(v) for v in rng.integers(0, OUTPUT - h + 1, 2)) if k > 1 else (0, 0)
            c = craft_region(source, target, resizer, (top, left, h, h)) if k > 1 else craft_attack(
                source, target, resizer)
            g = grid_contrast(c.attack, resizer, size)
            caught = g.local_ratio > cut["local"]
            detected[k][0] += int(caught)
            detected[k][1] += int(g.global_ratio > cut["grid"])
            psnr_a[k].append(c.psnr_source)
            errors.append(c.max_target_error)
            if not caught:  # how far the attack moved the model's input: PSNR(resize(S), T) in the region
                missed[k].append(psnr(resizer(source, size)[top:top + h, left:left + h],
                                      target[top:top + h, left:left + h]))
    return {"name": name, "ratio": ratio, "n": len(benign), "flagged": flagged, "cut": cut, "detected": detected,
            "psnr": {k: float(np.mean(v)) for k, v in psnr_a.items()}, "max_error": max(errors), "missed": missed,
            "attacks": attacks, "benign_s": benign_s, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT, help="RESIZER:RATIO,... (source 64*RATIO px -> 64 px)")
    parser.add_argument("--attacks", type=int, default=100, help="attacks per region size and config")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    jobs = [(c.split(":")[0], int(c.split(":")[1]), args.attacks, args.seed) for c in args.configs.split(",")]
    print(f"shipped calibration: {shipped().command}\nheld-out corpus seed {args.seed}; {args.attacks} attacks per "
          f"region size; load {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    with Pool(args.jobs) as pool:
        results = pool.map(run, jobs, chunksize=1)
    totals: Counter[str] = Counter()
    for r in results:
        n = r["n"]
        print(f"\n{r['name']} ratio {r['ratio']} ({OUTPUT * r['ratio']} -> {OUTPUT} px), {n} held-out benign images "
              f"({r['benign_s']:.0f} s), {r['seconds']:.0f} s in all")
        for s, counts in r["flagged"].items():
            total = sum(counts.values())
            totals[s] += total
            which = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "none"
            print(f"  FPR {s:15s} {total:3d}/{n} = {100 * total / n:5.2f}%  (threshold {r['cut'][s]:.4g}; "
                  f"flagged: {which})")
        for k, (local, glob) in r["detected"].items():
            label = "whole image" if k == 1 else f"region 1/{k}"
            print(f"  attack {label:12s} local {local:3d}/{r['attacks']} = {100 * local / r['attacks']:5.1f}%   "
                  f"grid {glob:3d}/{r['attacks']} = {100 * glob / r['attacks']:5.1f}%   "
                  f"PSNR(A, S) {r['psnr'][k]:.1f} dB" + ("; missed ones had PSNR(resize(S), T) "
                                                          + ", ".join(f"{v:.1f}" for v in r["missed"][k]) + " dB"
                                                          if r["missed"][k] else ""))
        print(f"  max |resize(A) - T| over all attacks: {r['max_error']:.2f}")
    n_all = sum(r["n"] for r in results)
    print(f"\nheld-out FPR over {len(results)} configs ({n_all} scored images): "
          + ", ".join(f"{s} {100 * v / n_all:.2f}%" for s, v in totals.items()))
    caught = {k: sum(r["detected"][k][0] for r in results) for k in REGIONS}
    n_attacks = sum(r["attacks"] for r in results)
    print("local detection over all configs: " + ", ".join(
        f"{'whole image' if k == 1 else f'region 1/{k}'} {caught[k]}/{n_attacks} = {100 * caught[k] / n_attacks:.1f}%"
        f" (worst config {min(100 * r['detected'][k][0] / r['attacks'] for r in results):.1f}%)" for k in REGIONS))
    print(f"{time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
