"""What every command shares: one-line errors with exit code 2, consoles, JSON output, tables."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from poisonlab.core import PoisonlabError
from poisonlab.report.store import to_json
from poisonlab.report.tables import TableData

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
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Machine-readable output on stdout, nothing else: strictly valid JSON."""
    typer.echo(to_json(obj))


def print_verdict(text: str, alarm: bool) -> None:
    """A command's one verdict line, red when it raises the alarm; ``text`` (paths, class names) printed literally."""
    from rich.markup import escape

    console.print(("[red]" if alarm else "[green]") + "verdict:[/] " + escape(text), highlight=False)


def print_tables(tables: list[TableData]) -> None:
    for t in tables:
        console.print(t.to_rich())
