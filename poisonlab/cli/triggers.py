"""``poisonlab triggers``: a figure of every trigger on real images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from poisonlab.cli.common import one_line_errors, say
from poisonlab.data import load_dataset
from poisonlab.report.figures import image_grid, save_figure
from poisonlab.report.store import check_out_file
from poisonlab.triggers import parse_trigger

GALLERY = (
    "patch:size=3",
    "patch:size=5,position=top-left,color=0.5",
    "checkerboard:size=4",
    "pixel",
    "blend:alpha=0.2",
    "blend:alpha=0.5",
)


@one_line_errors
def triggers(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write")] = Path("triggers.png"),
    dataset: Annotated[str, typer.Option(help="dataset the examples come from")] = "mnist",
    spec: Annotated[list[str] | None, typer.Option("--trigger", help="trigger specs (repeatable)")] = None,
) -> None:
    """Draw each trigger stamped on a few test images (training images when the data has no test part).

    Example: poisonlab triggers --trigger patch:size=4 --trigger blend:alpha=0.3 -o triggers.png
    """
    check_out_file(out, "trigger gallery")
    train, test = load_dataset(dataset)
    sample = (test if len(test) else train).x[:6]
    rows = [(s, parse_trigger(s)(sample, None), [s.partition(":")[0]] * len(sample)) for s in (spec or GALLERY)]
    save_figure(image_grid(rows, title="poisonlab triggers"), out)
    say(f"wrote {out}")
