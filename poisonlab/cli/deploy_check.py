"""``poisonlab deploy-check``: test a model as it will be deployed (int8, fp16, pruned), not only in float."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from poisonlab.cli.common import at_least, one_line_errors, print_json, print_tables, say
from poisonlab.compress import CALIBRATION_IMAGES, DEFAULT_DEPLOYMENTS, calibration_images, parse_deployment
from poisonlab.compress.check import CheckSettings, deploy_check
from poisonlab.compress.weights import STATISTICS, WeightCheckSettings
from poisonlab.core import PoisonlabError, check_seed, in_memory
from poisonlab.defenses import NeuralCleanse
from poisonlab.experiment.subject import open_subject
from poisonlab.report.tables import TableData, deploy_check_tables
from poisonlab.triggers import parse_trigger


@one_line_errors
def deploy_check_command(
    model: Annotated[Path, typer.Argument(help="weights (.safetensors) or a run folder holding them")],
    arch: Annotated[str | None, typer.Option("--arch", "--model", help="architecture of a weights file (a run folder "
                                                                     "names its own; code it names needs this too)")]
    = None,
    dataset: Annotated[str | None, typer.Option(help="dataset (default: the run folder's)")] = None,
    holdout: Annotated[float | None, typer.Option(help="with --dataset: share of rows held out as test images")]
    = None,
    which: Annotated[str | None, typer.Option(help="with a run folder: which model (default: the attacked one)")]
    = None,
    deployment: Annotated[list[str] | None, typer.Option("--deployment", "-d", help="deployment (repeatable)")] = None,
    trigger: Annotated[str | None, typer.Option(help="known trigger for ASR, e.g. patch:size=4")] = None,
    target: Annotated[int | None, typer.Option(help="attacker's target class for --trigger")] = None,
    calibration: Annotated[int, typer.Option(help="training images that calibrate static int8")] = CALIBRATION_IMAGES,
    test_size: Annotated[int, typer.Option(help="test images to use (0: all)")] = 0,
    search_steps: Annotated[int, typer.Option(help="steps of the divergence-stamp search (0: skip it)")] = 150,
    scan: Annotated[bool, typer.Option(help="also run Neural Cleanse on the float model and every variant")] = False,
    scan_steps: Annotated[int, typer.Option(help="Neural Cleanse optimisation steps per class")] = 300,
    max_disagreement: Annotated[float, typer.Option(help="flag above this clean disagreement with float (on the "
                                                        "images float is confident on)")] = 0.02,
    max_divergence: Annotated[float, typer.Option(help="flag above this stamped disagreement with float (on the "
                                                      "images float is confident on)")] = 0.15,
    max_asr_gain: Annotated[float, typer.Option(help="flag when ASR exceeds float's by more than this")] = 0.10,
    confident: Annotated[float, typer.Option(help="float's top softmax from which its answer counts as confident: "
                                                  "agreement and divergence are judged on those images")] = 0.8,
    weight_check: Annotated[bool, typer.Option(help="check the float model's weights and clean activations for "
                                                    "outliers, dormant paths and odd activation ranges")] = True,
    seed: Annotated[int, typer.Option(help="seed for calibration and search samples")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Evaluate the float model and every deployed variant; exit 1 when a variant departs from the float model.

    Example: poisonlab deploy-check runs/compression-artifact-X --trigger patch:size=4 --target 8 -d int8-fbgemm
    """
    if (trigger is None) != (target is None):
        raise PoisonlabError("deploy-check: --trigger and --target go together")
    check_seed(seed, "--seed")
    for flag, value in (("--max-disagreement", max_disagreement), ("--max-divergence", max_divergence),
                        ("--max-asr-gain", max_asr_gain), ("--confident", confident)):
        at_least(flag, value, 0.0)
    settings = CheckSettings(max_disagreement, max_divergence, max_asr_gain, confident, search_steps=search_steps,
                             seed=seed)
    trig = parse_trigger(trigger) if trigger is not None else None
    if test_size < 0:
        raise PoisonlabError(f"--test-size {test_size}: expected >= 0")
    deployments = [parse_deployment(s) for s in (deployment or DEFAULT_DEPLOYMENTS)]
    if not model.exists():
        raise PoisonlabError(f"{model}: no such weights file or run folder")
    if not model.is_dir() and (arch is None or dataset is None):
        raise PoisonlabError(f"{model}: a weights file alone names no architecture or data; pass --arch and --dataset "
                             "(or give its run folder)")
    subject = open_subject(model if model.is_dir() else None, dataset, None if model.is_dir() else model, arch,
                           which, holdout)
    net, weights, arch_name, data_spec = subject.model, subject.loaded, subject.architecture, subject.dataset
    train_set, test = subject.train, in_memory(subject.held_out("deploy-check").subset(slice(0, test_size or None)))
    calib = calibration_images(train_set, seed, calibration)
    pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed + 1))[: settings.search_images]
    search = in_memory(train_set.subset(pick))
    scanner = NeuralCleanse(steps=scan_steps, batch_size=min(128, len(search))) if scan else None
    limits = WeightCheckSettings() if weight_check else None
    result = deploy_check(net, deployments, test, search, settings, trig, target, scanner, calib, limits)
    result.update(model=weights, arch=arch_name, dataset=data_spec)
    if json_out:
        print_json(result)
    else:
        title = f"deploy-check: {weights} ({arch_name}) on {data_spec}, {len(test)} test images"
        print_tables(deploy_check_tables(result, title) + ([weight_table(result["weights"])] if limits else []))
        if result["flagged"]:
            say(", ".join(result["flagged"]), label=f"{len(result['flagged'])} variant(s) depart from the float model:",
                style="red")
        if limits and result["weights"]["flagged"]:
            say("; ".join(result["weights"]["reasons"]), label="the weight check flags the float model:", style="red")
    if result["flagged"] or (limits and result["weights"]["flagged"]):
        raise typer.Exit(1)


def weight_table(check: dict[str, Any]) -> TableData:
    """The weight check's scores per layer, each over its limit in red."""
    limits = check["limits"]

    def cell(row: dict[str, Any], statistic: str) -> str:
        value = row[statistic]
        if value is None:
            return "-"
        limit = limits["outlier_grouped"] if statistic == "outlier" and row.get("grouped") else limits[statistic]
        return f"[red]{value:.2f}[/red]" if value > limit else f"{value:.2f}"

    table = TableData(f"weight check of the float model on {check['images']} clean images",
                      ["layer", "kind", *(f"{s} (limit {limits[s]:g})" for s in STATISTICS), "dormant inputs"],
                      id="weight-check")
    for row in check["layers"]:
        kind = f"{row['kind']} (grouped)" if row.get("grouped") else row["kind"]
        table.rows.append([row["layer"], kind, *(cell(row, s) for s in STATISTICS), str(row["dormant_inputs"])])
    if "outlier_grouped" in limits:
        table.title += f"; a grouped conv's outlier limit is {limits['outlier_grouped']:g}"
    table.caption = "FLAGGED: " + "; ".join(check["reasons"]) if check["flagged"] else "no layer over a limit"
    return table

