"""Sweeps: a config whose fields hold lists, expanded into a grid of runs, resumable, aggregated as mean ± std.

Each cell is an ordinary run folder under ``SWEEP/cells/<cell id>``; a cell counts as done when its
``report.json`` (written last, atomically) exists, so a killed sweep restarted with the same command
skips the finished cells and redoes only the interrupted ones. Cells run in this process (one job),
in a local process pool (``jobs`` > 1), or as Ray tasks (``backend="ray"``): the grid and the
bookkeeping stay here, the scheduling belongs to the pool or to Ray. On a multi-node Ray cluster
the sweep folder must be on storage every node sees (cells write their run folders themselves).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from poisonlab.core import PoisonlabError, check_target
from poisonlab.data import load_dataset
from poisonlab.experiment.config import AttackConfig, read_toml, sweep_axes
from poisonlab.experiment.run import Resolved, execute, experiment_of, resolve
from poisonlab.experiment.victim import Victim
from poisonlab.models import construct
from poisonlab.report.store import REPORT_FILE, atomic_write_json, locked, read_report
from poisonlab.report.summary import SUMMARY_FILE, aggregate, check_sweep_folder, open_sweep_folder

Backend = Literal["local", "ray"]


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its folder name, the values it overrides, its resolved config."""

    id: str
    overrides: dict[str, Any]
    config: Resolved


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


def expand(raw: dict[str, Any], axes: dict[str, list[Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The grid: one (overrides, raw cell config) per combination of the sweep axes, in a stable order."""
    cells = []
    for combo in itertools.product(*axes.values()):
        cell = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
        overrides = dict(zip(axes, combo, strict=True))
        for path, value in overrides.items():
            *sections, key = path.split(".")
            table = cell
            for section in sections:
                table = table[section]
            table[key] = value
        cells.append((overrides, cell))
    return cells


def plan(path: Path) -> SweepPlan:
    """Read and validate a sweep config of any experiment; every cell must resolve, so a bad value fails first."""
    raw = read_toml(path)
    try:
        axes = sweep_axes(experiment_of(raw)[1].config, raw)
    except PoisonlabError as e:
        raise PoisonlabError(f"{path}: {e}") from None
    cells, seen = [], set()
    for overrides, cell_raw in expand(raw, axes):
        where = f"{path} (cell {cell_id(overrides)})" if overrides else str(path)
        cfg = resolve(cell_raw, where)
        cid = cell_id(overrides)
        if cid in seen:
            raise PoisonlabError(f"{path}: two cells share the folder name {cid!r}; make the listed values distinct")
        seen.add(cid)
        cells.append(Cell(cid, overrides, cfg))
    return SweepPlan(name=cells[0].config.name, axes=axes, cells=cells, source=path.read_text())


def _attacks(config: Any) -> list[AttackConfig]:
    """The attack tables of a cell's config (``attack``, or the list ``attacks``)."""
    found: list[AttackConfig] = []
    for f in fields(config):
        value = getattr(config, f.name)
        found += [v for v in (value if isinstance(value, list | tuple) else [value]) if isinstance(v, AttackConfig)]
    return found


def preflight(cells: list[Cell]) -> None:
    """Refuse, before any cell trains, a cell whose run would refuse its input once the data is loaded.

    Each distinct dataset is loaded once: it must load, the model must build for its images, and every
    attack's target must be one of its classes. A bad cell found late would leave a half-run grid whose
    fixed config no longer matches the folder's plan.
    """
    loaded: dict[str, tuple[tuple[int, int, int], int]] = {}
    for cell in cells:
        cfg = cell.config.config
        if not isinstance(cfg, Victim):
            continue
        try:
            if cfg.dataset not in loaded:
                train, _ = load_dataset(cfg.dataset, cfg.seed)
                loaded[cfg.dataset] = (train.shape, train.num_classes)
            shape, num_classes = loaded[cfg.dataset]
            construct(cfg.model, shape, num_classes)
            for table in _attacks(cfg):
                target = getattr(table.build(), "target", None)
                if isinstance(target, int):
                    check_target(target, num_classes, table.name)
        except PoisonlabError as e:
            raise PoisonlabError(f"cell {cell.id}: {e}") from None


def is_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run (its report.json is written last)."""
    return read_report(run_dir / REPORT_FILE) is not None


def run_cell(cfg: Resolved, run_dir: str, threads: int | None = None) -> str:
    """Run one cell into ``run_dir`` (the worker side of every backend); returns the folder."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    execute(cfg, path, progress=False)
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
    with sweep_folder(p, out, backend, jobs):
        return run_cells(p, out, backend, jobs, address, on_cell)


@contextmanager
def sweep_folder(p: SweepPlan, out: Path, backend: str = "local", jobs: int = 1) -> Iterator[None]:
    """Check the backend, the folder and every cell's input (``preflight``), then hold the folder open and locked.

    Everything that can be refused is refused here, before the folder is created or locked and before any
    progress is shown.
    """
    if jobs < 1:
        raise PoisonlabError(f"jobs {jobs}: expected at least 1")
    if backend not in ("local", "ray"):
        raise PoisonlabError(f"backend {backend!r}: expected local or ray")
    cells = [{"id": c.id, "overrides": c.overrides, "config": c.config.as_dict()} for c in p.cells]
    check_sweep_folder(out, cells)
    preflight(p.cells)
    with locked(out):
        open_sweep_folder(out, p.name, p.axes, cells, p.source)
        yield


def run_cells(p: SweepPlan, out: Path, backend: Backend, jobs: int, address: str | None,
              on_cell: CellDone | None) -> dict[str, Any]:
    """The unfinished cells of ``p`` run by ``backend`` (inside ``sweep_folder``), then the summary aggregated."""
    todo = [c for c in p.cells if not is_complete(out / "cells" / c.id)]
    errors: dict[str, str] = {}

    def done(cell: Cell, error: str | None) -> None:
        if error is not None:
            errors[cell.id] = error
        if on_cell is not None:
            on_cell(cell, error)

    if todo and backend == "ray":
        _ray(todo, out, address, done)
    elif todo:
        _local(todo, out, jobs, done)
    summary = aggregate(out)
    summary["ran"] = len(todo)
    summary["skipped"] = len(p.cells) - len(todo)
    summary["errors"] = errors
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary
