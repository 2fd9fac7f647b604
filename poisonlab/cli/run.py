"""``poisonlab run EXPERIMENT [OPTIONS]`` and ``poisonlab run CONFIG.toml``: every experiment, one run path.

Each registered experiment gets a command whose options are its config's fields (a nested ``training``
table's fields and a preset attack's parameters flattened), with the config's own defaults and help,
so a default lives in one place and the command line and config files are validated alike.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from poisonlab.cli.common import ForceOpt, err_console, one_line_errors, print_json, print_tables, say
from poisonlab.core import PoisonlabError
from poisonlab.experiment import config as cfgmod
from poisonlab.experiment.run import PIPELINE, Experiment, Resolved, execute, finished_same, load, resolve
from poisonlab.experiment.rundir import discard_unstarted, make_run_dir
from poisonlab.registry import ATTACKS, EXPERIMENTS

CONFIG_COMMAND = "config"


class ExperimentOrConfigGroup(typer.core.TyperGroup):
    """Routes ``poisonlab run PATH.toml ...`` to the config command; any other name to its experiment."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and args[0].lower().endswith(".toml"):
            return CONFIG_COMMAND, self.commands[CONFIG_COMMAND], args
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=ExperimentOrConfigGroup, no_args_is_help=True,
                  help="Run an experiment end to end and write a run folder: `poisonlab run EXPERIMENT [OPTIONS]` "
                       "or `poisonlab run CONFIG.toml` (see examples/).")


def run_and_print(resolved: Resolved, out: Path | None, json_out: bool, quiet: bool, force: bool = False) -> None:
    """Run into a new run folder, then print the experiment's tables (or the report as JSON).

    An ``out`` that already holds a finished run of this very config is not run again: its report is shown.
    """
    body = finished_same(out, resolved)
    run_dir = out if body is not None and out is not None else make_run_dir(out, resolved.name, force)
    if body is None:
        before = set(run_dir.iterdir())
        try:
            body = execute(resolved, run_dir, progress=not (quiet or json_out))
        except PoisonlabError:
            discard_unstarted(run_dir, before)
            raise
    if json_out:
        print_json({"run_dir": str(run_dir), **body})
        return
    print_tables(EXPERIMENTS.get(resolved.experiment).table(body))
    say(f"run folder: {run_dir}  ({body['timings']['total_seconds']:.1f} s)")


@dataclasses.dataclass(frozen=True)
class _Option:
    path: tuple[str, ...]
    annotation: Any
    default: Any
    help: str


def _cli_type(annotation: Any) -> tuple[Any, bool]:
    """(the type typer parses, whether the field is a list) for a config annotation."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
    if cfgmod.list_valued(annotation):
        return list[str] | None, True
    if origin is typing.Literal or cfgmod._is_trigger(annotation):
        return str, False
    if origin in (typing.Union, type(int | None)) and len(args) == 1:
        return args[0] | None, False
    return annotation, False


def _options(experiment: Experiment) -> dict[str, _Option]:
    """Command-line name -> option, for every field a command line can set."""
    out: dict[str, _Option] = {}
    hints = typing.get_type_hints(experiment.config)
    for f in dataclasses.fields(experiment.config):
        default = experiment.defaults.get(f.name, cfgmod.field_default(f))
        annotation = hints[f.name]
        if annotation is cfgmod.AttackConfig:
            name = default["name"] if isinstance(default, dict) else default.name
            params = cfgmod.parameters(ATTACKS.get(name))
            for key, value in cfgmod.attack_defaults(name).items():
                meta = getattr(ATTACKS.get(name), "__dataclass_fields__", {}).get(key)
                help_text = meta.metadata.get("help", f"{name} parameter") if meta is not None else f"{name} parameter"
                out[key if key not in out else f"attack-{key}"] = _Option(("attack", key), params[key].annotation,
                                                                        value, help_text)
        elif dataclasses.is_dataclass(annotation):
            sub_hints = typing.get_type_hints(annotation)
            for sub in dataclasses.fields(annotation):
                out[sub.name] = _Option((f.name, sub.name), sub_hints[sub.name], getattr(default, sub.name),
                                        sub.metadata.get("help", ""))
        elif cfgmod._plain_annotation(annotation):
            out[f.name] = _Option((f.name,), annotation, default, f.metadata.get("help", ""))
    return out


def _value(option: _Option, given: Any) -> Any:
    """A command-line value as config data: numbers in lists may also come comma-separated."""
    kind, listed = _cli_type(option.annotation)
    if not listed:
        return given
    element = (typing.get_args(option.annotation) or (str,))[0]
    if element in (int, float):
        parts = [p for item in given for p in str(item).split(",") if p.strip()]
        try:
            return [element(p) for p in parts]
        except ValueError:
            raise cfgmod.PoisonlabError(f"--{option.path[-1].replace('_', '-')} {','.join(given)!r}: expected "
                                        f"comma-separated numbers") from None
    return list(given)


def command(name: str, experiment: Experiment, help: str | None = None) -> Callable[..., None]:
    """A typer command for ``experiment``: one option per settable config field; ``help`` replaces its summary."""
    options = _options(experiment)

    @one_line_errors
    def run(**kwargs: Any) -> None:
        raw: dict[str, Any] = {"experiment": name}
        for key, option in options.items():
            given = kwargs[key.replace("-", "_")]
            if given is None:
                continue
            table = raw
            for part in option.path[:-1]:
                table = table.setdefault(part, {})
            table[option.path[-1]] = _value(option, given)
        run_and_print(resolve(raw, f"run {name}"), kwargs["out"], kwargs["json_out"], kwargs["quiet"], kwargs["force"])

    params = []
    for key, option in options.items():
        kind, listed = _cli_type(option.annotation)
        default = option.default
        shown = ",".join(map(str, default)) if listed else default
        flag = f"--{key.replace('_', '-')}"
        decl = [flag] if kind is not bool else [f"{flag}/--no-{key.replace('_', '-')}"]
        choices = typing.get_args(option.annotation) if typing.get_origin(option.annotation) is typing.Literal else ()
        # unset options stay None, so the config's defaults (and a dataset's suggestions) apply, as in a TOML file
        help_text = option.help + (f" (one of: {', '.join(choices)})" if choices else "") + \
            (f" (default: {shown})" if shown not in (None, "") else "")
        params.append(inspect.Parameter(key.replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind | None, typer.Option(*decl, help=help_text,
                                                                                       show_default=False)]))
    params += [
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Path | None, typer.Option("--out", "-o", help=f"run folder (default runs/{name}-TIMESTAMP)")]),
        inspect.Parameter("force", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=ForceOpt),
        inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--json", help="print report.json instead of the table")]),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option(help="no progress bars")]),
    ]
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {}
    summary = help or EXPERIMENTS.describe(name) + "."
    run.__doc__ = f"{summary}\n\nEvery option is a field of its config file (see examples/)."
    return run


for _name in EXPERIMENTS:
    if _name != PIPELINE:
        app.command(_name)(command(_name, EXPERIMENTS.get(_name)))


train = command("train", EXPERIMENTS.get("train"), help="Train a model on your data as it is (npz:FILE, folder:DIR, "
                "...) into a run folder that scan data, scan model, defend and deploy-check accept. Example: "
                "poisonlab train --dataset npz:suspect.npz --model mymodule:factory --epochs 5 --out runs/suspect")


@app.command(CONFIG_COMMAND, hidden=True)
@one_line_errors
def config(
    path: Annotated[Path, typer.Argument(help="experiment config (TOML), e.g. examples/badnets-mnist.toml")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (default runs/NAME-TIMESTAMP)")] = None,
    force: ForceOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json instead of the table")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Run the experiment a TOML config describes; its resolved config.toml in the run folder re-runs it exactly.

    ``experiment = NAME`` picks any experiment of ``poisonlab list``; without it the config runs the attack
    pipeline (dataset, model, [training], [attack], preprocessing, deployments, defenses).

    Example: poisonlab run examples/badnets-mnist.toml
    """
    run_and_print(load(path), out, json_out, quiet, force)


__all__ = ["app", "err_console"]
