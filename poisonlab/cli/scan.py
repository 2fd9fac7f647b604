"""``poisonlab scan data`` and ``poisonlab scan model``: find poisoned training samples, find a backdoored model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from poisonlab.cli.common import one_line_errors, print_json, print_tables
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data import load_dataset
from poisonlab.defenses import DEFENSES, NeuralCleanse, names_of
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.experiment.pipeline import open_run
from poisonlab.experiment.rundir import make_run_dir
from poisonlab.models import load_model
from poisonlab.report.figures import reversed_triggers, save_figure
from poisonlab.report.store import atomic_write_json
from poisonlab.report.tables import data_scan_tables, model_scan_tables

app = typer.Typer(help="Scan training data for poison, or a model for a backdoor.", no_args_is_help=True)

RunOpt = Annotated[Path | None, typer.Option("--run", help="a pipeline run folder (scored against its ground truth)")]
DatasetOpt = Annotated[str | None, typer.Option(help="data spec (npz:PATH, folder:PATH, mnist, ...) when not --run")]
WeightsOpt = Annotated[Path | None, typer.Option(help="safetensors weights of the model, when not --run")]
ModelOpt = Annotated[str, typer.Option(help="architecture of --weights")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON")]


def _subject(run: Path | None, dataset: str | None, weights: Path | None, model: str,
             which: str = "backdoored") -> tuple[ImageSet, ImageSet, Any, torch.Tensor | None]:
    """(training data, held-out data, model, ground-truth poisoned indices or None) from the options."""
    if run is not None:
        s = open_run(run)
        return s.data.train, s.data.test, s.models[which], s.data.poisoned.indices
    if dataset is None or weights is None:
        raise PoisonlabError("scan: expected --run RUN_DIR, or both --dataset SPEC and --weights PATH")
    train, test = load_dataset(dataset)
    return train, test, load_model(model, train.shape, train.num_classes, weights), None


@app.command("data")
@one_line_errors
def data(
    run: RunOpt = None,
    dataset: DatasetOpt = None,
    weights: WeightsOpt = None,
    model: ModelOpt = "badnets-cnn",
    defense: Annotated[str, typer.Option(help="a data scanner: spectral or activation-clustering")] = "spectral",
    layer: Annotated[str, typer.Option(help="feature layer: penultimate, pre-activation, conv, or an index")]
    = "penultimate",
    out: Annotated[Path | None, typer.Option(help="write flagged indices and scores as JSON here")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Flag the training samples a data scanner judges poisoned, using a model trained on that data.

    Example: poisonlab scan data --run runs/badnets-20260101-120000 --defense activation-clustering
    """
    if defense not in names_of("data-scanner"):
        raise PoisonlabError(f"data scanner {defense!r}: expected one of {', '.join(names_of('data-scanner'))}")
    train, _, net, truth = _subject(run, dataset, weights, model)
    scanner = DEFENSES.build(defense, layer=int(layer) if layer.lstrip("-").isdigit() else layer)
    t0 = time.perf_counter()
    verdict = scanner.scan(net, train)
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {"defense": defense, "layer": layer, "samples": len(train), "seconds": seconds,
                              "flagged": len(verdict.flagged),
                              "suspicious_classes": verdict.details["suspicious_classes"]}
    if truth is not None:
        result["detection"] = detection_metrics(verdict, truth, len(train))
    if out is not None:
        atomic_write_json(out, {**result, "flagged_indices": verdict.flagged.tolist(),
                                "scores": verdict.scores.tolist()})
    if json_out:
        print_json(result)
        return
    counts = torch.bincount(train.y[verdict.flagged], minlength=train.num_classes).tolist()
    print_tables(data_scan_tables(result, [(name + (" (suspicious)" if k in result["suspicious_classes"] else ""),
                                            counts[k]) for k, name in enumerate(train.classes)]))


@app.command("model")
@one_line_errors
def model_scan(
    run: RunOpt = None,
    which: Annotated[str, typer.Option(help="with --run: backdoored or clean model")] = "backdoored",
    dataset: DatasetOpt = None,
    weights: WeightsOpt = None,
    model: ModelOpt = "badnets-cnn",
    images: Annotated[int, typer.Option(help="clean held-out images the triggers are optimised on")] = 2000,
    steps: Annotated[int, typer.Option(help="optimisation steps per class")] = 300,
    max_classes: Annotated[int | None, typer.Option(help="scan only this many sampled classes (budget)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for report.json and triggers.png")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Neural Cleanse: reverse-engineer a minimal trigger per class; flag classes with anomaly index > 2.

    Example: poisonlab scan model --run runs/badnets-20260101-120000 --out runs/nc
    """
    if which not in ("backdoored", "clean"):
        raise PoisonlabError(f"--which {which!r}: expected backdoored or clean")
    if images < 1:
        raise PoisonlabError(f"--images {images}: expected at least 1")
    _, held_out, net, _ = _subject(run, dataset, weights, model, which)
    cleanse = NeuralCleanse(steps=steps, max_classes=max_classes)
    t0 = time.perf_counter()
    verdict = cleanse.scan(net, held_out.subset(slice(0, images)), progress=not json_out)
    seconds = time.perf_counter() - t0
    d = verdict.details
    names = held_out.classes
    flagged = [] if verdict.flagged is None else verdict.flagged.tolist()
    result = {"flagged_classes": [names[k] for k in flagged], "seconds": seconds,
              "classes": [names[k] for k in d["classes"]], "mask_l1": d["mask_l1"],
              "anomaly_index": d["anomaly_index"], "trigger_success": d["trigger_success"]}
    if out is not None:
        folder = make_run_dir(out, "neural-cleanse")
        atomic_write_json(folder / "report.json", result)
        save_figure(reversed_triggers(d, names), folder / "triggers.png")
    if json_out:
        print_json(result)
        return
    print_tables(model_scan_tables(result))
