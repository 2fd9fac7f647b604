"""Benchmark: the default `poisonlab run badnets` end to end on full MNIST, timed as a newcomer runs it.

Prints wall time (process start to exit, both models trained), CA and ASR of both models, for
all-to-one (target 8, the defaults) and all-to-all, next to the targets of issue 2. All-to-all
asks every class to move to the next one, ten mappings instead of one, so it runs at 10% poison and
3 epochs (at the defaults, 1% and 2 epochs, it reached only about 21% ASR here).

    python bench/badnets_mnist.py               # both modes
    python bench/badnets_mnist.py --mode all-to-one
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time

EXTRA = {"all-to-one": [], "all-to-all": ["--rate", "0.1", "--epochs", "3"]}


def run(mode: str) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["poisonlab", "run", "badnets", "--mode", mode, *EXTRA[mode], "--json", "--out", os.path.join(tmp, "run")]
        start = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return time.perf_counter() - start, json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["all-to-one", "all-to-all", "both"], default="both")
    args = parser.parse_args()
    modes = ["all-to-one", "all-to-all"] if args.mode == "both" else [args.mode]
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'mode':<11} {'wall s':>7} {'CA clean':>9} {'CA bd':>7} {'ASR clean':>10} {'ASR bd':>7}  targets")
    for mode in modes:
        wall, body = run(mode)
        m = body["metrics"]
        ca_c, ca_b = m["clean"]["clean_accuracy"], m["backdoored"]["clean_accuracy"]
        asr_c, asr_b = m["clean"]["attack_success_rate"], m["backdoored"]["attack_success_rate"]
        asr_goal = 0.995 if mode == "all-to-one" else 0.98
        checks = {
            "CA>=99.0%": min(ca_c, ca_b) >= 0.99,
            "CA gap<=0.3": abs(ca_c - ca_b) <= 0.003,
            f"ASR>={100 * asr_goal:g}%": asr_b >= asr_goal,
        }
        if mode == "all-to-one":  # the 90 s target is for the default run
            checks["wall<=90s"] = wall <= 90
        verdict = " ".join(f"{k}:{'ok' if v else 'MISSED'}" for k, v in checks.items())
        figures = f"{100 * ca_c:8.2f}% {100 * ca_b:6.2f}% {100 * asr_c:9.2f}% {100 * asr_b:6.2f}%"
        print(f"{mode:<11} {wall:7.1f} {figures}  {verdict}")


if __name__ == "__main__":
    main()
