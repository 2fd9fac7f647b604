"""``poisonlab examples``: the example configs shipped inside the package, listed or copied out to edit and run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from poisonlab.cli.common import ForceOpt, one_line_errors, print_json, print_tables, say
from poisonlab.core import PoisonlabError
from poisonlab.report.store import atomic_write_bytes
from poisonlab.report.tables import TableData

SHIPPED = Path(__file__).resolve().parent.parent / "examples"
"""The folder of example configs inside the installed package."""


def shipped() -> dict[str, Path]:
    """Example name (file stem) -> its config file, in name order."""
    return {p.stem: p for p in sorted(SHIPPED.glob("*.toml"))}


def summary(path: Path) -> str:
    """The first comment line of a config: what it reproduces."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


@one_line_errors
def examples(
    copy: Annotated[Path | None, typer.Option("--copy", help="copy every example config into this folder")] = None,
    force: ForceOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="print name, file and summary as JSON")] = False,
) -> None:
    """List the example configs shipped with poisonlab, or copy them out (--copy DIR) to edit and run.

    Example: poisonlab examples --copy examples && poisonlab run examples/badnets-mnist.toml
    """
    found = shipped()
    if not found:
        raise PoisonlabError(f"{SHIPPED}: no example configs installed; reinstall poisonlab")
    if copy is not None:
        if copy.exists() and not copy.is_dir():
            raise PoisonlabError(f"{copy}: is a file; expected a folder for the example configs")
        clash = sorted(name + ".toml" for name in found if (copy / f"{name}.toml").exists())
        if clash and not force:
            raise PoisonlabError(f"{copy}: already holds {', '.join(clash[:3])}{', ...' if len(clash) > 3 else ''}; "
                                 "pass --force to overwrite, or choose another folder")
        try:
            copy.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PoisonlabError(f"{copy}: cannot create the folder ({e.strerror})") from None
        for name, path in found.items():
            atomic_write_bytes(copy / f"{name}.toml", path.read_bytes())
        say(f"copied {len(found)} example configs to {copy}; run one with: poisonlab run {copy / 'badnets-mnist.toml'}")
        return
    if json_out:
        print_json([{"name": n, "file": str(p), "summary": summary(p)} for n, p in found.items()])
        return
    print_tables([TableData("shipped example configs (poisonlab examples --copy DIR to edit and run them)",
                            ["name", "reproduces"], [[n, summary(p)] for n, p in found.items()])])
