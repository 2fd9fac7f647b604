"""``poisonlab sweep CONFIG.toml``: run a grid of experiments, resumably, and print mean ± std per setting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from poisonlab.cli.common import console, err_console, one_line_errors, print_json
from poisonlab.experiment.sweep import Cell, plan, run_sweep

HEADLINE = (
    ("backdoored.clean_accuracy", "CA backdoored"),
    ("backdoored.attack_success_rate", "ASR backdoored"),
    ("clean.clean_accuracy", "CA clean"),
    ("clean.attack_success_rate", "ASR clean"),
)


def _pm(stat: dict[str, Any]) -> str:
    if stat.get("mean") is None:
        return "-"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def summary_table(summary: dict[str, Any]) -> Table:
    """One row per setting (every axis but seed): CA and ASR in percent, mean ± sample std over its seeds."""
    table = Table(title=f"sweep {summary['name']}: {summary['done']}/{summary['total']} cells done")
    axes = [a for a in summary["axes"] if a != "seed"]
    for axis in axes:
        table.add_column(axis)
    table.add_column("seeds", justify="right")
    for _, label in HEADLINE:
        table.add_column(f"{label} %", justify="right")
    for group in summary["groups"]:
        row = [str(group["overrides"].get(a)) for a in axes] + [f"{group['done']}/{len(group['seeds'])}"]
        row += [_pm(group["metrics"].get(key, {})) for key, _ in HEADLINE]
        table.add_row(*row)
    return table


@one_line_errors
def sweep(
    config: Annotated[Path, typer.Argument(help="sweep config (TOML) whose fields may hold lists")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="sweep folder (default runs/sweep-NAME)")] = None,
    backend: Annotated[str, typer.Option(help="local (process pool) or ray")] = "local",
    jobs: Annotated[int, typer.Option(help="parallel cells for the local backend (1 runs them in this process)")] = 1,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local Ray)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print summary.json instead of the table")] = False,
) -> None:
    """Expand the config's lists into a grid, run the cells not yet done, and aggregate mean ± std over seeds.

    Re-running the same command resumes a killed sweep: finished cells are skipped.

    Example: poisonlab sweep examples/badnets-mnist-sweep.toml --jobs 1
    """
    p = plan(config)
    folder = out if out is not None else Path("runs") / f"sweep-{p.name}"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, disable=json_out, transient=True) as bar:
        task = bar.add_task(f"sweep {p.name}", total=len(p.cells))

        def on_cell(cell: Cell, error: str | None) -> None:
            bar.advance(task)
            if error is not None:
                err_console.print(f"[red]cell {cell.id} failed:[/red] {error}", highlight=False, soft_wrap=True)

        summary = run_sweep(p, folder, backend=backend, jobs=jobs, address=address, on_cell=on_cell)  # type: ignore[arg-type]
        bar.update(task, completed=len(p.cells))
    if json_out:
        print_json({"sweep_dir": str(folder), **summary})
    else:
        console.print(summary_table(summary))
        console.print(f"sweep folder: {folder}  (ran {summary['ran']}, skipped {summary['skipped']} already done)")
    if summary["errors"]:
        raise typer.Exit(1)
