"""``poisonlab defend``: repair a run's backdoored model; clean accuracy and attack success before and after."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from torch import nn

from poisonlab.cli.common import ForceOpt, one_line_errors, print_json, print_tables
from poisonlab.core import PoisonlabError
from poisonlab.defenses import names_of
from poisonlab.defenses.apply import DEFAULT_RESERVE, apply_defenses, defender_data
from poisonlab.experiment.pipeline import open_run
from poisonlab.experiment.rundir import check_out, make_run_dir
from poisonlab.experiment.victim import fit
from poisonlab.models import save_models
from poisonlab.report.store import atomic_write_json, report
from poisonlab.report.tables import before_after_tables


@one_line_errors
def defend(
    run: Annotated[Path, typer.Option("--run", help="a pipeline run folder (poisonlab run badnets, CONFIG.toml, ...)")],
    method: Annotated[str, typer.Option(help="a mitigation: fine-pruning, unlearning or retrain")] = "fine-pruning",
    scanner: Annotated[str, typer.Option(help="for retrain: the data scanner whose flagged samples are dropped")]
    = "spectral",
    reserve: Annotated[int | None, typer.Option(help=f"clean training images the defender holds (default: "
                                                     f"{DEFAULT_RESERVE}, or every clean one when fewer)")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for the mitigation (default: the run's)")] = None,
    model: Annotated[str | None, typer.Option(help="the run's architecture, when it is code (package.module:factory)")]
    = None,
    out: Annotated[Path | None, typer.Option(help="folder for the repaired model and report.json")] = None,
    force: ForceOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Repair the backdoored model of a pipeline run; print CA and ASR before and after, on the whole test set.

    The defender holds RESERVE clean training images (fine-pruning and unlearning tune on them).

    Example: poisonlab defend --run runs/badnets-20260101-120000 --method unlearning --out runs/repaired
    """
    if method not in names_of("mitigation"):
        raise PoisonlabError(f"mitigation {method!r}: expected one of {', '.join(names_of('mitigation'))}")
    if method == "retrain" and scanner not in names_of("data-scanner"):
        raise PoisonlabError(f"scanner {scanner!r}: expected one of {', '.join(names_of('data-scanner'))}")
    check_out(out, force)
    subject = open_run(run, model)
    cfg = subject.config if seed is None else dataclasses.replace(subject.config, seed=seed)
    d = subject.data
    specs = [scanner, f"retrain:scanner={scanner}"] if method == "retrain" else [method]
    scheme = "reserve" if reserve is None else f"reserve:{reserve}"
    defender = defender_data(scheme, d.train, d.poisoned.indices, d.test, d.triggered, cfg.seed)
    repaired: dict[str, nn.Module] = {}
    results = apply_defenses(specs, subject.models["backdoored"], d.train, d.poisoned.indices, defender,
                             refit=lambda data: fit(cfg, data, "retraining"), target=d.poisoned.target, seed=cfg.seed,
                             repaired=repaired)
    result: dict[str, Any] = {"method": method, "reserve": len(defender.clean), "seed": cfg.seed, **results[specs[-1]]}
    if method == "retrain":
        result["scan"] = results[scanner]
    if out is not None:
        folder = make_run_dir(out, "defend", force)
        files = save_models(folder, cfg.model, d.clean_train, {"repaired": repaired[specs[-1]]})
        atomic_write_json(folder / "report.json", report("defend", {"run": str(run), "method": method,
                                                                     "scanner": scanner, "seed": cfg.seed}, result,
                                                         files=files))
    if json_out:
        print_json(result)
        return
    print_tables(before_after_tables(result, f"{method} on {run} ({result['seconds']:.1f} s), defender holds "
                                             f"{result['reserve']} clean images"))
