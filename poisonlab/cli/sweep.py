"""``poisonlab sweep CONFIG.toml``: run a grid of experiments, resumably, and print mean ± std per setting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from poisonlab.cli.common import err_console, one_line_errors, print_json, print_tables, say
from poisonlab.experiment.sweep import Cell, plan, run_cells, sweep_folder
from poisonlab.report.tables import sweep_tables


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
    with sweep_folder(p, folder, backend, jobs), Progress(*columns, console=err_console, disable=json_out,
                                                          transient=True) as bar:
        task = bar.add_task(f"sweep {p.name}", total=len(p.cells))

        def on_cell(cell: Cell, error: str | None) -> None:
            bar.advance(task)
            if error is not None:
                say(str(error), label=f"cell {cell.id} failed:", style="red", err=True)

        summary = run_cells(p, folder, backend, jobs, address, on_cell)  # type: ignore[arg-type]
        bar.update(task, completed=len(p.cells))
    if json_out:
        print_json({"sweep_dir": str(folder), **summary})
    else:
        print_tables(sweep_tables(summary))
        say(f"sweep folder: {folder}  (ran {summary['ran']}, skipped {summary['skipped']} already done)")
    if summary["errors"]:
        raise typer.Exit(1)
