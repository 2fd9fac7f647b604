"""``poisonlab list``: every registered component, by kind."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from poisonlab.cli.common import console, print_json
from poisonlab.registry import registries


def list_components(
    json_out: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """List datasets, attacks, triggers, models, deployments, defenses, resizers and experiments by name.

    Example: poisonlab list
    """
    regs = registries()
    if json_out:
        print_json({kind: {n: reg.describe(n) for n in reg} for kind, reg in regs.items()})
        return
    for kind, reg in regs.items():
        table = Table(title=kind, title_justify="left", show_header=False, box=None, padding=(0, 2))
        for name in reg:
            table.add_row(Text(name, style="bold"), Text(reg.describe(name)))  # Text: a description is not markup
        console.print(table)
