"""Clip art from Debian's openclipart-png as a 10-class RGB dataset: ``openclipart[:OPTIONS]``, offline.

OPTIONS is a comma-separated list of ``key=value``: ``path=DIR`` (default ``/usr/share/openclipart/png``;
a first item without ``=`` is the path too, so ``openclipart:DIR,size=32``), ``size=32|64|96`` (pixels a
side, default 64) and ``per_class=N`` (at most N images per class, default 400). A path cannot hold a comma.

Each class is one category folder of the package, searched recursively. Symbolic links are skipped:
they are the package's cross-listings of a file under a second category (1,221 of its 7,034 paths), so
every image counts once, under the category where the file lives. A class's files are ranked by the
SHA-256 of their path relative to the root; the first ``per_class`` are kept, and every fifth of them
(ranks 0, 5, 10, ...) is a test image: an exact, stratified 80/20 split that no seed, no other class
and no ``per_class`` change moves (a smaller cap keeps a subset of a larger cap's train and test parts).

Each image is composited on white by its alpha, fitted into the square keeping its aspect ratio
(Lanczos, after a box reduction to within 3x of the target), and padded with white. Files that cannot
be read (corrupt, not a regular file, more than ``images.PIXEL_BUDGET`` pixels: the package holds 16
images of 60 to 620 million pixels) are skipped, counted in ``ClipArt.skipped`` and reported in one
warning; they leave their class one image short. Decoded sets are cached (see ``cache_dir``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data.images import ImageError, open_image, read_pixels
from poisonlab.data.user import read_npz
from poisonlab.data.validate import to_image_set
from poisonlab.registry import parse_spec
from poisonlab.report.store import atomic_write_bytes

ROOT = Path("/usr/share/openclipart/png")
CATEGORIES = ("animals", "computer", "food", "office", "people", "recreation", "shapes", "signs_and_symbols",
              "tools", "transportation")
"""The classes, in label order: the package's categories of 100 or more images (not links) that each show one
kind of thing (107 office to 1,797 computer images). Left out: unsorted (no subject), special (patterns and
gradients) and geography (130: country outlines and star charts, which overlap shapes)."""
SIZES = (32, 64, 96)
TEST_EVERY = 5
CACHE_VERSION = 1
"""Part of the cache key: raise it whenever decoding changes, so no set decoded by older code is read back."""


@dataclass(frozen=True)
class Options:
    """What an ``openclipart`` spec asks for: the package's root folder, the image size, the cap per class."""

    root: Path = ROOT
    size: int = 64
    per_class: int = 400


def parse_options(arg: str | None) -> Options:
    """``[PATH,]key=value,...`` (keys path, size, per_class) as Options; a one-line error naming a bad option."""
    items = (arg or "").split(",")
    bare = items[0] if items[0] and "=" not in items[0] else None
    _, given = parse_spec("openclipart:" + ",".join(items[1:] if bare else items), "dataset")
    unknown = sorted(set(given) - {"path", "size", "per_class"})
    if unknown:
        raise PoisonlabError(f"openclipart: unknown option {unknown[0]!r}; expected path=DIR, size=N or per_class=N")
    if bare is not None and "path" in given:
        raise PoisonlabError(f"openclipart:{arg}: the path is given twice; expected PATH or path=DIR, not both")
    size, per_class = given.get("size", Options.size), given.get("per_class", Options.per_class)
    if type(size) is not int or size not in SIZES:
        raise PoisonlabError(f"openclipart: size={size!r}; expected one of {', '.join(map(str, SIZES))}")
    if type(per_class) is not int or per_class < 1:
        raise PoisonlabError(f"openclipart: per_class={per_class!r}; expected an integer >= 1")
    path = bare if bare is not None else given.get("path")
    if path is not None and not str(path):
        raise PoisonlabError("openclipart: path= is empty; expected path=DIR")
    return Options(Path(str(path)) if path is not None else ROOT, size, per_class)


@dataclass(frozen=True)
class ClipFile:
    """One chosen image: its path relative to the root, its label, and whether it is a test image."""

    path: str
    label: int
    test: bool


def _rank(relative: str) -> bytes:
    return hashlib.sha256(relative.encode()).digest()


def clipart_files(root: Path, per_class: int) -> list[ClipFile]:
    """The chosen images, class by class in CATEGORIES order and by hash rank within a class (no decoding)."""
    if not root.is_dir():
        raise PoisonlabError(f"openclipart: {root} not found; install the Debian package openclipart-png "
                             "(apt-get install openclipart-png) or pass openclipart:path=DIR")
    chosen: list[ClipFile] = []
    for label, category in enumerate(CATEGORIES):
        folder = root / category
        if not folder.is_dir():
            raise PoisonlabError(f"openclipart: {folder} not found; expected one folder per category under {root} "
                                 f"({', '.join(CATEGORIES)})")
        found = sorted((p.relative_to(root).as_posix() for p in folder.rglob("*")
                        if p.suffix.lower() == ".png" and not p.is_symlink() and not p.is_dir()), key=_rank)
        if not found:
            raise PoisonlabError(f"openclipart: {folder} holds no PNG files; expected the images of class {category!r}")
        chosen += [ClipFile(rel, label, i % TEST_EVERY == 0) for i, rel in enumerate(found[:per_class])]
    return chosen


def clip_pixels(path: Path, size: int) -> np.ndarray:
    """One clip-art file as uint8 (size, size, 3): composited on white, fitted keeping its aspect ratio, padded white.

    Raises PoisonlabError (an ImageError) naming the file when it is not a regular, readable image within
    the pixel budget of ``images.decode``, whose rules also read 16-bit and float images.
    """
    im = open_image(path)
    with im:
        try:
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                rgba = Image.fromarray(read_pixels(path, "RGB")).convert("RGBA")
            else:
                rgba = im.convert("RGBA")
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
            raise ImageError(f"{path}: not a readable image ({e})") from None
    scale = size / max(rgba.size)
    fitted = rgba.resize((max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale))),
                         Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return np.asarray(canvas.convert("RGB"))


@dataclass(frozen=True)
class ClipArt:
    """A decoded selection: uint8 pixels (N, 3, S, S), int64 labels, a test mask, and the skipped files' reasons."""

    pixels: np.ndarray
    labels: np.ndarray
    test: np.ndarray
    skipped: tuple[str, ...]


def decode_clipart(root: Path, files: list[ClipFile], size: int) -> ClipArt:
    """Decode ``files``, skipping (and recording) each one that cannot be read."""
    kept: list[tuple[np.ndarray, ClipFile]] = []
    skipped: list[str] = []
    for f in files:
        try:
            kept.append((clip_pixels(root / f.path, size), f))
        except PoisonlabError as e:
            skipped.append(str(e))
    pixels = np.stack([p for p, _ in kept]).transpose(0, 3, 1, 2) if kept else np.zeros((0, 3, size, size), np.uint8)
    return ClipArt(np.ascontiguousarray(pixels), np.array([f.label for _, f in kept], dtype=np.int64),
                   np.array([f.test for _, f in kept], dtype=bool), tuple(skipped))


def cache_dir() -> Path | None:
    """Where decoded sets are cached: ``$XDG_CACHE_HOME/poisonlab``, else ``~/.cache/poisonlab``.

    None when the environment sets ``POISONLAB_CACHE=0`` (no cache is read or written).
    """
    if os.environ.get("POISONLAB_CACHE", "1") == "0":
        return None
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if Path(base).is_absolute() else Path.home() / ".cache") / "poisonlab"


def cache_key(options: Options, files: list[ClipFile]) -> str:
    """A digest of everything a decoded set depends on: root, size, categories and each chosen file's size and mtime."""
    listing = []
    for f in files:
        try:
            st = (options.root / f.path).stat()
            listing.append([f.path, f.label, f.test, st.st_size, st.st_mtime_ns])
        except OSError:
            listing.append([f.path, f.label, f.test, None, None])
    body = {"version": CACHE_VERSION, "root": str(options.root.resolve()), "size": options.size,
            "per_class": options.per_class, "categories": CATEGORIES, "files": listing}
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()


def _from_cache(path: Path, key: str, expected: int, size: int) -> ClipArt | None:
    """The cached set at ``path`` when it is readable and holds what ``key`` names, else None."""
    try:
        arrays = read_npz(path)
    except PoisonlabError:
        return None
    try:
        art = ClipArt(arrays["pixels"], arrays["labels"], arrays["test"], tuple(str(s) for s in arrays["skipped"]))
        ok = (str(arrays["key"]) == key and art.pixels.dtype == np.uint8 and art.pixels.shape[1:] == (3, size, size)
              and art.labels.dtype == np.int64 and art.test.dtype == bool
              and len(art.pixels) == len(art.labels) == len(art.test) == expected - len(art.skipped)
              and bool(((art.labels >= 0) & (art.labels < len(CATEGORIES))).all()))
    except (KeyError, ValueError, TypeError):
        return None
    return art if ok else None


def read_clipart(options: Options) -> ClipArt:
    """The selection ``options`` names, decoded: from the cache when it holds it, else decoded and cached.

    A cache file that is unreadable or does not match is decoded afresh and overwritten; a cache folder
    that cannot be written costs only the cache (one warning).
    """
    files = clipart_files(options.root, options.per_class)
    folder = cache_dir()
    if folder is None:
        return decode_clipart(options.root, files, options.size)
    key = cache_key(options, files)
    path = folder / f"openclipart-{key[:24]}.npz"
    if path.exists() and (art := _from_cache(path, key, len(files), options.size)) is not None:
        return art
    art = decode_clipart(options.root, files, options.size)
    buf = io.BytesIO()
    np.savez_compressed(buf, pixels=art.pixels, labels=art.labels, test=art.test,
                        skipped=np.array(art.skipped, dtype=str), key=np.array(key))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except (OSError, PoisonlabError) as e:
        warnings.warn(f"openclipart: cannot write the cache {path} ({e}); set POISONLAB_CACHE=0 to skip it",
                      stacklevel=2)
    return art


def load_openclipart(arg: str | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """``openclipart[:OPTIONS]``: (train, test) clip art of the 10 CATEGORIES; the split is fixed (``seed`` unused)."""
    options = parse_options(arg)
    art = read_clipart(options)
    if art.skipped:
        total = len(art.labels) + len(art.skipped)
        warnings.warn(f"openclipart: skipped {len(art.skipped)} of {total} images that cannot be read (first: "
                      f"{art.skipped[0]})", stacklevel=2)

    def part(mask: np.ndarray, name: str) -> ImageSet:
        x = art.pixels[mask].astype(np.float32) / 255.0
        return to_image_set(x, art.labels[mask], CATEGORIES, f"openclipart {options.root} ({name})")

    return part(~art.test, "train"), part(art.test, "test")
