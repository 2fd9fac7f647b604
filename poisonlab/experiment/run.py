"""Experiments: each a registered typed config plus the function that runs it; one way to resolve and run them.

``poisonlab run NAME``, ``poisonlab run CONFIG.toml`` and every sweep cell go through ``resolve`` and
``execute``: the run folder gets the resolved ``config.toml`` first (every default filled in, so
``poisonlab run RUN/config.toml`` repeats the run) and ``report.json`` last (a folder holding one holds a
finished run). A preset is an experiment with other defaults for the same config (``badnets`` is the
attack pipeline with BadNets on MNIST).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from poisonlab.core import PoisonlabError
from poisonlab.experiment.config import (
    AttackConfig,
    as_dict,
    attack_defaults,
    check_type,
    field_default,
    read_toml,
    resolve_fields,
    sweep_axes,
)
from poisonlab.experiment.rundir import CONFIG_FILE, run_name
from poisonlab.registry import EXPERIMENTS
from poisonlab.report.store import REPORT_FILE, atomic_write_bytes, atomic_write_json, read_report, report, to_json
from poisonlab.report.tables import TableData

PIPELINE = "pipeline"
"""The experiment a config file without an ``experiment`` key runs: the attack pipeline."""


@dataclass(frozen=True)
class Run:
    """Where a run writes and whether it reports progress."""

    out: Path
    progress: bool = True

    def log(self, message: str) -> None:
        """A progress line on stderr (silent when progress is off)."""
        if self.progress:
            from rich.console import Console

            Console(stderr=True).print(message, highlight=False)


@dataclass
class Result:
    """What an experiment's run returns: its metrics, the files it wrote, its timings in seconds."""

    metrics: dict[str, Any]
    files: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A typed config, the function that runs it, the table that shows its report, a preset's defaults.

    ``defaults`` override the config class's own (nested tables key by key); ``required`` are the keys a
    config file must give.
    """

    config: type
    run: Callable[[Any, Run], Result]
    table: Callable[[dict[str, Any]], list[TableData]]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()


def register(name: str, description: str, experiment: Experiment) -> None:
    EXPERIMENTS.register(name, description)(experiment)


@dataclass(frozen=True)
class Resolved:
    """One validated run: the experiment's name, its typed config and the run folder's name."""

    experiment: str
    config: Any
    name: str

    def as_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "name": self.name, **as_dict(self.config)}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.as_dict())


def merged(defaults: Mapping[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` over ``defaults``; tables merge key by key (an attack table with another name replaces it)."""
    out = dict(defaults)
    for key, value in raw.items():
        base = out.get(key)
        same_attack = not (isinstance(value, dict) and "name" in value and isinstance(base, dict)
                           and base.get("name") != value["name"])
        out[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) and same_attack else value
    return out


def experiment_of(raw: Mapping[str, Any]) -> tuple[str, Experiment]:
    name = check_type("experiment", raw.get("experiment", PIPELINE), str)
    if name not in EXPERIMENTS:
        raise PoisonlabError(f"experiment: unknown experiment {name!r}; expected one of: "
                             f"{', '.join(EXPERIMENTS.names())} (or no experiment key for the attack pipeline)")
    return name, EXPERIMENTS.get(name)


def resolve(raw: Mapping[str, Any], source: str = "config") -> Resolved:
    """Validate one run's raw config; errors read ``SOURCE: FIELD: problem`` and come before any data is loaded."""
    try:
        name, experiment = experiment_of(raw)
        fields = {k: v for k, v in raw.items() if k not in ("experiment", "name")}
        for key in experiment.required:
            if key not in fields:
                raise _missing(key)
        config = resolve_fields(experiment.config, merged(dataset_defaults(experiment, fields), fields))
        return Resolved(name, config, run_name(check_type("name", raw.get("name", name), str)))
    except PoisonlabError as e:
        raise PoisonlabError(f"{source}: {e}") from None


def dataset_defaults(experiment: Experiment, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment's defaults with the chosen dataset's suggestions (``data.SUGGESTED``) over them.

    A suggestion applies only to a field the config has (and an attack parameter the attack has); what the
    user sets still wins, and the resolved config.toml records the values used.
    """
    from poisonlab.data import SUGGESTED

    names = {f.name: f for f in dataclasses.fields(experiment.config)}
    given = merged(experiment.defaults, fields)
    spec = given.get("dataset", field_default(names["dataset"]) if "dataset" in names else "")
    suggested = {k: v for k, v in SUGGESTED.get(str(spec).partition(":")[0], {}).items() if k in names}
    attack = given.get("attack")
    if "attack" in suggested:
        settable = attack_defaults(attack["name"]) if isinstance(attack, dict) and "name" in attack else {}
        suggested["attack"] = {k: v for k, v in suggested["attack"].items() if k in settable}
    return merged(experiment.defaults, suggested)


def _missing(key: str) -> PoisonlabError:
    if key != "dataset":
        return AttackConfig.missing(key)
    from poisonlab.data import DATASETS

    return PoisonlabError(f"dataset: missing; expected one of: {', '.join(DATASETS.names())} (NAME or NAME:ARGUMENT)")


def load(path: Path, raw: Mapping[str, Any] | None = None) -> Resolved:
    """The single run ``path`` describes (``raw``: its contents, when already read); a sweep is refused."""
    raw = read_toml(path) if raw is None else raw
    try:
        _, experiment = experiment_of(raw)
        axes = sweep_axes(experiment.config, raw)
    except PoisonlabError as e:
        raise PoisonlabError(f"{path}: {e}") from None
    if axes:
        raise PoisonlabError(f"{path}: {next(iter(axes))}: a list makes a sweep; run it with `poisonlab sweep {path}`")
    return resolve(raw, str(path))


def finished_same(out: Path | None, resolved: Resolved) -> dict[str, Any] | None:
    """The report in ``out`` when it is a finished run of this very config (so it need not run again), else None."""
    body = None if out is None else read_report(out / REPORT_FILE)
    if body is None or body.get("config") != json.loads(to_json(resolved.as_dict())):
        return None
    timings = body.get("timings")
    return body if isinstance(timings, dict) and "total_seconds" in timings else None


def execute(resolved: Resolved, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run ``resolved`` into the run folder ``out``; ``config.toml`` is written first and ``report.json`` last."""
    atomic_write_bytes(out / CONFIG_FILE, resolved.to_toml().encode())
    t0 = time.perf_counter()
    result = EXPERIMENTS.get(resolved.experiment).run(resolved.config, Run(out, progress))
    timings = {**result.timings, "total_seconds": time.perf_counter() - t0}
    body = report(resolved.experiment, resolved.as_dict(), result.metrics, timings=timings,
                  files=[CONFIG_FILE, *result.files])
    atomic_write_json(out / REPORT_FILE, body)
    return body


class Timer(dict[str, float]):
    """Seconds per named step: ``with timer("train_clean"): ...`` adds to ``train_clean_seconds``."""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[f"{name}_seconds"] = self.get(f"{name}_seconds", 0.0) + time.perf_counter() - start
