"""The ``poisonlab`` application: composes the command groups."""

from __future__ import annotations

import typer

from poisonlab.cli import listing, run, triggers

app = typer.Typer(
    help="poisonlab: mount data-poisoning and backdoor attacks on image classifiers, measure them, and defend.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(run.app, name="run")
app.command("list")(listing.list_components)
app.command("triggers")(triggers.triggers)


def main() -> None:
    app()
