"""``poisonlab defend``: repair a backdoored model and report clean accuracy and attack success before and after."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from poisonlab.cli.common import console, one_line_errors, print_json
from poisonlab.core import PoisonlabError, Verdict
from poisonlab.defenses import DATA_SCANNERS, DEFENSES, FinePruning, Retrain, Unlearning
from poisonlab.defenses.subjects import Subject, load_badnets_run
from poisonlab.experiment.rundir import atomic_write_json, make_run_dir, report
from poisonlab.metrics import evaluate
from poisonlab.models import save_model
from poisonlab.training import Recipe

METHODS = ("fine-pruning", "unlearning", "retrain")


def mitigate(subject: Subject, method: str, scanner: str = "spectral", seed: int = 0) -> Verdict:
    """Apply mitigation ``method`` to ``subject``'s backdoored model (``retrain`` drops what ``scanner`` flags)."""
    if method == "fine-pruning":
        return FinePruning(seed=seed).repair(subject.backdoored, subject.clean_reserve)
    if method == "unlearning":
        return Unlearning(seed=seed).repair(subject.backdoored, subject.clean_reserve)
    if method == "retrain":
        if scanner not in DATA_SCANNERS:
            raise PoisonlabError(f"scanner {scanner!r}: expected one of {', '.join(DATA_SCANNERS)}")
        scan = DEFENSES.get(scanner)().scan(subject.backdoored, subject.poisoned.data)
        return Retrain(model_name=subject.model_name, recipe=Recipe(), seed=seed).repair(subject.poisoned.data, scan)
    raise PoisonlabError(f"mitigation {method!r}: expected one of {', '.join(METHODS)}")


@one_line_errors
def defend(
    run: Annotated[Path, typer.Option("--run", help="a 'poisonlab run badnets' folder")],
    method: Annotated[str, typer.Option(help=f"one of {', '.join(METHODS)}")] = "fine-pruning",
    scanner: Annotated[str, typer.Option(help="for retrain: the data scanner whose flagged samples are dropped")]
    = "spectral",
    seed: Annotated[int, typer.Option(help="seed for the mitigation's fine-tuning or retraining")] = 0,
    out: Annotated[Path | None, typer.Option(help="folder for repaired.safetensors and report.json")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Repair the backdoored model of a BadNets run; print CA and ASR before and after.

    Fine-pruning and unlearning use 3,000 clean training images the defender is assumed to hold.

    Example: poisonlab defend --run runs/badnets-20260101-120000 --method unlearning --out runs/repaired
    """
    if method not in METHODS:
        raise PoisonlabError(f"mitigation {method!r}: expected one of {', '.join(METHODS)}")
    subject = load_badnets_run(run)
    before = evaluate(subject.backdoored, subject.test, subject.poisoned)
    t0 = time.perf_counter()
    verdict = mitigate(subject, method, scanner, seed)
    seconds = time.perf_counter() - t0
    assert verdict.model is not None
    after = evaluate(verdict.model, subject.test, subject.poisoned)
    details = {k: v for k, v in verdict.details.items() if isinstance(v, int | float | str | list)}
    result: dict[str, Any] = {
        "method": method, "seconds": seconds, "details": details,
        "before": {k: before[k] for k in ("clean_accuracy", "attack_success_rate")},
        "after": {k: after[k] for k in ("clean_accuracy", "attack_success_rate")},
    }
    if out is not None:
        folder = make_run_dir(out, "defend")
        save_model(verdict.model, folder / "repaired.safetensors")
        atomic_write_json(folder / "report.json", report("defend", {"run": str(run), "method": method,
                                                                     "scanner": scanner, "seed": seed}, result))
    if json_out:
        print_json(result)
        return
    table = Table(title=f"{method} on {run} ({seconds:.1f} s)")
    for col in ("model", "clean accuracy", "attack success rate"):
        table.add_column(col, justify="right")
    for name in ("before", "after"):
        table.add_row(name, f"{100 * result[name]['clean_accuracy']:.2f}%",
                      f"{100 * result[name]['attack_success_rate']:.2f}%")
    console.print(table)
