"""Run folders: where a run writes, refused when it already holds a finished run."""

from __future__ import annotations

import time
from pathlib import Path

from poisonlab.core import PoisonlabError
from poisonlab.report.store import REPORT_FILE


def refuse_finished(path: Path | None) -> None:
    """A one-line error when ``path`` already holds a finished run (checked before any work starts)."""
    if path is not None and (path / REPORT_FILE).exists():
        raise PoisonlabError(f"{path}: already holds a report.json; choose another --out")


def make_run_dir(out: Path | None, kind: str, root: Path = Path("runs")) -> Path:
    """``out`` if given (created; refused when it holds a report), else ``root/<kind>-<timestamp>``."""
    path = out if out is not None else root / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    refuse_finished(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PoisonlabError(f"{path}: cannot create the run folder ({e.strerror})") from None
    return path
