"""Start-up cost of the command line: ``poisonlab --help`` against the floor of importing typer and rich.

The issue's target: ``poisonlab --help`` wall time at most 1.5x ``python -c "import typer, rich"``, measured
side by side (alternating runs, median of each), so the command list never pays for torch, scikit-learn or
matplotlib. A second floor adds ``typer.rich_utils``, the help renderer any typer app with rich help loads
(rich.markdown, markdown_it, rich.traceback). Also times ``poisonlab list`` (which loads every registry,
so torch) for reference.

Example:
    python bench/startup.py --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "floor: import typer, rich": [sys.executable, "-c", "import typer, rich"],
    "typer's rich help renderer": [sys.executable, "-c", "import typer, rich, typer.rich_utils"],
    "poisonlab --help": [sys.executable, "-m", "poisonlab", "--help"],
    "poisonlab list": [sys.executable, "-m", "poisonlab", "list"],
}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, command in CASES.items():
            times[name].append(wall(command))
    floor = statistics.median(times["floor: import typer, rich"])
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:28s} median {median:6.3f} s  ({median / floor:4.2f}x the floor)")
    ratio = statistics.median(times["poisonlab --help"]) / floor
    print(f"poisonlab --help / floor: {ratio:.2f} (target <= 1.5): {'met' if ratio <= 1.5 else 'missed'}")


if __name__ == "__main__":
    main()
