"""Sweeps: a config whose fields hold lists, expanded into a grid of runs, resumable, aggregated as mean ± std.

Each cell is an ordinary run folder under ``SWEEP/cells/<cell id>``; a cell counts as done when its
``report.json`` (written last, atomically) exists, so a killed sweep restarted with the same command
skips the finished cells and redoes only the interrupted ones. Cells run in this process (one job),
in a local process pool (``jobs`` > 1), or as Ray tasks (``backend="ray"``): the grid and the
bookkeeping stay here, the scheduling belongs to the pool or to Ray. On a multi-node Ray cluster
the sweep folder must be on storage every node sees (cells write their run folders themselves).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from poisonlab.core import PoisonlabError
from poisonlab.experiment.config import ExperimentConfig, expand, read_toml, resolve
from poisonlab.experiment.rundir import atomic_write_bytes, atomic_write_json
from poisonlab.experiment.runner import REPORT_FILE, check_runnable, is_complete, run_experiment

SWEEP_SCHEMA = "poisonlab.sweep/1"
PLAN_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"
SOURCE_FILE = "sweep.toml"
Backend = Literal["local", "ray"]


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its folder name, the values it overrides, its resolved config."""

    id: str
    overrides: dict[str, Any]
    config: ExperimentConfig


@dataclass(frozen=True)
class SweepPlan:
    """A validated grid: every cell resolved before anything runs."""

    name: str
    axes: dict[str, list[Any]]
    cells: list[Cell]
    source: str


def _slug(value: Any) -> str:
    text = "+".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return re.sub(r"[^A-Za-z0-9.+=-]", "-", text)


def cell_id(overrides: dict[str, Any]) -> str:
    """A readable, filesystem-safe folder name such as ``rate=0.01_seed=0`` (``run`` for a single cell)."""
    if not overrides:
        return "run"
    short = [k.rpartition(".")[2] for k in overrides]
    keys = short if len(set(short)) == len(short) else list(overrides)
    return "_".join(f"{k}={_slug(v)}" for k, v in zip(keys, overrides.values(), strict=True))


def plan(path: Path) -> SweepPlan:
    """Read and validate a sweep config; every cell must resolve, so a bad value fails before any training."""
    raw = read_toml(path)
    cells, seen = [], set()
    for overrides, cell_raw in expand(raw):
        where = f"{path} (cell {cell_id(overrides)})" if overrides else str(path)
        cfg = resolve(cell_raw, where)
        try:
            check_runnable(cfg)
        except PoisonlabError as e:
            raise PoisonlabError(f"{where}: {e}") from None
        cid = cell_id(overrides)
        if cid in seen:
            raise PoisonlabError(f"{path}: two cells share the folder name {cid!r}; make the listed values distinct")
        seen.add(cid)
        cells.append(Cell(cid, overrides, cfg))
    return SweepPlan(name=cells[0].config.name, axes=_axes(cells), cells=cells, source=path.read_text())


def _axes(cells: list[Cell]) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for cell in cells:
        for k, v in cell.overrides.items():
            if v not in axes.setdefault(k, []):
                axes[k].append(v)
    return axes


def _plan_body(p: SweepPlan) -> dict[str, Any]:
    return {
        "schema": SWEEP_SCHEMA,
        "name": p.name,
        "axes": p.axes,
        "cells": [{"id": c.id, "overrides": c.overrides, "config": c.config.as_dict()} for c in p.cells],
    }


def _prepare(p: SweepPlan, out: Path) -> None:
    """Create the sweep folder, or check that an existing one holds this very sweep (then it resumes)."""
    body = _plan_body(p)
    existing = out / PLAN_FILE
    if existing.exists():
        try:
            old = json.loads(existing.read_text())
        except ValueError:
            old = None
        if old is None or old.get("cells") != json.loads(json.dumps(body["cells"])):
            raise PoisonlabError(f"{out}: holds a different sweep; choose another --out or delete the folder")
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PoisonlabError(f"{out}: cannot create the sweep folder ({e.strerror})") from None
    atomic_write_json(existing, body)
    atomic_write_bytes(out / SOURCE_FILE, p.source.encode())


def run_cell(cfg: ExperimentConfig, run_dir: str, threads: int | None = None) -> str:
    """Run one cell into ``run_dir`` (the worker side of every backend); returns the folder."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    run_experiment(cfg, path, progress=False)
    return run_dir


CellDone = Callable[[Cell, str | None], None]
"""Called once per finished cell with None on success or the error message."""


def _local(todo: list[Cell], out: Path, jobs: int, done: CellDone) -> None:
    if jobs == 1:
        for cell in todo:
            try:
                run_cell(cell.config, str(out / "cells" / cell.id))
                done(cell, None)
            except PoisonlabError as e:
                done(cell, str(e))
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # spawn, not fork: a forked child inherits torch's thread pools in an unusable state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, c.config, str(out / "cells" / c.id), threads): c for c in todo}
        for future in as_completed(futures):
            error = future.exception()
            done(futures[future], None if error is None else f"{type(error).__name__}: {error}")


def _ray(todo: list[Cell], out: Path, address: str | None, done: CellDone) -> None:
    try:
        import ray
    except ImportError:
        raise PoisonlabError("--backend ray: the ray package is not installed; pip install 'poisonlab[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task: Any = ray.remote(num_cpus=1)(run_cell)
        pending = {task.remote(c.config, str((out / "cells" / c.id).resolve()), 1): c for c in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            try:
                ray.get(ready[0])
                done(cell, None)
            except Exception as e:  # a task's error arrives wrapped by Ray; record it and go on with the grid
                done(cell, str(getattr(e, "cause", None) or e).splitlines()[0])
    finally:
        if started:
            ray.shutdown()


def run_sweep(
    p: SweepPlan,
    out: Path,
    backend: Backend = "local",
    jobs: int = 1,
    address: str | None = None,
    on_cell: CellDone | None = None,
) -> dict[str, Any]:
    """Run every unfinished cell of ``p`` into ``out``; write and return the aggregated summary."""
    if jobs < 1:
        raise PoisonlabError(f"jobs {jobs}: expected at least 1")
    _prepare(p, out)
    todo = [c for c in p.cells if not is_complete(out / "cells" / c.id)]
    errors: dict[str, str] = {}

    def done(cell: Cell, error: str | None) -> None:
        if error is not None:
            errors[cell.id] = error
        if on_cell is not None:
            on_cell(cell, error)

    if todo and backend == "ray":
        _ray(todo, out, address, done)
    elif todo and backend == "local":
        _local(todo, out, jobs, done)
    elif todo:
        raise PoisonlabError(f"backend {backend!r}: expected local or ray")
    summary = aggregate(out)
    summary["ran"] = len(todo)
    summary["skipped"] = len(p.cells) - len(todo)
    summary["errors"] = errors
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


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


def aggregate(out: Path) -> dict[str, Any]:
    """Per cell its metrics, and per setting (all axes but ``seed``) each metric's mean ± sample std over seeds."""
    plan_body = json.loads((out / PLAN_FILE).read_text())
    cells: list[dict[str, Any]] = []
    groups: dict[str, dict[str, Any]] = {}
    for cell in plan_body["cells"]:
        run_dir = out / "cells" / cell["id"]
        entry = {"id": cell["id"], "overrides": cell["overrides"], "status": "pending", "metrics": {}}
        if is_complete(run_dir):
            body = json.loads((run_dir / REPORT_FILE).read_text())
            entry.update(status="done", metrics=dict(flatten(body["metrics"])))
        cells.append(entry)
        setting = {k: v for k, v in cell["overrides"].items() if k != "seed"}
        key = json.dumps(setting, sort_keys=True)
        group = groups.setdefault(key, {"overrides": setting, "cells": [], "seeds": []})
        group["cells"].append(entry)
        group["seeds"].append(cell["config"]["seed"])
    out_groups = []
    for group in groups.values():
        done = [c for c in group.pop("cells") if c["status"] == "done"]
        keys = sorted({k for c in done for k in c["metrics"]})
        group["done"] = len(done)
        group["metrics"] = {k: _mean_std(c["metrics"][k] for c in done if k in c["metrics"]) for k in keys}
        out_groups.append(group)
    return {
        "schema": SWEEP_SCHEMA,
        "name": plan_body["name"],
        "axes": plan_body["axes"],
        "total": len(cells),
        "done": sum(c["status"] == "done" for c in cells),
        "cells": cells,
        "groups": out_groups,
    }
