"""``poisonlab runs`` and ``poisonlab compare``: list, filter and compare run folders through the SQLite index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from poisonlab.cli.common import one_line_errors, print_json, print_tables
from poisonlab.core import PoisonlabError
from poisonlab.report.index import compare as compare_runs
from poisonlab.report.index import list_runs, load_run
from poisonlab.report.tables import compare_tables, runs_tables

RootOption = Annotated[Path, typer.Option("--root", help="results folder holding run folders (and index.sqlite)")]


def _where(items: list[str]) -> dict[str, str]:
    where = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise PoisonlabError(f"--where {item!r}: expected FIELD=VALUE, e.g. attack=badnets or attack.target=8")
        where[key.strip()] = value.strip()
    return where


@one_line_errors
def runs(
    where: Annotated[list[str] | None, typer.Option("--where", "-w", help="FIELD=VALUE filter (repeatable)")] = None,
    root: RootOption = Path("runs"),
    json_out: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
) -> None:
    """List every run under the results folder, optionally filtered; CA and ASR are the backdoored model's.

    Fields: kind, name, dataset, model, attack, seed, rate, or a dotted config path.

    Example: poisonlab runs --where attack=badnets --where rate=0.01
    """
    rows = list_runs(root, _where(where or []))
    if json_out:
        print_json(rows)
        return
    print_tables(runs_tables(rows, f"{len(rows)} runs under {root}"))


@one_line_errors
def compare(
    run_refs: Annotated[list[str], typer.Argument(help="run folders, report.json files, or paths under --root")],
    root: RootOption = Path("runs"),
    json_out: Annotated[bool, typer.Option("--json", help="print the comparison as JSON")] = False,
) -> None:
    """Print runs side by side: the config fields that differ, then every metric.

    Example: poisonlab compare runs/sweep-x/cells/rate=0.01_seed=0 runs/sweep-x/cells/rate=0.1_seed=0
    """
    if len(run_refs) < 2:
        raise PoisonlabError("compare: expected at least two runs")
    result = compare_runs([load_run(ref, root) for ref in run_refs])
    if json_out:
        print_json(result)
        return
    print_tables(compare_tables(result))
