"""What every command shares: one-line errors with exit code 2, consoles, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from poisonlab.core import PoisonlabError

PIPE_WIDTH = 160
"""Columns for output that goes to a file or pipe (rich would assume 80 and cut resizer names and headers)."""

console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn a PoisonlabError into ``error: ...`` on stderr and exit code 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PoisonlabError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Machine-readable output on stdout, nothing else."""
    typer.echo(json.dumps(obj, indent=2))


def run_and_print(experiment: str, cfg: Any, out: Path | None, json_out: bool, quiet: bool,
                  table: Callable[[dict[str, Any]], Table], **extra: Any) -> None:
    """Run a registered experiment's config into a new run folder, then print its table (or its report as JSON).

    The folder gets the resolved ``config.toml``, so ``poisonlab run RUN/config.toml`` repeats the run;
    ``extra`` goes to the experiment's run function.
    """
    from poisonlab.experiment.papers import PaperConfig
    from poisonlab.experiment.rundir import make_run_dir

    cfg.validate()
    run_dir = make_run_dir(out, experiment)
    body = PaperConfig(experiment, cfg, experiment).run(run_dir, progress=not (quiet or json_out), **extra)
    if json_out:
        print_json({"run_dir": str(run_dir), **body})
        return
    console.print(table(body))
    console.print(f"run folder: {run_dir}  ({body['timings']['total_seconds']:.1f} s)")
