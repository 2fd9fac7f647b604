"""URL-list dataset manifests: one row per image with its URL, label and content fingerprint.

A manifest is a CSV (or, with pyarrow installed, Parquet) file with the columns of ``COLUMNS``: ``url``
(http or https), ``label`` (class index 0..K-1), ``class`` (the class name, one per label),
``sha256``, ``phash`` (16 hex digits), ``thumbnail`` (base64 of a 16 x 16 grey image), ``width``,
``height`` and ``bytes``. This is the form LAION, COYO and DataComp ship (URL lists with hashes); the
thumbnail is what lets verification tell a re-encode from a substitution without the original.
"""

from __future__ import annotations

import binascii
import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from poisonlab.core import PoisonlabError, check_regular
from poisonlab.data.images import decode
from poisonlab.report.store import atomic_write_bytes
from poisonlab.webscale.client import Client, Limits
from poisonlab.webscale.phash import Fingerprint, decode_thumbnail, fingerprint

COLUMNS = ("url", "label", "class", "sha256", "phash", "thumbnail", "width", "height", "bytes")
"""A manifest's columns, in the order they are written."""
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PHASH = re.compile(r"[0-9a-f]{16}")
MAX_FIELD = 4096
"""Longest field a manifest row may hold (a URL, a class name); longer ones are refused."""


@dataclass(frozen=True)
class Item:
    """One manifest row."""

    url: str
    label: int
    class_name: str
    fingerprint: Fingerprint


@dataclass(frozen=True)
class Manifest:
    """The rows of a manifest and its class names (``classes[label]``)."""

    items: tuple[Item, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)


def check_url(url: str, where: str) -> None:
    """Refuse anything but an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as e:
        raise PoisonlabError(f"{where}: url {url!r}: not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PoisonlabError(f"{where}: url {url!r}: expected an http:// or https:// URL with a host")


def check_class_name(name: str, where: str) -> None:
    """Refuse a class name that cannot be a plain folder name (it becomes one when a manifest is fetched)."""
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise PoisonlabError(f"{where}: class {name!r}: expected a plain folder name (no '/', not starting with '.')")


def _integer(value: str, column: str, where: str, low: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise PoisonlabError(f"{where}: {column} {value!r}: expected an integer >= {low}") from None
    if n < low:
        raise PoisonlabError(f"{where}: {column} {n}: expected an integer >= {low}")
    return n


def parse_row(row: dict[str, str], where: str) -> Item:
    """One manifest row from its text fields; a one-line error naming the row and the field otherwise."""
    missing = [c for c in COLUMNS if row.get(c) is None]
    if missing:
        raise PoisonlabError(f"{where}: missing {', '.join(missing)}; expected columns {', '.join(COLUMNS)}")
    if any(len(row[c]) > MAX_FIELD for c in COLUMNS):
        raise PoisonlabError(f"{where}: a field longer than {MAX_FIELD} characters")
    check_url(row["url"], where)
    check_class_name(row["class"], where)
    sha, ph, thumb = row["sha256"].lower(), row["phash"].lower(), row["thumbnail"]
    if not _SHA256.fullmatch(sha):
        raise PoisonlabError(f"{where}: sha256 {row['sha256']!r}: expected 64 hexadecimal digits")
    if not _PHASH.fullmatch(ph):
        raise PoisonlabError(f"{where}: phash {row['phash']!r}: expected 16 hexadecimal digits")
    try:
        decode_thumbnail(thumb)
    except (ValueError, binascii.Error) as e:
        raise PoisonlabError(f"{where}: thumbnail: expected base64 of a 16x16 grey image ({e})") from None
    w, h = _integer(row["width"], "width", where, 1), _integer(row["height"], "height", where, 1)
    fp = Fingerprint(sha, ph, thumb, w, h, _integer(row["bytes"], "bytes", where, 1))
    return Item(row["url"], _integer(row["label"], "label", where, 0), row["class"], fp)


def check_labels(items: Sequence[Item], source: str) -> tuple[str, ...]:
    """The class names by label: one name per label and one label per name, labels 0..K-1 for K names."""
    names: dict[int, str] = {}
    labels: dict[str, int] = {}
    for k, item in enumerate(items):
        if names.setdefault(item.label, item.class_name) != item.class_name:
            raise PoisonlabError(f"{source} row {k + 1}: label {item.label} named {item.class_name!r}, earlier "
                                 f"{names[item.label]!r}; expected one class name per label")
        if labels.setdefault(item.class_name, item.label) != item.label:
            raise PoisonlabError(f"{source} row {k + 1}: class {item.class_name!r} labelled {item.label}, earlier "
                                 f"{labels[item.class_name]}; expected one label per class name")
    classes = len(names)
    for k, item in enumerate(items):
        if item.label >= classes:
            raise PoisonlabError(f"{source} row {k + 1}: label {item.label} out of range; {classes} classes "
                                 f"expect labels in [0, {classes - 1}]")
    return tuple(names[k] for k in range(classes))


def manifest_of(items: Sequence[Item], source: str) -> Manifest:
    """A checked manifest of ``items``: labels 0..K-1 with one name each, no URL twice."""
    if not items:
        raise PoisonlabError(f"{source}: no rows; expected at least one image")
    seen: dict[str, int] = {}
    for k, item in enumerate(items):
        if item.url in seen:
            raise PoisonlabError(f"{source} row {k + 1}: url {item.url!r} already in row {seen[item.url] + 1}")
        seen[item.url] = k
    return Manifest(tuple(items), check_labels(items, source))


def _records(path: Path) -> Iterable[tuple[str, dict[str, str]]]:
    """(where, row) for each row of a CSV or Parquet manifest."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq  # optional: only for .parquet manifests
        except ImportError:
            raise PoisonlabError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises its own error types for a broken file
            raise PoisonlabError(f"{path}: not a readable Parquet file ({e})") from None
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise PoisonlabError(f"{path}: missing column {', '.join(missing)}; expected {', '.join(COLUMNS)}")
        for k, row in enumerate(table.select(list(COLUMNS)).to_pylist()):
            yield f"{path} row {k + 1}", {c: "" if v is None else str(v) for c, v in row.items()}
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PoisonlabError(f"{path}: not a readable UTF-8 CSV manifest ({e})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise PoisonlabError(f"{path}: missing column {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    try:
        for row in reader:
            yield f"{path} row {reader.line_num - 1}", row
    except csv.Error as e:
        raise PoisonlabError(f"{path} line {reader.line_num}: not valid CSV ({e})") from None


def read_manifest(path: Path) -> Manifest:
    """A manifest file (.csv or .parquet), every row checked; a one-line error naming the row otherwise."""
    check_regular(path, "manifest file")
    return manifest_of([parse_row(row, where) for where, row in _records(path)], str(path))


def write_manifest(manifest: Manifest, path: Path) -> None:
    """``manifest`` as CSV (or Parquet for a .parquet path), written atomically."""
    rows = [{"url": it.url, "label": it.label, "class": it.class_name, "sha256": it.fingerprint.sha256,
             "phash": it.fingerprint.phash, "thumbnail": it.fingerprint.thumbnail, "width": it.fingerprint.width,
             "height": it.fingerprint.height, "bytes": it.fingerprint.size} for it in manifest.items]
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise PoisonlabError(f"{path}: writing Parquet needs pyarrow (pip install pyarrow)") from None
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        return
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def file_fingerprint(path: Path) -> Fingerprint:
    """The fingerprint of one image file (a regular file, pixel count checked before decoding)."""
    check_regular(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PoisonlabError(f"{path}: cannot read ({e.strerror or e})") from None
    return fingerprint(data, decode(path, "L"))


def folder_manifest(root: Path, base_url: str) -> Manifest:
    """A manifest of the images under ``root/<class>/``, each at ``base_url`` + its path below ``root``."""
    from poisonlab.data.user import folder_files

    check_url(base_url, "--base-url")
    base = base_url if base_url.endswith("/") else base_url + "/"
    files, classes = folder_files(root)
    items = [Item(base + quote(path.relative_to(root).as_posix()), label, classes[label], file_fingerprint(path))
             for path, label in files]
    return manifest_of(items, str(root))


def read_url_list(path: Path) -> list[tuple[str, int, str]]:
    """(url, label, class name) from a CSV with columns ``url``, ``label`` and optionally ``class``.

    Without a ``class`` column, label k is named ``str(k)``. URLs and class names are checked here.
    """
    check_regular(path, "URL list")
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
        fields = reader.fieldnames or []
        if "url" not in fields or "label" not in fields:
            raise PoisonlabError(f"{path}: missing column {'url' if 'url' not in fields else 'label'}; expected a "
                                 "CSV with columns url, label [, class]")
        out = []
        for row in reader:
            where = f"{path} row {reader.line_num - 1}"
            check_url(row["url"] or "", where)
            label = _integer(row["label"] or "", "label", where, 0)
            name = row.get("class") or str(label)
            check_class_name(name, where)
            out.append((row["url"], label, name))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PoisonlabError(f"{path}: not a readable UTF-8 CSV URL list ({e})") from None
    return out


def url_manifest(path: Path, limits: Limits, workers: int = 16) -> tuple[Manifest, list[tuple[str, str]]]:
    """A manifest of the images a URL list (see ``read_url_list``) serves now, and the (url, reason) left out."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    rows = read_url_list(path)
    client = Client(limits)
    with tempfile.TemporaryDirectory(prefix="poisonlab-manifest-") as tmp:

        def one(k: int) -> Item | str:
            url, label, name = rows[k]
            got = client.get(url)
            if got.data is None:
                return got.reason
            file = Path(tmp) / f"{k}"
            file.write_bytes(got.data)
            try:
                return Item(url, label, name, file_fingerprint(file))
            except PoisonlabError as e:
                return str(e).removeprefix(f"{file}: ")
            finally:
                file.unlink()

        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, range(len(rows))))
    items = [r for r in results if isinstance(r, Item)]
    skipped = [(rows[k][0], r) for k, r in enumerate(results) if isinstance(r, str)]
    return manifest_of(items, str(path)), skipped
