"""``poisonlab run defense-matrix``: every defense against every attack, side by side with its false alarms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from poisonlab.cli.common import one_line_errors, run_and_print
from poisonlab.experiment.defense_matrix import MATRIX_COLUMNS, MatrixConfig, matrix_rows


def matrix_table(body: dict[str, Any]) -> Table:
    """One row per (attack, defense): detection figures for scanners, CA/ASR after for mitigations, seconds."""
    m = body["metrics"]
    table = Table(title=f"defense matrix on {body['config']['dataset']} ({m['train_size']} training images, "
                        f"defender holds {m['reserve']} clean ones)")
    for col in MATRIX_COLUMNS:
        table.add_column(col, justify="left" if col in ("attack", "defense", "other") else "right")
    for row in matrix_rows(m):
        table.add_row(*row)
    table.caption = (f"CA/ASR after the mitigation on that row (retrain without the flagged samples for scanners). "
                     f"{m['asr_definition']}")
    return table


@one_line_errors
def defense_matrix(
    dataset: Annotated[str, typer.Option(help="dataset spec")] = MatrixConfig.dataset,
    model: Annotated[str, typer.Option(help="victim architecture")] = MatrixConfig.model,
    epochs: Annotated[int, typer.Option(help="training epochs of every victim model")] = MatrixConfig.epochs,
    train_size: Annotated[int | None, typer.Option(help="train on a seeded subset of this size (default all)")]
    = None,
    clean_reference: Annotated[bool, typer.Option(help="also scan a clean model (false alarms)")] = True,
    seed: Annotated[int, typer.Option(help="seed for data, poisoning, training and defenses")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (default runs/defense-matrix-TIME)")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json instead of the table")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Apply every defense to BadNets all-to-one (1%, 10%) and all-to-all (10%); a config file names any attacks.

    Example: poisonlab run defense-matrix --train-size 20000
    """
    cfg = MatrixConfig(dataset=dataset, model=model, epochs=epochs, train_size=train_size,
                       clean_reference=clean_reference, seed=seed)
    run_and_print("defense-matrix", cfg, out, json_out, quiet, matrix_table)
