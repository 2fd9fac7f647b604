"""Scaling-attack defenses on real photographs: detection AUROC, reconstruction, robust scaling, benign cost.

Benign images are random 256x256 crops (with flips) of the offline photographs in scikit-image and
scikit-learn; attack images hide another crop's downscale in a crop with the non-adaptive strong attack
(eps = 1). For every ratio it prints the AUROC of each detection score, the score thresholds that
separate the sets, and for the selective median / random filters and area scaling the PSNR of what the
model gets vs the attacker's target (attack images) and vs the undefended output (benign images).

    nice -n 10 python bench/scaling_defenses.py [--resizer opencv-linear] [--n 24] [--ratios 2,4,8]
"""

from __future__ import annotations

import argparse
import os

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

from poisonlab.scaling import RESIZERS, craft_attack, psnr
from poisonlab.scaling.audit import photographs
from poisonlab.scaling.defenses import DETECTORS, safe_resize, selective_median, selective_random


def crops(n: int, size: int, seed: int) -> list[np.ndarray]:
    """``n`` random size x size uint8 RGB crops of the offline photographs."""
    rng = np.random.default_rng(seed)
    photos = list(photographs().values())
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        crop = img[top:top + size, left:left + size, :3]
        out.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resizer", default="opencv-linear")
    parser.add_argument("--n", type=int, default=24, help="benign and attack images per ratio")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--ratios", default="2,4,8")
    args = parser.parse_args()
    resizer = RESIZERS.get(args.resizer)
    print(f"{args.resizer}, {args.n} benign + {args.n} attack {args.size}px crops per ratio; "
          f"load {os.getloadavg()[0]:.1f}")
    for ratio in (int(k) for k in args.ratios.split(",")):
        size = (args.size // ratio, args.size // ratio)
        benign = crops(args.n, args.size, seed=ratio)
        sources, donors = crops(args.n, args.size, seed=100 + ratio), crops(args.n, args.size, seed=200 + ratio)
        targets = [cv2.resize(d, size[::-1], interpolation=cv2.INTER_AREA) for d in donors]
        crafted = [craft_attack(s, t, resizer, eps=1.0) for s, t in zip(sources, targets, strict=True)]
        attacks = [c.attack for c in crafted]
        mean_psnr = np.mean([c.psnr_source for c in crafted])
        print(f"\nratio {ratio} ({args.size} -> {size[0]}): attack PSNR(A,S) {mean_psnr:.1f} dB, "
              f"max|resize(A)-T| {max(c.max_target_error for c in crafted):.1f}")
        for name, score in DETECTORS.items():
            b = np.array([score(x, resizer, size) for x in benign])
            a = np.array([score(x, resizer, size) for x in attacks])
            if not np.isfinite(np.r_[b, a]).all():
                print(f"  detect {name:15s} does not apply at this ratio ({args.resizer} reads every pixel)")
                continue
            auroc = roc_auc_score(np.r_[np.zeros(len(b)), np.ones(len(a))], np.r_[b, a])
            print(f"  detect {name:15s} AUROC {auroc:.4f}  benign max {b.max():8.1f}  attack min {a.min():8.1f}")
        base = np.mean([psnr(resizer(x, size), t) for x, t in zip(benign, targets, strict=True)])
        print(f"  undefended: PSNR(out, T) attack {np.mean([c.psnr_target for c in crafted]):.1f} dB; "
              f"a benign image vs the same targets {base:.1f} dB")
        defenses = {"selective-median": lambda x, hw=size: resizer(selective_median(x, resizer, hw), hw),
                    "selective-random": lambda x, hw=size: resizer(selective_random(x, resizer, hw), hw),
                    "area scaling": lambda x, hw=size: safe_resize(x, hw)}
        for name, defended in defenses.items():
            to_target = np.mean([psnr(defended(x), t) for x, t in zip(attacks, targets, strict=True)])
            to_source = np.mean([psnr(defended(x), resizer(s, size)) for x, s in zip(attacks, sources, strict=True)])
            cost = np.mean([psnr(defended(x), resizer(x, size)) for x in benign])
            print(f"  {name:16s} attack PSNR(out,T) {to_target:5.1f} dB, PSNR(out, resize(S)) {to_source:5.1f} dB; "
                  f"benign PSNR(out, undefended out) {cost:5.1f} dB")
    print(f"\nload {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
