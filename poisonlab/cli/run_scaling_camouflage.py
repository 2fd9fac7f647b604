"""``poisonlab run scaling-camouflage``: backdoor poison hidden in the pipeline's downscale (Quiring & Rieck 2020)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from poisonlab.cli.common import one_line_errors, run_and_print
from poisonlab.experiment.scaling_camouflage import CamouflageConfig


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def camouflage_table(body: dict[str, Any]) -> Table:
    """CA and both ASRs per run, then the data scanners' detection of the camouflaged poison."""
    m, cfg = body["metrics"], body["config"]
    hr = "x".join(map(str, m["high_resolution"]))
    low = "x".join(map(str, m["pipeline_size"]))
    table = Table(title=f"scaling camouflage: {cfg['count']} poisoned of {m['train_size']} {hr} images, pipeline "
                        f"{cfg['resizer']} to {low}, target {cfg['target']}")
    for col in ("run", "CA", "ASR visible", "ASR camouflaged", "note"):
        table.add_column(col, justify="left" if col in ("run", "note") else "right")
    for name, r in m["runs"].items():
        note = ""
        if "psnr_poisoned_vs_original_db" in r:
            note = (f"poisoned vs original {r['psnr_poisoned_vs_original_db']:.1f} dB, "
                    f"{r['labels_changed']} labels changed")
        elif "psnr_poisoned_vs_clean_db" in r:
            note = f"poisoned vs clean {r['psnr_poisoned_vs_clean_db']:.1f} dB (visible)"
        table.add_row(name, _pct(r["clean_accuracy"]), _pct(r["asr_visible"]), _pct(r.get("asr_camouflaged")), note)
    for attack, scanners in m["detection"].items():
        for scanner, d in scanners.items():
            table.add_row(f"{scanner} on {attack} data", "", "", "",
                          f"P {d['precision']:.3f} R {d['recall']:.3f} F1 {d['f1']:.3f} AUROC {d['auroc']:.3f}")
    table.caption = f"{m['upscaled_note']}. {m['asr_definition']}"
    return table


@one_line_errors
def scaling_camouflage(
    dataset: Annotated[str, typer.Option(help="dataset spec (upscaled to make the high-resolution set)")]
    = CamouflageConfig.dataset,
    train_size: Annotated[int, typer.Option(help="seeded training subset")] = CamouflageConfig.train_size,
    ratio: Annotated[int, typer.Option(help="upscale factor of the high-resolution set")] = CamouflageConfig.ratio,
    resizer: Annotated[str, typer.Option(help="the victim pipeline's downscale")] = CamouflageConfig.resizer,
    count: Annotated[int, typer.Option(help="poisoned images")] = CamouflageConfig.count,
    target: Annotated[int, typer.Option(help="target class")] = CamouflageConfig.target,
    epochs: Annotated[int, typer.Option(help="training epochs of every model")] = CamouflageConfig.epochs,
    seed: Annotated[int, typer.Option(help="seed for data, poisoning and training")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (default runs/scaling-camouflage-TIME)")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json instead of the table")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Hide a BadNets trigger in the pipeline's downscale; compare with visible BadNets and the scaling defenses.

    Example: poisonlab run scaling-camouflage --train-size 10000 --count 100
    """
    cfg = CamouflageConfig(dataset=dataset, train_size=train_size, ratio=ratio, resizer=resizer, count=count,
                           target=target, epochs=epochs, seed=seed)
    run_and_print("scaling-camouflage", cfg, out, json_out, quiet, camouflage_table)
