"""Peak memory of ``poisonlab train`` and ``poisonlab scan data`` on a generated folder of 100,000 RGB PNGs.

The folder (64 x 64 px by default, 10 classes) is generated once and kept: each class is a coloured disc on
noise, and 1% of the rows are images of other classes with a 6 x 6 checkerboard in the corner filed under
class 0 (dirty-label poison planted by this script, not by poisonlab). Both commands run as real processes;
the bench samples the proportional set size (PSS, shared pages divided among the processes sharing them)
of each command's whole process tree, its DataLoader workers included, four times a second, and reads the
main process's own peak RSS from the kernel. In memory as float32 the images alone would take
N x 3 x H x W x 4 bytes (4.9 GB for 100,000 at 64 px); the target is a scan peak under 1.5 GB.

Example:
    python bench/stream_memory.py                          # 100,000 images in $TMPDIR/poisonlab-stream-100000-64
    python bench/stream_memory.py --images 5000 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

CLASSES = 10
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [0, 0, 128]], np.uint8)


def _image(label: int, size: int, rng: np.random.Generator, stamp: bool) -> np.ndarray:
    img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
    r = int(rng.integers(size // 6, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    cv2.circle(img, (cx, cy), r, tuple(int(c) for c in PALETTE[label]), -1)
    if stamp:
        cells = (np.indices((6, 6)).sum(0) % 2 * 255).astype(np.uint8)
        img[-7:-1, -7:-1] = cells[..., None]
    return img


def _write(job: tuple[str, int, int, int, bool]) -> None:
    path, label, size, seed, stamp = job
    cv2.imwrite(path, _image(label, size, np.random.default_rng(seed), stamp)[..., ::-1])


def make_folder(root: Path, images: int, size: int) -> list[int]:
    """The folder (reused when complete) and its poisoned rows in poisonlab's row order."""
    truth_file = root / "poisoned_rows.txt"
    if truth_file.exists():
        return [int(v) for v in truth_file.read_text().split()]
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    per_class, poison = images // CLASSES, images // 100
    jobs: list[tuple[str, int, int, int, bool]] = []
    for k in range(CLASSES):
        folder = root / "data" / f"class{k}"
        folder.mkdir(parents=True)
        names = rng.permutation(per_class + (poison if k == 0 else 0))
        for j, name in enumerate(names):
            stamped = k == 0 and j >= per_class
            label = int(rng.integers(1, CLASSES)) if stamped else k
            jobs.append((str(folder / f"{name:06d}.png"), label, size, int(rng.integers(2**31)), stamped))
    with Pool(os.cpu_count()) as pool:
        pool.map(_write, jobs, chunksize=500)
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][0])  # poisonlab's rows: class folders, then files, sorted
    truth = [row for row, i in enumerate(order) if jobs[i][4]]
    (root / "poisoned_rows.txt").write_text(" ".join(map(str, truth)))
    return truth


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def _pss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def measure(cmd: list[str]) -> dict[str, float]:
    """Wall seconds, exit code, peak sampled PSS of the process tree and the main process's peak RSS (MB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _pss_mb(proc.pid))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    sampler.join()
    code = os.waitstatus_to_exitcode(status)
    print(output[-1500:])
    return {"seconds": seconds, "exit": code, "tree_pss_mb": peak[0], "main_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--root", type=Path, default=None, help="where the folder is generated (kept for reruns)")
    args = p.parse_args()
    root = args.root or Path(tempfile.gettempdir()) / f"poisonlab-stream-{args.images}-{args.size}"
    t0 = time.perf_counter()
    truth = make_folder(root, args.images, args.size)
    files = sum(1 for _ in (root / "data").glob("*/*.png"))
    print(f"folder {root / 'data'}: {files:,} PNGs of {args.size}x{args.size} RGB, {len(truth):,} poisoned "
          f"({time.perf_counter() - t0:.0f} s to make or find); as float32 in memory: "
          f"{files * 3 * args.size**2 * 4 / 2**30:.2f} GiB")
    exe = [sys.executable, "-m", "poisonlab"]
    with tempfile.TemporaryDirectory() as tmp:
        run, scan = Path(tmp) / "run", Path(tmp) / "scan"
        trained = measure([*exe, "train", "--dataset", f"folder:{root / 'data'}", "--model", args.model,
                           "--epochs", str(args.epochs), "--out", str(run), "--quiet"])
        scanned = measure([*exe, "scan", "data", "--run", str(run), "--truth", str(root / "poisoned_rows.txt"),
                           "--out", str(scan)])
        report = json.loads((scan / "report.json").read_text()) if (scan / "report.json").exists() else {}
    for name, m in (("train", trained), ("scan data", scanned)):
        print(f"{name:9s}: {m['seconds']:7.1f} s, exit {m['exit']}, peak PSS of the process tree "
              f"{m['tree_pss_mb']:7.0f} MB, peak RSS of the main process {m['main_rss_mb']:7.0f} MB")
    detection = report.get("detection", {})
    print(f"scan data: {report.get('flagged', '?')} flagged of {report.get('samples', '?')}; "
          f"precision {detection.get('precision', float('nan')):.3f} recall {detection.get('recall', float('nan')):.3f}"
          f" AUROC {detection.get('auroc', float('nan')):.3f}")
    print(f"scan data peak (tree PSS) {scanned['tree_pss_mb'] / 1024:.2f} GB (target <= 1.5 GB)")


if __name__ == "__main__":
    main()
