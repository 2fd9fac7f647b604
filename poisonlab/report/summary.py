"""A sweep folder's summary: per cell its metrics, per setting (every axis but seed) each metric's mean ± std."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from poisonlab.core import PoisonlabError
from poisonlab.report.store import LOCK_FILE, REPORT_FILE, atomic_write_bytes, atomic_write_json, read_report

SWEEP_SCHEMA = "poisonlab.sweep/1"
PLAN_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"
SOURCE_FILE = "sweep.toml"


def flatten(metrics: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every numeric scalar of a nested metrics dict, as (dotted key, value); lists and text are left out."""
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}{key}", float(value)


def _mean_std(values: Iterable[float]) -> dict[str, Any]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def check_sweep_folder(out: Path, cells: list[dict[str, Any]]) -> None:
    """Refuse ``out`` unless it is absent, empty, or a sweep folder of these very ``cells``; reads, never writes.

    ``cells`` are the plan's cells as plain data (id, overrides, resolved config); a folder whose plan
    lists other cells is refused, so a resumed sweep never mixes two grids.
    """
    if out.exists() and not out.is_dir():
        raise PoisonlabError(f"{out}: not a folder; expected a sweep folder (or a path to create one)")
    existing = out / PLAN_FILE
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if out.is_dir() else []
    if others and not existing.exists():
        raise PoisonlabError(f"{out}: holds {len(others)} file(s) ({', '.join(others[:3])}) but no sweep; choose "
                             "another --out")
    if existing.exists():
        try:
            old = json.loads(existing.read_text())
        except (OSError, ValueError, RecursionError):
            old = None
        if not isinstance(old, dict) or old.get("cells") != json.loads(json.dumps(cells)):
            raise PoisonlabError(f"{out}: holds a different sweep; choose another --out or delete the folder")


def open_sweep_folder(out: Path, name: str, axes: dict[str, list[Any]], cells: list[dict[str, Any]],
                      source: str) -> None:
    """Create the sweep folder (plan and source config), or check that an existing one holds this very sweep."""
    check_sweep_folder(out, cells)
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PoisonlabError(f"{out}: cannot create the sweep folder ({e.strerror})") from None
    atomic_write_json(out / PLAN_FILE, {"schema": SWEEP_SCHEMA, "name": name, "axes": axes, "cells": cells})
    atomic_write_bytes(out / SOURCE_FILE, source.encode())


def aggregate(out: Path) -> dict[str, Any]:
    """Per cell its metrics, and per setting (all axes but ``seed``) each metric's mean ± sample std over seeds."""
    plan_body = json.loads((out / PLAN_FILE).read_text())
    cells: list[dict[str, Any]] = []
    groups: dict[str, dict[str, Any]] = {}
    for cell in plan_body["cells"]:
        entry = {"id": cell["id"], "overrides": cell["overrides"], "status": "pending", "metrics": {}}
        body = read_report(out / "cells" / cell["id"] / REPORT_FILE)
        if body is not None:
            entry.update(status="done", metrics=dict(flatten(body.get("metrics") or {})))
        cells.append(entry)
        setting = {k: v for k, v in cell["overrides"].items() if k != "seed"}
        group = groups.setdefault(json.dumps(setting, sort_keys=True), {"overrides": setting, "cells": [], "seeds": []})
        group["cells"].append(entry)
        group["seeds"].append(cell["config"].get("seed"))
    out_groups = []
    for group in groups.values():
        done = [c for c in group.pop("cells") if c["status"] == "done"]
        keys = sorted({k for c in done for k in c["metrics"]})
        group["done"] = len(done)
        group["metrics"] = {k: _mean_std(c["metrics"][k] for c in done if k in c["metrics"]) for k in keys}
        out_groups.append(group)
    return {"schema": SWEEP_SCHEMA, "name": plan_body["name"], "axes": plan_body["axes"], "total": len(cells),
            "done": sum(c["status"] == "done" for c in cells), "cells": cells, "groups": out_groups}
