"""The run folder: every file written atomically, so an interrupted run leaves no half-written result."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from poisonlab.core import PoisonlabError

REPORT_SCHEMA = "poisonlab.report/1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def make_run_dir(out: Path | None, kind: str, root: Path = Path("runs")) -> Path:
    """``out`` if given (created; refused when it holds a report), else ``root/<kind>-<timestamp>``."""
    path = out if out is not None else root / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (path / "report.json").exists():
        raise PoisonlabError(f"{path}: already holds a report.json; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PoisonlabError(f"{path}: cannot create the run folder ({e.strerror})") from None
    return path


def environment() -> dict[str, Any]:
    """Versions and machine facts that a reader needs to reproduce a figure."""
    versions: dict[str, str | None] = {}
    for pkg in ("poisonlab", "torch", "numpy", "scipy", "scikit-learn", "opencv-python-headless", "pillow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
    }


def report(kind: str, config: dict[str, Any], metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A report.json body in the one versioned schema."""
    return {
        "schema": REPORT_SCHEMA,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "metrics": metrics,
        "environment": environment(),
        **extra,
    }


def finish_run(out: Path, experiment: str, config: Any, metrics: dict[str, Any], timings: dict[str, float],
               files: list[str]) -> dict[str, Any]:
    """Write ``config.json`` and then, last, ``report.json`` of a finished run of ``experiment``; return the report.

    ``config`` is the experiment's config dataclass; report.json coming last means a folder that holds one
    holds a finished run.
    """
    fields = dataclasses.asdict(config)
    atomic_write_json(out / "config.json", {"experiment": experiment, **fields})
    body = report(experiment, fields, metrics, timings=timings, files=[*files, "config.json"])
    atomic_write_json(out / "report.json", body)
    return body
