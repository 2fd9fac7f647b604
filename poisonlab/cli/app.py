"""The ``poisonlab`` application: composes the command groups."""

from __future__ import annotations

import typer

from poisonlab.cli import listing, run, run_universal, triggers
from poisonlab.cli import sweep as sweep_cli

app = typer.Typer(
    help="poisonlab: mount data-poisoning and backdoor attacks on image classifiers, measure them, and defend.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
run.app.command("universal")(run_universal.universal)
app.add_typer(run.app, name="run")
app.command("list")(listing.list_components)
app.command("triggers")(triggers.triggers)
app.command("sweep")(sweep_cli.sweep)


def main() -> None:
    app()
