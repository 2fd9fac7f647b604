"""Detection thresholds per resizer and downscale ratio, set on benign images to a stated false-positive rate.

A calibration file is JSON: ``schema``, ``fpr``, the ``command`` that made it, a description of the
benign ``corpus``, and ``entries``, one per (resizer, ratio) with the number of benign images and a
threshold per score (null where the score does not apply, e.g. the resize reads every pixel). The
ratio of an image is the geometric mean of its two downscale factors, rounded to an integer.

The shipped table (``calibration.json`` beside this module) is written by ``bench/scaling_calibrate.py``
from the offline ``calibration`` corpus of ``poisonlab.scaling.corpus``; a user's own is written by
``poisonlab scaling calibrate``. A threshold is the ceil((n + 1)(1 - fpr))-th smallest of n benign
scores, so at most a share ``fpr`` of images like the benign ones is flagged (split-conformal rule).
"""

from __future__ import annotations

import json
import math
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from poisonlab.core import PoisonlabError
from poisonlab.report.store import atomic_write_json
from poisonlab.scaling.resize import RESIZERS

SCHEMA = "poisonlab.scaling-calibration/1"
SHIPPED = Path(__file__).with_name("calibration.json")
SCORES = ("local", "grid", "filtering", "roundtrip", "robust-compare")
DEFAULT_FPR = 0.01


def downscale_ratio(source_shape: tuple[int, ...], size: tuple[int, int]) -> float:
    """Geometric mean of the height and width downscale factors."""
    return math.sqrt(source_shape[0] / size[0] * source_shape[1] / size[1])


def ratio_key(source_shape: tuple[int, ...], size: tuple[int, int]) -> int:
    """The integer ratio a calibration entry is filed under."""
    return max(1, round(downscale_ratio(source_shape, size)))


def min_images(fpr: float) -> int:
    """Fewest benign scores that can set a threshold at ``fpr``."""
    return math.ceil((1 - fpr) / fpr)


def threshold_at(scores: np.ndarray, fpr: float, what: str) -> float | None:
    """The flag threshold for benign ``scores`` at ``fpr`` (None when no score is finite: not applicable)."""
    finite = np.sort(scores[np.isfinite(scores)])
    if finite.size == 0:
        return None
    k = math.ceil((finite.size + 1) * (1 - fpr))
    if k > finite.size:
        raise PoisonlabError(f"{what}: {finite.size} benign images cannot set a threshold at --fpr {fpr:g}; "
                             f"expected at least {min_images(fpr)} (or a larger --fpr)")
    return float(finite[k - 1])


@dataclass(frozen=True)
class Entry:
    """Thresholds for one resizer at one ratio, set on ``images`` benign images."""

    resizer: str
    ratio: int
    images: int
    thresholds: dict[str, float | None]
    size: str = ""
    """Output size WIDTHxHEIGHT the benign images were scored at."""

    def as_dict(self) -> dict[str, Any]:
        return {"resizer": self.resizer, "ratio": self.ratio, "size": self.size, "images": self.images,
                "thresholds": dict(self.thresholds)}


@dataclass(frozen=True)
class Calibration:
    """A calibration table; ``origin`` is ``shipped`` (the default table) or ``file`` (a user's)."""

    fpr: float
    entries: tuple[Entry, ...]
    origin: str
    path: str
    command: str = ""
    corpus: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "shipped default" if self.origin == "shipped" else "user file"

    def describe(self) -> dict[str, Any]:
        """How a report names this calibration."""
        return {"source": self.label, "path": self.path, "fpr": self.fpr, "command": self.command}

    def entry(self, resizer: str, ratio: int, score: str) -> Entry:
        """The entry for ``resizer`` at ``ratio`` with a threshold for ``score``.

        A user file must hold this very ratio; the shipped table falls back to its nearest ratio (the
        report states which one was used).
        """
        mine = [e for e in self.entries if e.resizer == resizer and e.thresholds.get(score) is not None]
        exact = [e for e in mine if e.ratio == ratio]
        if exact:
            return exact[0]
        if mine and self.origin == "shipped":
            return min(mine, key=lambda e: (abs(math.log(e.ratio / ratio)), e.ratio))
        has = ", ".join(f"{e.resizer} at ratio {e.ratio}" for e in self.entries) or "no entries"
        hint = ("calibrate on images of this size with `poisonlab scaling calibrate`" if self.origin == "file" else
                "calibrate with `poisonlab scaling calibrate` or pass --threshold")
        raise PoisonlabError(f"{self.path}: no {score} threshold for {resizer} at ratio {ratio} (it has: {has}); "
                             f"{hint}")

    def write(self, path: Path) -> None:
        atomic_write_json(path, {"schema": SCHEMA, "fpr": self.fpr, "command": self.command, "corpus": self.corpus,
                                 "entries": [e.as_dict() for e in self.entries]})


def _bad(path: Path, why: str) -> PoisonlabError:
    return PoisonlabError(f"{path}: not a usable scaling calibration file ({why})")


def _positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _entry(path: Path, i: int, raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise _bad(path, f"entries[{i}] is not an object")
    resizer, ratio, images, thresholds = (raw.get(k) for k in ("resizer", "ratio", "images", "thresholds"))
    if not isinstance(resizer, str) or resizer not in RESIZERS:
        raise _bad(path, f"entries[{i}].resizer {resizer!r} is not a known resizer")
    if not _positive_int(ratio):
        raise _bad(path, f"entries[{i}].ratio {ratio!r}: expected a positive integer")
    if not _positive_int(images):
        raise _bad(path, f"entries[{i}].images {images!r}: expected a positive integer")
    if not isinstance(thresholds, dict) or not thresholds:
        raise _bad(path, f"entries[{i}].thresholds: expected an object of score: threshold")
    for score, value in thresholds.items():
        if score not in SCORES:
            raise _bad(path, f"entries[{i}] scores {score!r}; expected scores among {', '.join(SCORES)}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value) or value < 0):
            raise _bad(path, f"entries[{i}].thresholds.{score} {value!r}: expected a finite number >= 0 or null")
    size = raw.get("size", "")
    return Entry(resizer, ratio, images, {k: None if v is None else float(v) for k, v in thresholds.items()},
                 size if isinstance(size, str) else "")


def load_calibration(path: Path, origin: str = "file") -> Calibration:
    """A calibration file, checked field by field; one-line errors name the file and the field."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PoisonlabError(f"{path}: no such calibration file") from None
    except OSError as e:
        raise _bad(path, f"cannot read it: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise _bad(path, "a folder" if stat.S_ISDIR(mode) else "not a regular file")
    try:
        body = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot read it: {e}") from None
    except ValueError as e:
        raise _bad(path, f"invalid JSON: {e}") from None
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        raise _bad(path, f"expected \"schema\": \"{SCHEMA}\"")
    fpr = body.get("fpr")
    if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0 < fpr < 1:
        raise _bad(path, f"fpr {fpr!r}: expected a number between 0 and 1")
    entries = body.get("entries")
    if not isinstance(entries, list) or not entries:
        raise _bad(path, "expected a non-empty list of entries")
    command, corpus = body.get("command", ""), body.get("corpus", {})
    return Calibration(float(fpr), tuple(_entry(path, i, e) for i, e in enumerate(entries)), origin, str(path),
                       command if isinstance(command, str) else "", corpus if isinstance(corpus, dict) else {})


@lru_cache(maxsize=1)
def shipped() -> Calibration:
    """The default table shipped with poisonlab."""
    return load_calibration(SHIPPED, origin="shipped")
