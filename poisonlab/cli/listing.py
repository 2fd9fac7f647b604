"""``poisonlab list``: every registered component, by kind."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from poisonlab.cli.common import console, print_json
from poisonlab.registry import Registry


def registries() -> dict[str, Registry]:  # type: ignore[type-arg]
    """Every registry, keyed by the plural shown to users."""
    from poisonlab.attacks import ATTACKS
    from poisonlab.compress import DEPLOYMENTS
    from poisonlab.data import DATASETS
    from poisonlab.defenses import DEFENSES
    from poisonlab.models import MODELS
    from poisonlab.scaling.resize import RESIZERS
    from poisonlab.triggers import TRIGGERS

    return {"datasets": DATASETS, "attacks": ATTACKS, "triggers": TRIGGERS, "models": MODELS,
            "deployments": DEPLOYMENTS, "defenses": DEFENSES, "resizers": RESIZERS}


def list_components(
    json_out: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """List datasets, attacks, triggers and models by name.

    Example: poisonlab list
    """
    regs = registries()
    if json_out:
        print_json({kind: {n: reg.describe(n) for n in reg} for kind, reg in regs.items()})
        return
    for kind, reg in regs.items():
        table = Table(title=kind, title_justify="left", show_header=False, box=None, padding=(0, 2))
        for name in reg:
            table.add_row(f"[bold]{name}[/bold]", reg.describe(name))
        console.print(table)
