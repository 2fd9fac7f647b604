"""``poisonlab run compression-artifact``: a model clean in float and backdoored once deployed, measured for real."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from poisonlab.cli.common import one_line_errors, run_and_print
from poisonlab.compress import DEFAULT_DEPLOYMENTS
from poisonlab.experiment.compression import CompressionConfig


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def compression_table(body: dict[str, Any]) -> Table:
    """CA / ASR of the clean and the attacked model, in float and under each deployment."""
    m = body["metrics"]
    table = Table(title=f"compression-artifact backdoor aimed at {m['attacked_deployment']} "
                        f"on {body['config']['dataset']}")
    for col in ("variant", "clean CA", "clean ASR", "attacked CA", "attacked ASR"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, row in m["table"]["attacked"].items():
        ref = m["table"]["clean"][name]
        label = f"[bold]{name}[/bold] (attacked)" if name == m["attacked_deployment"] else name
        table.add_row(label, _pct(ref["clean_accuracy"]), _pct(ref["attack_success_rate"]),
                      _pct(row["clean_accuracy"]), _pct(row["attack_success_rate"]))
    table.caption = m["asr_definition"]
    return table


@one_line_errors
def compression_artifact(
    deployment: Annotated[str, typer.Option(help="deployment attacked: int8-fbgemm, weight-only:4, prune-l1:0.3, ...")]
    = "int8-fbgemm",
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist, digits, synthetic, ...")] = "mnist",
    model: Annotated[str, typer.Option(help="badnets-cnn or small-cnn")] = "badnets-cnn",
    trigger: Annotated[str, typer.Option(help="trigger spec")] = "patch:size=4",
    target: Annotated[int, typer.Option(help="attacker's target class")] = 8,
    epochs: Annotated[int, typer.Option(help="epochs of the clean recipe (and of the pruning attack)")] = 2,
    method: Annotated[str, typer.Option(help="quantization attack: conceal (bin-constrained) or ste (Tian loss)")]
    = "conceal",
    implant_epochs: Annotated[int, typer.Option(help="conceal: epochs implanting the backdoor")] = 1,
    levels: Annotated[int, typer.Option(help="conceal: widen a finer weight grid (int8) to this many steps per sign")]
    = 8,
    attack_epochs: Annotated[int, typer.Option(help="epochs of the quantization attack's fine-tuning")] = 2,
    attack_lr: Annotated[float, typer.Option(help="peak learning rate of the quantization attack")] = 1e-3,
    trigger_weight: Annotated[float, typer.Option(help="pruning attack: weight of the pruned-trigger term")] = 0.5,
    mismatch: Annotated[list[str] | None, typer.Option("--mismatch", help="deployments to measure (repeatable)")]
    = None,
    train_size: Annotated[int | None, typer.Option(help="use only the first N training images (quick runs)")] = None,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json instead of the table")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Train a clean and an attacked model; measure both in float and under every deployment.

    Example: poisonlab run compression-artifact --deployment prune-l1:0.3
    """
    cfg = CompressionConfig(deployment=deployment, dataset=dataset, model=model, trigger=trigger, target=target,
                            epochs=epochs, method=method, implant_epochs=implant_epochs,  # type: ignore[arg-type]
                            levels=levels,
                            attack_epochs=attack_epochs, attack_lr=attack_lr, trigger_weight=trigger_weight,
                            mismatch=tuple(mismatch) if mismatch else DEFAULT_DEPLOYMENTS, train_size=train_size,
                            seed=seed)
    run_and_print("compression-artifact", cfg, out, json_out, quiet, compression_table)
