"""``poisonlab run EXPERIMENT``: the experiments, each one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from poisonlab.cli.common import console, one_line_errors, print_json
from poisonlab.cli.run_backgradient import curve_table
from poisonlab.cli.run_compression import compression_table
from poisonlab.cli.run_defense_matrix import matrix_table
from poisonlab.cli.run_scaling_camouflage import camouflage_table
from poisonlab.cli.run_universal import universal_table
from poisonlab.cli.scaling import audit_table
from poisonlab.experiment import config as experiment_config
from poisonlab.experiment import papers
from poisonlab.experiment.badnets import BadnetsConfig, run_badnets
from poisonlab.experiment.rundir import make_run_dir
from poisonlab.experiment.runner import run_experiment

CONFIG_COMMAND = "config"


class ExperimentOrConfigGroup(typer.core.TyperGroup):
    """Routes ``poisonlab run PATH.toml ...`` to the config command; any other name to its experiment."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and args[0].lower().endswith(".toml"):
            return CONFIG_COMMAND, self.commands[CONFIG_COMMAND], args
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=ExperimentOrConfigGroup,
    help="Run an experiment end to end and write a run folder: `poisonlab run EXPERIMENT [OPTIONS]` "
    "or `poisonlab run CONFIG.toml` (see examples/).",
    no_args_is_help=True,
)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def badnets_table(body: dict[str, Any]) -> Table:
    """The headline table: CA and ASR of the clean and the backdoored model."""
    m, cfg = body["metrics"], body["config"]
    target = "i -> i+1" if cfg["mode"] == "all-to-all" else f"-> {cfg['target']}"
    table = Table(title=f"BadNets {cfg['mode']} ({target}) on {cfg['dataset']}, "
                        f"{m['poisoned_samples']} poisoned of {m['train_size']} ({_pct(m['poisoned_fraction'])})")
    for col in ("model", "clean accuracy", "attack success rate", "worst-class ASR"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name in ("clean", "backdoored"):
        per_class = [v for v in m[name]["per_class_asr"] if v is not None]
        table.add_row(name, _pct(m[name]["clean_accuracy"]), _pct(m[name]["attack_success_rate"]), _pct(min(per_class)))
    table.caption = f"{m['asr_definition']} ({m['clean']['asr_images']} images)."
    return table


@app.command()
@one_line_errors
def badnets(
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist, digits, folder:PATH, npz:PATH, ...")] = "mnist",
    model: Annotated[str, typer.Option(help="badnets-cnn or small-cnn")] = "badnets-cnn",
    mode: Annotated[str, typer.Option(help="all-to-one or all-to-all")] = "all-to-one",
    target: Annotated[int, typer.Option(help="target class for all-to-one")] = 8,
    rate: Annotated[float, typer.Option(help="fraction of the training set poisoned")] = 0.01,
    count: Annotated[int | None, typer.Option(help="exact number of poisoned samples (overrides --rate)")] = None,
    trigger: Annotated[str, typer.Option(help="trigger spec, e.g. patch:size=4,color=0.5")] = BadnetsConfig.trigger,
    epochs: Annotated[int, typer.Option(help="training epochs for both models")] = 2,
    batch_size: Annotated[int, typer.Option(help="minibatch size")] = 128,
    lr: Annotated[float, typer.Option(help="peak learning rate (Adam, one-cycle)")] = 3e-3,
    seed: Annotated[int, typer.Option(help="seed for poisoning, initialisation and batching")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (default runs/badnets-TIMESTAMP)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json instead of the table")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Train a clean and a backdoored model with one recipe and seed; print CA and ASR of both.

    Example: poisonlab run badnets --rate 0.01 --target 8 --trigger patch:size=3
    """
    cfg = BadnetsConfig(dataset=dataset, model=model, mode=mode, target=target, rate=rate,  # type: ignore[arg-type]
                        count=count, trigger=trigger, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    cfg.validate()
    run_dir = make_run_dir(out, "badnets")
    body = run_badnets(cfg, run_dir, progress=not (quiet or json_out))
    if json_out:
        print_json({"run_dir": str(run_dir), **body})
        return
    console.print(badnets_table(body))
    console.print(f"run folder: {run_dir}  ({body['timings']['total_seconds']:.1f} s)")


def experiment_table(body: dict[str, Any]) -> Table:
    """CA and ASR of the clean and the backdoored model, and of each deployed variant, for a config run."""
    m, cfg = body["metrics"], body["config"]
    attack = ", ".join(f"{k}={v}" for k, v in cfg["attack"].items() if k != "name")
    table = Table(title=f"{cfg['attack']['name']} ({attack}) on {cfg['dataset']}, seed {cfg['seed']}: "
                        f"{m['poisoned_samples']} poisoned of {m['train_size']} ({_pct(m['poisoned_fraction'])})")
    for col in ("model", "deployment", "clean accuracy", "attack success rate"):
        table.add_column(col, justify="right" if col not in ("model", "deployment") else "left")
    for name in ("clean", "backdoored"):
        table.add_row(name, "float", _pct(m[name]["clean_accuracy"]), _pct(m[name]["attack_success_rate"]))
        for spec, variants in m.get("deployments", {}).items():
            v = variants[name]
            table.add_row(name, spec, _pct(v["clean_accuracy"]), _pct(v["attack_success_rate"]))
    table.caption = f"{m['asr_definition']} ({m['clean']['asr_images']} images)."
    return table


def paper_table(experiment: str, body: dict[str, Any]) -> Table:
    """The table the experiment's own ``poisonlab run`` command prints."""
    if experiment == "scaling-audit":
        return audit_table(body["metrics"], body["config"]["size"], body["config"]["eps"])
    tables = {"universal": universal_table, "backgradient": curve_table, "compression-artifact": compression_table,
              "defense-matrix": matrix_table, "scaling-camouflage": camouflage_table}
    return tables[experiment](body)


@app.command(CONFIG_COMMAND, hidden=True)
@one_line_errors
def config(
    path: Annotated[Path, typer.Argument(help="experiment config (TOML), e.g. examples/badnets-mnist.toml")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (default runs/NAME-TIMESTAMP)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json instead of the table")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Run the experiment a TOML config describes; its resolved config.toml in the run folder re-runs it exactly.

    A config with an ``experiment`` key (any name in poisonlab.experiment.papers.EXPERIMENTS: universal,
    backgradient, compression-artifact, scaling-audit, scaling-camouflage, defense-matrix) runs that experiment
    with the config's fields; without one it runs the attack pipeline.

    Example: poisonlab run examples/badnets-mnist.toml
    """
    raw = experiment_config.read_toml(path)
    progress = not (quiet or json_out)
    if "experiment" in raw:
        paper = papers.resolve(raw, str(path))
        run_dir = make_run_dir(out, paper.name)
        body = paper.run(run_dir, progress=progress)
        table = paper_table(paper.experiment, body)
    else:
        cfg = experiment_config.load(path)
        run_dir = make_run_dir(out, cfg.name)
        body = run_experiment(cfg, run_dir, progress=progress)
        table = experiment_table(body)
    if json_out:
        print_json({"run_dir": str(run_dir), **body})
        return
    console.print(table)
    console.print(f"run folder: {run_dir}  ({body['timings']['total_seconds']:.1f} s)")
