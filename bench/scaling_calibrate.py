"""Write the shipped calibration table (poisonlab/scaling/calibration.json) from the offline benign corpus.

For every ratio, the ``calibration`` split of ``poisonlab.scaling.corpus`` (320 images of 64*ratio px:
crops, JPEG, noise, sharpening, textures, bicubic-resized and upscaled photos) is scored by every
installed resizer that is open to an image-scaling attack at that ratio, and each score's threshold is
set at --fpr. The held-out false-positive rate of the table is measured by bench/scaling_detection.py on
the disjoint ``holdout`` split.

    nice -n 10 python bench/scaling_calibrate.py [--ratios 2,3,4,6,8] [--fpr 0.01] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import time
from multiprocessing import Pool
from pathlib import Path

from poisonlab.scaling.calibration import SHIPPED, Calibration, Entry
from poisonlab.scaling.corpus import COUNTS, SPLITS, benign_corpus
from poisonlab.scaling.defenses import calibrate, open_to_attack
from poisonlab.scaling.resize import RESIZERS

OUTPUT = 64


def _entry(job: tuple[str, int, float, int]) -> Entry:
    name, ratio, fpr, seed = job
    images = [img for _, img in benign_corpus("calibration", OUTPUT * ratio, seed=seed)]
    [entry] = calibrate(images, RESIZERS.get(name), (OUTPUT, OUTPUT), fpr)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="2,3,4,6,8")
    parser.add_argument("--fpr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=SHIPPED)
    args = parser.parse_args()
    ratios = [int(r) for r in args.ratios.split(",")]
    jobs = [(name, r, args.fpr, args.seed) for r in ratios for name in RESIZERS.names()
            if RESIZERS.get(name).available()
            and open_to_attack(RESIZERS.get(name), (OUTPUT * r, OUTPUT * r), (OUTPUT, OUTPUT))]
    start = time.perf_counter()
    print(f"{len(jobs)} (resizer, ratio) entries on {args.jobs} processes; load {os.getloadavg()[0]:.1f}")
    with Pool(args.jobs) as pool:
        entries = pool.map(_entry, jobs, chunksize=1)
    for e in entries:
        cells = "  ".join(f"{k} {'-' if v is None else f'{v:.4g}'}" for k, v in e.thresholds.items())
        print(f"{e.resizer:16s} ratio {e.ratio}  {e.images} images  {cells}")
    skipped = [n for n in RESIZERS.names() if not RESIZERS.get(n).available()]
    command = (f"python bench/scaling_calibrate.py --ratios {args.ratios} --fpr {args.fpr:g} --seed {args.seed} "
               f"--jobs {args.jobs} --out {os.path.relpath(args.out)}")
    corpus = {"split": "calibration", "photographs": list(SPLITS["calibration"][0]),
              "textures": list(SPLITS["calibration"][1]), "variants": COUNTS, "seed": args.seed,
              "sizes": {str(r): f"{OUTPUT * r}x{OUTPUT * r}" for r in ratios},
              "not_installed": skipped}
    Calibration(args.fpr, tuple(entries), "shipped", str(args.out), command, corpus).write(args.out)
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
