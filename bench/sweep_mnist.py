"""Benchmark: the 3 rates x 3 seeds BadNets MNIST sweep end to end, resumable, with wall times per cell.

    nice -n 10 python bench/sweep_mnist.py [--config examples/badnets-mnist-sweep.toml] [--out DIR]

Prints the machine load before and after (timings taken under load are not clean timings), each
cell's run time from its report.json, and the mean ± std table. Re-running resumes: finished cells
are skipped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from poisonlab.cli.common import print_tables
from poisonlab.experiment.sweep import plan, run_sweep
from poisonlab.report.tables import sweep_tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("examples/badnets-mnist-sweep.toml"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-sweep-mnist"))
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()

    p = plan(args.config)
    print(f"load average before: {os.getloadavg()}")
    t0 = time.perf_counter()
    summary = run_sweep(p, args.out, jobs=args.jobs,
                        on_cell=lambda cell, error: print(f"  {cell.id}: {'done' if error is None else error}"))
    wall = time.perf_counter() - t0
    print(f"load average after: {os.getloadavg()}")
    for cell in p.cells:
        body = json.loads((args.out / "cells" / cell.id / "report.json").read_text())
        print(f"  {cell.id}: {body['timings']['total_seconds']:.1f} s")
    print_tables(sweep_tables(summary))
    print(f"ran {summary['ran']} cells, skipped {summary['skipped']} already done, {wall:.1f} s wall")


if __name__ == "__main__":
    main()
