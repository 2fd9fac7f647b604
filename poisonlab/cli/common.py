"""What every command shares: one-line errors with exit code 2, consoles, JSON output, tables."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from poisonlab.core import PoisonlabError
from poisonlab.report.store import to_json
from poisonlab.report.tables import TableData, printable

PIPE_WIDTH = 160
"""Columns for output that goes to a file or pipe (rich would assume 80 and cut resizer names and headers)."""

console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
ForceOpt = Annotated[bool, typer.Option("--force", help="write into a non-empty --out that holds no finished run")]


def finite_options(kwargs: dict[str, Any]) -> None:
    """Refuse NaN and infinity in every number option: no value may switch a check off silently."""
    for key, value in kwargs.items():
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise PoisonlabError(f"--{key.replace('_', '-')} {value}: expected a finite number")


def at_least(flag: str, value: float | None, low: float, strict: bool = False) -> None:
    """Refuse an option value below ``low`` (or at it, when ``strict``)."""
    if value is not None and (value < low or (strict and value == low)):
        raise PoisonlabError(f"{flag} {value}: expected a number {'>' if strict else '>='} {low:g}")


def one_line_errors(fn: F) -> F:
    """A PoisonlabError becomes ``error: ...`` on stderr and exit code 2 (no traceback); numbers must be finite."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            finite_options(kwargs)
            return fn(*args, **kwargs)
        except PoisonlabError as e:
            say(str(e), label="error:", style="red", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Machine-readable output on stdout, nothing else: strictly valid JSON."""
    typer.echo(to_json(obj))


def say(text: str, label: str = "", style: str = "", err: bool = False) -> None:
    """One line printed literally (paths and class names may hold ``[`` or ``:name:``), after a coloured ``label``.

    Rich never parses ``text`` as markup or emoji codes, and never wraps it; unprintable characters (a newline or
    an escape code in a file name) are shown escaped: one message, one line.
    """
    line = Text.assemble((label, style), " " if label else "", printable(text))
    (err_console if err else console).print(line, highlight=False, soft_wrap=True)


def print_verdict(text: str, alarm: bool) -> None:
    """A command's one verdict line, red when it raises the alarm."""
    say(text, label="verdict:", style="red" if alarm else "green")


def print_tables(tables: list[TableData]) -> None:
    for t in tables:
        console.print(t.to_rich())
