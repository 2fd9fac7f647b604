"""Download a manifest's images concurrently, verify each at download time, and keep only the accepted ones.

Each row becomes ``OUT/<class>/<row>.<ext>`` (row numbered from 0, as in the manifest), written through
``OUT/.partial/`` and a rename, so the folder only ever holds whole, accepted files, stored as served.
It loads as a ``folder:OUT`` dataset when no host resized an image (``simulate.fetched_images`` resizes
them back). A rerun resumes: a row whose file is already there is re-verified from disk and skipped when
it passes, re-downloaded otherwise (so a folder no fetch wrote is refused: its files would be judged
against the manifest's rows). ``OUT/fetch-report.json`` lists what was rejected and why.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from poisonlab.core import PoisonlabError, require
from poisonlab.data.images import PIXEL_BUDGET, ImageError, decode, image_header
from poisonlab.report.store import LOCK_FILE, atomic_write_json, locked
from poisonlab.webscale.client import Client, Limits
from poisonlab.webscale.manifest import Item, Manifest, file_fingerprint
from poisonlab.webscale.phash import fingerprint
from poisonlab.webscale.verify import ACCEPTED, Check, Status, Verification

REPORT_FILE = "fetch-report.json"
REPORT_SCHEMA = "poisonlab.fetch/1"
PARTIAL = ".partial"
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
          (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))
EXTENSIONS = frozenset(ext for _, ext in _MAGIC) | {".webp"}


def extension(data: bytes) -> str | None:
    """The file extension of an image's bytes from their magic number; None when it is no known image format."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), None)


@dataclass(frozen=True)
class Outcome:
    """What became of one manifest row."""

    row: int
    url: str
    label: int
    status: Status
    reason: str
    file: str | None = None
    hamming: int | None = None
    similarity: float | None = None
    resumed: bool = False
    attempts: int = 0


@dataclass(frozen=True)
class Fetched:
    """Every row's outcome, in manifest order, and the run's totals."""

    outcomes: list[Outcome]
    seconds: float
    bytes: int
    verified: bool
    config: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.status for o in self.outcomes))

    @property
    def accepted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in ACCEPTED]

    def report(self) -> dict[str, Any]:
        """The body of ``fetch-report.json``: totals, counts by status, and every rejected row with its reason."""
        return {
            "schema": REPORT_SCHEMA, "config": self.config, "verified": self.verified, "items": len(self.outcomes),
            "accepted": len(self.accepted), "resumed": sum(o.resumed for o in self.outcomes),
            "counts": self.counts(), "seconds": self.seconds, "bytes": self.bytes,
            "rejected": [asdict(o) for o in self.outcomes if o.status not in ACCEPTED],
        }


@dataclass(frozen=True)
class Fetcher:
    """Downloads with ``workers`` threads under ``limits``; ``verify`` None accepts every decodable image."""

    limits: Limits = Limits()
    workers: int = 16
    max_pixels: int = PIXEL_BUDGET
    verify: Verification | None = Verification()

    def __post_init__(self) -> None:
        require(1 <= self.workers <= 256, "workers", self.workers, "an integer in [1, 256]")
        require(1 <= self.max_pixels <= PIXEL_BUDGET, "max_pixels", self.max_pixels,
                f"an integer in [1, {PIXEL_BUDGET:,}]")

    def fetch(self, manifest: Manifest, out: Path, progress: Callable[[Outcome], None] | None = None) -> Fetched:
        """Fetch every row of ``manifest`` into ``out`` and write its report there; a second fetch into the same
        folder while this one runs is refused in one line."""
        if out.exists() and not out.is_dir():
            raise PoisonlabError(f"{out}: exists and is not a folder; expected a folder for the fetched dataset")
        partial = out / PARTIAL
        if (out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()) and not (out / REPORT_FILE).exists()
                and not partial.is_dir()):
            raise PoisonlabError(f"{out}: a non-empty folder that no fetch wrote (no {REPORT_FILE}); expected a new "
                                 "or empty folder, or one an earlier fetch of this manifest wrote")
        with locked(out, "fetch"):
            return self._fetch(manifest, out, progress)

    def _fetch(self, manifest: Manifest, out: Path, progress: Callable[[Outcome], None] | None) -> Fetched:
        """``fetch`` in a folder this process holds locked."""
        partial = out / PARTIAL
        shutil.rmtree(partial, ignore_errors=True)  # leftovers of an interrupted run: never accepted
        try:
            partial.mkdir(parents=True)
            for name in manifest.classes:
                (out / name).mkdir(exist_ok=True)
        except OSError as e:
            raise PoisonlabError(f"{out}: cannot create the dataset folder ({e.strerror or e})") from None
        earlier: dict[str, list[Path]] = {}
        for name in manifest.classes:  # one listing per class folder, not one glob per row
            for path in sorted((out / name).iterdir()):
                if path.suffix in EXTENSIONS and path.is_file():
                    earlier.setdefault(f"{name}/{path.stem}", []).append(path)
        client = Client(self.limits)
        start, received = time.perf_counter(), 0
        outcomes: dict[int, Outcome] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="poisonlab-fetch") as pool:
            pending: set[Future[tuple[Outcome, int]]] = set()

            def collect(done: set[Future[tuple[Outcome, int]]]) -> None:
                nonlocal received
                for future in done:
                    outcome, size = future.result()
                    outcomes[outcome.row] = outcome
                    received += size
                    if progress is not None:
                        progress(outcome)

            for row, item in enumerate(manifest.items):
                kept = earlier.get(f"{item.class_name}/{row:06d}", [])
                pending.add(pool.submit(self._one, client, row, item, out, kept))
                if len(pending) >= 4 * self.workers:  # bounded: never more than this many bodies in memory
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    collect(done)
            collect(wait(pending).done)
        shutil.rmtree(partial, ignore_errors=True)
        config = {"workers": self.workers, "max_pixels": self.max_pixels, **asdict(self.limits),
                  "verification": asdict(self.verify) if self.verify else None}
        result = Fetched([outcomes[k] for k in range(len(manifest))], time.perf_counter() - start, received,
                         self.verify is not None, config)
        atomic_write_json(out / REPORT_FILE, result.report())
        return result

    def _check(self, item: Item, data: bytes, path: Path) -> Check:
        """Verdict on the image bytes ``data`` stored at ``path``: limits, decodability, then verification."""
        try:
            if self.max_pixels < PIXEL_BUDGET:  # decode() itself refuses more than PIXEL_BUDGET from the header
                w, h, _ = image_header(path)
                if w * h > self.max_pixels:
                    return Check("unreachable", f"declares {w}x{h} pixels; limit {self.max_pixels:,}")
            got = fingerprint(data, decode(path, "L"))
        except ImageError as e:
            return Check("unreachable", str(e).removeprefix(f"{path}: "))
        return self.verify.check(item.fingerprint, got) if self.verify else Check("unverified", "not verified")

    def _resumed(self, row: int, item: Item, earlier: list[Path]) -> Outcome | None:
        """The outcome of a file an earlier run left for ``row``, when it still passes; stale files are removed."""
        for path in earlier:
            if self.verify is None:
                return Outcome(row, item.url, item.label, "unverified", "kept from an earlier run", str(path),
                               resumed=True)
            try:
                check = self.verify.check(item.fingerprint, file_fingerprint(path))
            except PoisonlabError:
                check = Check("unreachable", "unreadable")
            if check.status in ACCEPTED:
                return Outcome(row, item.url, item.label, check.status, check.reason, str(path), check.hamming,
                               check.similarity, resumed=True)
            path.unlink(missing_ok=True)
        return None

    def _one(self, client: Client, row: int, item: Item, out: Path, earlier: list[Path]) -> tuple[Outcome, int]:
        kept = self._resumed(row, item, earlier)
        if kept is not None:
            return kept, 0
        got = client.get(item.url)
        if got.data is None:
            return Outcome(row, item.url, item.label, "unreachable", got.reason, attempts=got.attempts), 0
        ext = extension(got.data)
        if ext is None:
            return Outcome(row, item.url, item.label, "unreachable", "served bytes of no image format "
                           f"({', '.join(sorted(EXTENSIONS))})", attempts=got.attempts), len(got.data)
        part = out / PARTIAL / f"{row:06d}{ext}"
        part.write_bytes(got.data)
        check = self._check(item, got.data, part)
        dest = None
        if check.status in ACCEPTED:
            dest = out / item.class_name / part.name
            os.replace(part, dest)
        else:
            part.unlink()
        return Outcome(row, item.url, item.label, check.status, check.reason, str(dest) if dest else None,
                       check.hamming, check.similarity, attempts=got.attempts), len(got.data)
