"""Run folders: where a run writes, checked before any work so that nothing already written is overwritten.

A run writes into a new or empty folder. A folder with files but no finished run is refused unless the
user passes ``--force``; a finished run (its report.json) is never overwritten. Names become folder names
only when they are plain (``run_name``), so a config cannot write outside the runs root.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from poisonlab.core import PoisonlabError
from poisonlab.report.store import REPORT_FILE

CONFIG_FILE = "config.toml"

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")
"""A run or sweep name: one plain folder-name component (no separators, no leading dot, at most 100 chars)."""


def run_name(name: str, field: str = "name") -> str:
    """``name`` when it is safe as a folder name under the runs root, else a one-line error."""
    if not NAME.fullmatch(name) or ".." in name:
        raise PoisonlabError(f"{field}: {name!r} is not a plain folder name; expected letters, digits and . _ + = -, "
                             "starting with a letter or digit, no '/' or '..'")
    return name


def refuse_finished(path: Path | None) -> None:
    """A one-line error when ``path`` already holds a finished run."""
    if path is not None and (path / REPORT_FILE).exists():
        raise PoisonlabError(f"{path}: already holds a finished run (report.json); choose another --out")


def check_out(path: Path | None, force: bool = False) -> None:
    """Refuse an output folder before any work: a file, a finished run, other files without ``force``, or no write.

    Creates nothing; a path that does not exist yet must have a writable folder above it.
    """
    if path is None:
        return
    if path == Path("."):  # also what an empty --out "" becomes
        raise PoisonlabError(f"--out {str(path)!r}: the current folder; expected a folder of the run's own "
                             "(e.g. --out runs/NAME)")
    if path.exists() and not path.is_dir():
        raise PoisonlabError(f"{path}: is a file; expected a folder for the run (or a path that does not exist)")
    refuse_finished(path)
    if path.is_dir():
        try:
            held = sorted(p.name for p in path.iterdir())
        except OSError as e:
            raise PoisonlabError(f"{path}: cannot list the run folder ({e.strerror})") from None
        if held and not force:
            raise PoisonlabError(f"{path}: already holds {len(held)} file(s) ({', '.join(held[:3])}"
                                 f"{', ...' if len(held) > 3 else ''}) but no finished run; choose a new or empty "
                                 "--out, or pass --force to write over them")
        if not os.access(path, os.W_OK | os.X_OK):
            raise PoisonlabError(f"{path}: the run folder is not writable")
        return
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PoisonlabError(f"{path}: cannot create the run folder: {parent} is not a writable folder")


def make_run_dir(out: Path | None, kind: str, force: bool = False, root: Path = Path("runs")) -> Path:
    """``out`` if given (checked by ``check_out``, then created), else ``root/<kind>-<timestamp>``."""
    path = out if out is not None else root / f"{run_name(kind)}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_out(path, force)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise PoisonlabError(f"{path}: cannot write the run folder ({e.strerror})") from None
    return path


def discard_unstarted(path: Path, before: set[Path]) -> None:
    """After a run refused its input (a target outside the data's classes, say), remove what it wrote: its
    config.toml, and the folder itself when that leaves it empty. A run that wrote more is left as it is."""
    added = set(path.iterdir()) - before
    if {p.name for p in added} <= {CONFIG_FILE}:
        for p in added:
            p.unlink()
        if not before:
            path.rmdir()
