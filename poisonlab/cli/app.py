"""The ``poisonlab`` application: composes the command groups, importing each only when it runs.

``poisonlab --help`` (and tab completion of command names) lists the commands of the table below with
help read from their source, without importing them, so it loads no torch, scikit-learn or matplotlib; a
command's module is imported when that command is invoked or asked for its own help.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

import poisonlab

COMMANDS: dict[str, str] = {
    "run": "run:app", "train": "run:train", "list": "listing:list_components", "triggers": "triggers:triggers",
    "sweep": "sweep:sweep",
    "runs": "runs:runs", "compare": "runs:compare", "report": "report:report",
    "deploy-check": "deploy_check:deploy_check_command", "scan": "scan:app", "defend": "defend:defend",
    "scaling": "scaling:app", "examples": "examples:examples",
    "dataset": "dataset:app",
}
"""Command name -> ``module:attribute`` in ``poisonlab.cli``: a command function or a typer app."""


def help_text(name: str) -> str:
    """Command ``name``'s help, read from its module's source (the function's docstring, the app's ``help=``)."""
    module, _, attribute = COMMANDS[name].partition(":")
    for node in ast.parse((Path(__file__).parent / f"{module}.py").read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == attribute:
            return ast.get_docstring(node) or ""
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and any(isinstance(t, ast.Name) and t.id == attribute for t in node.targets)):
            return next(str(ast.literal_eval(k.value)) for k in node.value.keywords if k.arg == "help")
    raise LookupError(f"poisonlab.cli.{module} defines no {attribute}")


def load_command(name: str) -> Any:
    """The real click command ``name``, its module imported now."""
    module, _, attribute = COMMANDS[name].partition(":")
    obj = getattr(importlib.import_module(f"poisonlab.cli.{module}"), attribute)
    if isinstance(obj, typer.Typer):
        command: Any = typer.main.get_group(obj)
    else:
        single = typer.Typer()
        single.command(name)(obj)
        command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(typer.core.TyperGroup):
    """Lists the commands of ``COMMANDS`` with their help read from source; imports one only to run it."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, name: str) -> Any:
        if name not in COMMANDS:
            return None
        return typer.core.TyperCommand(name, help=help_text(name))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """The command list in click's plain layout: it loads none of typer's rich help renderer (markdown,
        tracebacks), which would double the start-up of ``poisonlab --help``; each command's own help stays rich."""
        super(typer.core.TyperGroup, self).format_help(ctx, formatter)

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and args[0] in COMMANDS:  # load the real command; the listing placeholder is for help only
            return args[0], load_command(args[0]), args[1:]
        return super().resolve_command(ctx, args)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        """As click's, but a usage error (a bad option value, an unknown option) is one ``error:`` line, exit 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False,
                               windows_expand_args=windows_expand_args, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False,
                               windows_expand_args=windows_expand_args, **extra)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        except typer.TyperException as e:  # click's errors (typer vendors click): usage, bad parameter, no such file
            from poisonlab.cli.common import say

            if type(e).__name__ == "NoArgsIsHelpError":  # `poisonlab` alone: the help, as click shows it
                typer.echo(e.format_message(), err=True)
                sys.exit(2)

            ctx = getattr(e, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            message = e.format_message() if hasattr(e, "format_message") else str(e)
            say(" ".join(message.split()) + hint, label="error:", style="red", err=True)
            sys.exit(getattr(e, "exit_code", 1))
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


app = typer.Typer(
    cls=LazyGroup,
    help="poisonlab: mount data-poisoning and backdoor attacks on image classifiers, measure them, and defend.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"poisonlab {poisonlab.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """poisonlab: mount data-poisoning and backdoor attacks on image classifiers, measure them, and defend."""


def main() -> None:
    app()
