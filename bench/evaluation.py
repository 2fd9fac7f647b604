"""``run badnets``: the evaluation stage against the forward-pass floor, and the whole run against its stages.

The evaluation floor is plain ``model(batch)`` over the same images (clean and triggered test sets, both
models) at the fastest batch size of a sweep, timed here; the run's own ``evaluate_seconds`` should be at
most 1.3x that. The whole-run floor is the run's own data and training stages plus that evaluation floor;
``total_seconds`` should be at most 1.1x (the rest is saving weights, the figure and the report).
Also prints ``predict``'s time per batch size, which sets its default.

Example:
    python bench/evaluation.py                 # the README's run (60,000 MNIST images, 2 epochs)
    python bench/evaluation.py --train-size 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from poisonlab.experiment.pipeline import prepare
from poisonlab.experiment.run import execute, resolve
from poisonlab.models import load_run_model
from poisonlab.training import predict

BATCHES = (128, 256, 512, 1024, 2048)


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def forward_floor(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, int]:
    """(seconds, batch size) of the fastest plain batched forward pass over ``x``."""
    x = x.contiguous(memory_format=torch.channels_last)
    out = []
    for bs in BATCHES:
        out.append((best_of(lambda bs=bs: [model(x[i : i + bs]) for i in range(0, len(x), bs)]), bs))
    return min(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=None)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    raw = {"experiment": "badnets", "train_size": args.train_size} if args.train_size else {"experiment": "badnets"}
    resolved = resolve(raw)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        body = execute(resolved, out, progress=False)
        t = body["timings"]
        data = prepare(resolved.config)
        floor = 0.0
        for name in ("clean", "backdoored"):
            model = load_run_model(out, name)[0]
            for label, images in (("clean test", data.test.x), ("triggered test", data.triggered.x)):
                seconds, bs = forward_floor(model, images)
                floor += seconds
                print(f"floor {name:10s} {label:15s} {len(images):6d} images: {seconds:.3f} s at batch {bs}")
            if name == "clean":
                for bs in BATCHES:
                    seconds = best_of(lambda bs=bs, m=model: predict(m, data.test.x, bs))
                    print(f"  predict batch {bs:5d}: {seconds:.3f} s")
    stages = t["data_seconds"] + t["train_clean_seconds"] + t["train_backdoored_seconds"]
    print(f"evaluate stage {t['evaluate_seconds']:.2f} s vs forward floor {floor:.2f} s: "
          f"{t['evaluate_seconds'] / floor:.2f}x (target <= 1.3x)")
    print(f"whole run {t['total_seconds']:.2f} s vs data + 2 trainings + evaluation floor {stages + floor:.2f} s: "
          f"{t['total_seconds'] / (stages + floor):.2f}x (target <= 1.1x)")


if __name__ == "__main__":
    main()
