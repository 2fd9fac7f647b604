"""``poisonlab report RUN_OR_SWEEP``: write the self-contained HTML report of a run folder or a sweep folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from poisonlab.cli.common import one_line_errors, print_json, say
from poisonlab.report.html import write_report


@one_line_errors
def report(
    folder: Annotated[Path, typer.Argument(help="a run folder (report.json) or a sweep folder (sweep.json)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default FOLDER/report.html)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the written path as JSON")] = False,
) -> None:
    """Write one HTML page with the CA/ASR tables, curves, example images, config and environment.

    The page embeds everything (no network assets) and opens in any browser.

    Example: poisonlab report runs/sweep-badnets-mnist-sweep
    """
    path = write_report(folder, out)
    if json_out:
        print_json({"report": str(path)})
    else:
        say(f"report: {path}")
