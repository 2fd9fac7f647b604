"""``poisonlab scan data`` and ``poisonlab scan model``: find poisoned training samples, find a backdoored model.

Both print one verdict line and exit 1 when they flag anything (0 when not), like deploy-check.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from poisonlab.cli.common import ForceOpt, one_line_errors, print_json, print_tables, print_verdict
from poisonlab.core import PoisonlabError, in_memory
from poisonlab.data.user import read_row_numbers
from poisonlab.defenses import DEFENSES, NeuralCleanse, names_of
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.experiment.rundir import check_out, make_run_dir
from poisonlab.experiment.subject import Subject, open_subject
from poisonlab.report.figures import reversed_triggers, save_figure
from poisonlab.report.store import atomic_write_bytes, atomic_write_json
from poisonlab.report.tables import data_scan_tables, model_scan_tables
from poisonlab.training.trainer import resolve_device

app = typer.Typer(help="Scan training data for poison, or a model for a backdoor.", no_args_is_help=True)

RunOpt = Annotated[Path | None, typer.Option("--run", help="a run folder of `poisonlab train` or a pipeline run")]
DatasetOpt = Annotated[str | None, typer.Option(help="data spec (npz:PATH, folder:PATH, mnist, ...) when not --run")]
WeightsOpt = Annotated[Path | None, typer.Option(help="safetensors weights of --model, when not --run")]
ModelOpt = Annotated[str | None, typer.Option(help="architecture: badnets-cnn, small-cnn, package.module:factory or a "
                                                   "TorchScript file (needed with --run when the run's is code)")]
HoldoutOpt = Annotated[float | None, typer.Option(help="with --dataset: hold out this share of rows (not scanned)")]
OutOpt = Annotated[Path | None, typer.Option(help="folder for report.json and scores (default runs/KIND-TIMESTAMP)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
DeviceOpt = Annotated[str, typer.Option(help="where the model runs: cpu, cuda, cuda:N or auto")]


def _verdict(result: dict[str, Any]) -> str:
    """One line: what was flagged, or why nothing was though a class separates."""
    n, scanned = result["flagged"], f"{result['samples']:,} rows"
    if n:
        return (f"POISON SUSPECTED: {n:,} of {scanned} flagged, in class(es) "
                f"{', '.join(result['suspicious_classes'])}; ranked scores in {result['out']}")
    rejected = {c: r for c, r in result["gate"].items() if r.startswith("rejected")}
    if rejected:
        return (f"nothing flagged in {scanned}, but {len(rejected)} class(es) split into two separated groups and "
                f"were not flagged: " + "; ".join(f"{c}: {r}" for c, r in rejected.items())
                + f". Inspect the top of {result['out']}/scores.csv")
    return f"nothing flagged in {scanned}: no class was judged poisoned ({result['defense']})"


def _scores_csv(subject: Subject, scores: torch.Tensor, flagged: torch.Tensor, ranked: list[int]) -> bytes:
    """Every scanned row in ``ranked`` order (highest score first): dataset row, file, label, score, flagged."""
    marked = torch.zeros(len(scores), dtype=torch.bool)
    marked[flagged] = True
    files, names, rows = subject.data.files, subject.train.classes, subject.data.rows.tolist()
    lines = ["row,file,label,score,flagged"]
    for i in ranked:
        file = (files[i] if files else "").replace('"', '""')
        lines.append(f'{rows[i]},"{file}",{names[int(subject.train.y[i])]},{float(scores[i]):.6g},{int(marked[i])}')
    return ("\n".join(lines) + "\n").encode()


@app.command("data")
@one_line_errors
def data(
    run: RunOpt = None,
    dataset: DatasetOpt = None,
    weights: WeightsOpt = None,
    model: ModelOpt = None,
    holdout: HoldoutOpt = None,
    defense: Annotated[str, typer.Option(help="a data scanner: spectral, activation-clustering, label-consistency, "
                                              "spectre, confusion-training or out-of-fold")] = "spectral",
    layer: Annotated[str | None, typer.Option(help="feature layer: auto, penultimate, pre-activation, conv, a module "
                                                   "name, or an index (default: the scanner's own: auto for spectral "
                                                   "and activation-clustering, conv for label-consistency)")] = None,
    truth: Annotated[Path | None, typer.Option(help="known poisoned rows (.npy, .json or text of row numbers), to "
                                                    "score the scan")] = None,
    top: Annotated[int, typer.Option(help="highest-scoring rows to print")] = 10,
    device: DeviceOpt = "cpu",
    out: OutOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Scan every training row of a dataset with a model trained on it; exit 1 when any row is flagged.

    Rows are the dataset's own (row of the npz, file of the folder). The output folder holds report.json and
    scores.csv, every row ranked by suspicion.

    Example: poisonlab scan data --run runs/suspect --defense activation-clustering
    """
    if defense not in names_of("data-scanner"):
        raise PoisonlabError(f"data scanner {defense!r}: expected one of {', '.join(names_of('data-scanner'))}")
    if top < 0:
        raise PoisonlabError(f"--top {top}: expected >= 0")
    check_out(out, force)
    where = resolve_device(device)
    subject = open_subject(run, dataset, weights, model, holdout=holdout)
    train = subject.train
    truth_at, unscanned = subject.truth, 0
    if truth is not None:
        position = {r: i for i, r in enumerate(subject.data.rows.tolist())}
        given = read_row_numbers(truth).tolist()
        total = subject.data.total
        if given and max(given) >= total:
            raise PoisonlabError(f"{truth}: row {max(given)} is not a row of {subject.dataset} (its {total} training "
                                 f"rows are 0 to {total - 1})")
        truth_at = torch.tensor([position[r] for r in given if r in position], dtype=torch.long)
        unscanned = len(given) - len(truth_at)
        if given and not len(truth_at):
            raise PoisonlabError(f"{truth}: none of its {len(given)} rows is a scanned training row (rows 0 to "
                                 f"{max(position, default=-1)}); expected row numbers of the dataset")
    chosen = {} if layer is None else {"layer": int(layer) if layer.lstrip("-").isdigit() else layer}
    scanner = DEFENSES.build(defense, device=device, **chosen)  # device: for the scanners that train models
    if layer is not None and not hasattr(scanner, "layer"):
        raise PoisonlabError(f"--layer {layer}: data scanner {defense} reads no feature layer (it trains models of "
                             "its own); leave --layer out")
    t0 = time.perf_counter()
    verdict = scanner.scan(subject.model.to(where), train)
    seconds = time.perf_counter() - t0
    folder = make_run_dir(out, "scan-data", force)
    names, rows, files = train.classes, subject.data.rows, subject.data.files
    ranked = verdict.scores.argsort(descending=True, stable=True).tolist()
    result: dict[str, Any] = {
        "defense": defense, "layer": getattr(scanner, "layer", None), "dataset": subject.dataset,
        "model": subject.loaded,
        "samples": len(train), "seconds": seconds, "flagged": len(verdict.flagged),
        "suspicious_classes": [names[k] for k in verdict.details["suspicious_classes"]],
        "gate": {names[int(k)]: r for k, r in verdict.details.get("gate", {}).items()},
        "top": [{"row": int(rows[i]), "file": files[i] if files else None, "label": names[int(train.y[i])],
                 "score": float(verdict.scores[i])} for i in ranked[:top]],
        "out": str(folder)}
    if truth_at is not None:
        result["detection"] = {**detection_metrics(verdict, truth_at, len(train)), "truth_rows_not_scanned": unscanned}
    result["verdict"] = _verdict(result)
    atomic_write_bytes(folder / "scores.csv", _scores_csv(subject, verdict.scores, verdict.flagged, ranked))
    atomic_write_json(folder / "report.json", {**result, "flagged_rows": rows[verdict.flagged].tolist()})
    if json_out:
        print_json(result)
    else:
        counts = torch.bincount(train.y[verdict.flagged], minlength=train.num_classes).tolist()
        print_tables(data_scan_tables(result, [(name + (" (suspicious)" if name in result["suspicious_classes"]
                                                        else ""), counts[k]) for k, name in enumerate(names)]))
        print_verdict(result["verdict"], bool(result["flagged"]))
    if result["flagged"]:
        raise typer.Exit(1)


@app.command("model")
@one_line_errors
def model_scan(
    run: RunOpt = None,
    which: Annotated[str | None, typer.Option(help="with --run: which model (default: the attacked or trained one)")]
    = None,
    dataset: DatasetOpt = None,
    weights: WeightsOpt = None,
    model: ModelOpt = None,
    holdout: HoldoutOpt = None,
    images: Annotated[int, typer.Option(help="clean held-out images the triggers are optimised on")] = 2000,
    steps: Annotated[int, typer.Option(help="optimisation steps per class")] = 300,
    max_classes: Annotated[int | None, typer.Option(help="scan only this many sampled classes (budget)")] = None,
    device: DeviceOpt = "cpu",
    out: OutOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Neural Cleanse: reverse-engineer a minimal trigger per class; exit 1 when a class has anomaly index > 2.

    Example: poisonlab scan model --run runs/badnets-20260101-120000 --out runs/nc
    """
    if images < 1:
        raise PoisonlabError(f"--images {images}: expected at least 1")
    check_out(out, force)
    where = resolve_device(device)
    subject = open_subject(run, dataset, weights, model, which, holdout)
    held_out = subject.held_out("scan model")
    cleanse = NeuralCleanse(steps=steps, max_classes=max_classes)
    t0 = time.perf_counter()
    verdict = cleanse.scan(subject.model.to(where), in_memory(held_out.subset(slice(0, images))),
                           progress=not json_out)
    seconds = time.perf_counter() - t0
    d = verdict.details
    names = held_out.classes
    flagged = [] if verdict.flagged is None else verdict.flagged.tolist()
    folder = make_run_dir(out, "scan-model", force)
    result = {"flagged_classes": [names[k] for k in flagged], "seconds": seconds, "model": subject.loaded,
              "classes": [names[k] for k in d["classes"]], "mask_l1": d["mask_l1"],
              "anomaly_index": d["anomaly_index"], "trigger_success": d["trigger_success"], "out": str(folder)}
    result["verdict"] = (f"BACKDOOR SUSPECTED: class(es) {', '.join(result['flagged_classes'])} have a trigger far "
                         f"smaller than the others' (anomaly index > 2); triggers in {folder}/triggers.png"
                         if flagged else f"no class stands out (every anomaly index <= 2, {len(d['classes'])} classes "
                                         "scanned): no small-trigger backdoor found")
    atomic_write_json(folder / "report.json", result)
    save_figure(reversed_triggers(d, names), folder / "triggers.png")
    if json_out:
        print_json(result)
    else:
        print_tables(model_scan_tables(result))
        print_verdict(result["verdict"], bool(flagged))
    if flagged:
        raise typer.Exit(1)
