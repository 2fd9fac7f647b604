"""Files of a run folder, written atomically (an interrupted run leaves no half-written result), and the report body."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from poisonlab.core import PoisonlabError, check_regular

REPORT_SCHEMA = "poisonlab.report/1"
REPORT_FILE = "report.json"
LOCK_FILE = ".lock"
"""Held (flock) by the process writing a folder (a sweep, a fetch), so that a second one there is refused."""


@contextlib.contextmanager
def locked(folder: Path, what: str = "sweep") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (its ``.lock`` file) for a while; a second holder gets a one-line error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole block
    except OSError as e:
        raise PoisonlabError(f"{folder}: cannot create or lock the {what} folder ({e.strerror})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PoisonlabError(f"{folder}: another {what} is running in this folder; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_out_file(path: Path, what: str = "output file") -> None:
    """Refuse, before any work, an output file path that is a folder or whose folder is missing or not writable."""
    if path.is_dir():
        raise PoisonlabError(f"{path}: is a folder; expected a path for the {what}")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise PoisonlabError(f"{path}: folder {parent} does not exist; create it first or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PoisonlabError(f"{path}: folder {parent} is not writable")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise PoisonlabError(f"{path}: cannot write ({e.strerror or e})") from None


def atomic_write_png(path: Path, pixels: Any) -> None:
    """A uint8 (H, W[, C]) array as a PNG file, written atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_tensors(path: Path, tensors: dict[str, Any]) -> None:
    """Tensors as a safetensors file, written like every other run file (atomic rename, the usual permissions).

    ``safetensors.torch.save_file`` creates its file owner-only (0600); a run folder's weights should be
    as readable as its report.
    """
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().contiguous() for k, v in tensors.items()}))


def _finite(obj: Any) -> Any:
    """NaN and infinities as null, so the file is JSON every reader accepts."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """Indented, strictly valid JSON (non-finite numbers become null)."""
    return json.dumps(_finite(obj), indent=2, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (to_json(obj) + "\n").encode())


def environment() -> dict[str, Any]:
    """Versions and machine facts that a reader needs to reproduce a figure."""
    versions: dict[str, str | None] = {}
    for pkg in ("poisonlab", "torch", "numpy", "scipy", "scikit-learn", "opencv-python-headless", "pillow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
    }


REPORT_OPTIONAL: dict[str, type] = {"created": str, "timings": dict, "files": list, "environment": dict}
"""Report fields a reader may find absent, with the type each must have when present."""


def report(kind: str, config: dict[str, Any], metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A report.json body in the one versioned schema."""
    return {
        "schema": REPORT_SCHEMA,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "metrics": metrics,
        "environment": environment(),
        **extra,
    }


def read_report(path: Path) -> dict[str, Any] | None:
    """A report.json body, or None when it is missing, not a regular file, unreadable or not a poisonlab report.

    A report must hold ``schema``, ``kind``, ``config`` and ``metrics``, each (like the optional ``created``,
    ``timings`` and ``files``) of its type: every reader may then rely on them.
    """
    try:
        check_regular(path, "report file")
        body = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError, PoisonlabError):
        return None
    if not isinstance(body, dict) or body.get("schema") != REPORT_SCHEMA:
        return None
    required = all(isinstance(body.get(k), t) for k, t in (("kind", str), ("config", dict), ("metrics", dict)))
    optional = all(k not in body or isinstance(body[k], t) for k, t in REPORT_OPTIONAL.items())
    return body if required and optional else None


def load_report(path: Path) -> dict[str, Any]:
    """``read_report``, with a one-line error naming ``path`` where that gives None."""
    body = read_report(path)
    if body is None:
        raise PoisonlabError(f"{path}: not a readable poisonlab report (schema, kind, config and metrics of their "
                             "types)")
    return body
