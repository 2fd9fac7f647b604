"""The ``poisonlab`` application: composes the command groups."""

from __future__ import annotations

from typing import Annotated

import typer

import poisonlab
from poisonlab.cli import defend as defend_cli
from poisonlab.cli import deploy_check, listing, run, triggers
from poisonlab.cli import report as report_cli
from poisonlab.cli import runs as runs_cli
from poisonlab.cli import scaling as scaling_cli
from poisonlab.cli import scan as scan_cli
from poisonlab.cli import sweep as sweep_cli

app = typer.Typer(
    help="poisonlab: mount data-poisoning and backdoor attacks on image classifiers, measure them, and defend.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(run.app, name="run")
app.command("list")(listing.list_components)
app.command("triggers")(triggers.triggers)
app.command("sweep")(sweep_cli.sweep)
app.command("runs")(runs_cli.runs)
app.command("compare")(runs_cli.compare)
app.command("report")(report_cli.report)
app.command("deploy-check")(deploy_check.deploy_check_command)
app.add_typer(scan_cli.app, name="scan")
app.command("defend")(defend_cli.defend)
app.add_typer(scaling_cli.app, name="scaling")


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
