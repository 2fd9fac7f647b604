"""The ``poisonlab`` application: composes the command groups, importing each only when it runs.

``poisonlab --help`` (and tab completion of command names) lists the commands from the table below
without importing them, so it loads no torch, scikit-learn or matplotlib; a command's module is
imported when that command is invoked or asked for its own help. tests/test_cli.py checks that each
short help here is the command's own.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any, NamedTuple

import typer

import poisonlab


class Entry(NamedTuple):
    """Where a command lives (``module:attribute``: a command function or a typer app) and its one-line help."""

    target: str
    help: str


COMMANDS: dict[str, Entry] = {
    "run": Entry("run:app", "Run an experiment end to end and write a run folder: `poisonlab run EXPERIMENT "
                            "[OPTIONS]` or `poisonlab run CONFIG.toml` (see examples/)."),
    "list": Entry("listing:list_components", "List datasets, attacks, triggers, models, deployments, defenses, "
                                             "resizers and experiments by name."),
    "triggers": Entry("triggers:triggers", "Draw each trigger stamped on a few test images."),
    "sweep": Entry("sweep:sweep", "Expand the config's lists into a grid, run the cells not yet done, and aggregate "
                                  "mean ± std over seeds."),
    "runs": Entry("runs:runs", "List every run under the results folder, optionally filtered; CA and ASR are the "
                               "backdoored model's."),
    "compare": Entry("runs:compare", "Print runs side by side: the config fields that differ, then every metric."),
    "report": Entry("report:report", "Write one HTML page with the CA/ASR tables, curves, example images, config "
                                     "and environment."),
    "deploy-check": Entry("deploy_check:deploy_check_command", "Evaluate the float model and every deployed variant; "
                                                               "exit 1 when a variant departs from the float model."),
    "scan": Entry("scan:app", "Scan training data for poison, or a model for a backdoor."),
    "defend": Entry("defend:defend", "Repair the backdoored model of a pipeline run; print CA and ASR before and "
                                     "after, on the whole test set."),
    "scaling": Entry("scaling:app", "Image-scaling attacks: craft them, scan images for them, audit which scalers "
                                    "are open."),
}


def load_command(name: str) -> Any:
    """The real click command ``name``, its module imported now."""
    module, _, attribute = COMMANDS[name].target.partition(":")
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
    """Lists the commands of ``COMMANDS`` from their table entries; imports one only to run it."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, name: str) -> Any:
        if name not in COMMANDS:
            return None
        return typer.core.TyperCommand(name, help=COMMANDS[name].help)

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        return name, (load_command(name) if name is not None and name in COMMANDS else command), rest


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
