"""A user's own data: a folder of images in class sub-folders, or an .npz with x/y arrays."""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from poisonlab.core import ImageSet, LazyImageSet, PoisonlabError, Samples, check_regular
from poisonlab.data.images import image_header
from poisonlab.data.stream import ImageFiles
from poisonlab.data.validate import to_image_set

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise PoisonlabError(f"{root}: expected one sub-folder of images per class, found none")
    return folders


def folder_files(root: Path) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    """The image files under ``root/<class name>/`` with their labels, in row order, and the class names."""
    if not root.is_dir():
        raise PoisonlabError(f"{root}: no such folder of images")
    folders = _class_folders(root)
    files: list[tuple[Path, int]] = []
    for k, folder in enumerate(folders):
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for p in found:
            check_regular(p)
        if not found:
            raise PoisonlabError(f"{folder}: class {folder.name!r} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += [(p, k) for p in found]
    return files, tuple(f.name for f in folders)


def open_image_folder(root: Path) -> LazyImageSet:
    """Images under ``root/<class name>/``, left in their files (decoded a batch at a time); all one size.

    Classes in sorted folder order; grayscale when every image is grayscale, RGB otherwise. Only the
    headers are read here; errors name the offending file.
    """
    files, classes = folder_files(root)
    headers = [image_header(path) for path, _ in files]
    for (path, _), (w, h, _gray) in zip(files, headers, strict=True):
        if (w, h) != headers[0][:2]:
            raise PoisonlabError(f"{path}: size {w}x{h} differs from the first image's {headers[0][0]}x{headers[0][1]}"
                                 "; resize the folder to one size first")
    mode = "L" if all(gray for _, _, gray in headers) else "RGB"
    images = ImageFiles.of([str(p) for p, _ in files], mode, (headers[0][1], headers[0][0]))
    return LazyImageSet(images, torch.tensor([k for _, k in files], dtype=torch.int64), classes)


def load_image_folder(root: Path) -> ImageSet:
    """Images under ``root/<class name>/`` decoded into memory (see ``open_image_folder``)."""
    return open_image_folder(root).load()


def holdout_rows(labels: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """(kept rows, held-out rows): a stratified split of ``fraction`` with a fixed seed, never the run's."""
    idx = np.arange(len(labels))
    y = labels.numpy()
    stratify = y if np.bincount(y).min() >= 2 else None
    from sklearn.model_selection import train_test_split  # deferred: scikit-learn takes a second to import

    try:
        tr, te = train_test_split(idx, test_size=fraction, stratify=stratify, random_state=0)
    except ValueError as e:
        raise PoisonlabError(f"holdout {fraction}: cannot hold out that share of {len(idx)} rows ({e})") from None
    return torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))


def folder_root(arg: str | None) -> tuple[Path, bool]:
    """``folder:PATH``'s root and whether it splits into PATH/train and PATH/test."""
    if not arg:
        raise PoisonlabError("dataset folder: expected folder:PATH to a folder of class sub-folders")
    root = Path(arg)
    return root, (root / "train").is_dir() and (root / "test").is_dir()


def load_folder_dataset(arg: str | None = None, seed: int = 0) -> tuple[LazyImageSet, LazyImageSet]:
    """``folder:PATH``: PATH/train and PATH/test if both exist, else every image of PATH and no test part.

    The images stay in their files and are decoded a batch at a time (``data.stream``).
    """
    root, split = folder_root(arg)
    if split:
        train, test = open_image_folder(root / "train"), open_image_folder(root / "test")
        if train.classes != test.classes or train.shape != test.shape:
            raise PoisonlabError(f"{root}: train/ and test/ must have the same class folders and image size")
        return train, test
    full = open_image_folder(root)
    return full, full.subset(slice(0, 0))


def row_files(data: Samples) -> list[str] | None:
    """The file behind each row of ``data`` when its images are files (``folder:`` data), else None."""
    return data.x.paths() if isinstance(data, LazyImageSet) and isinstance(data.x, ImageFiles) else None


def read_row_numbers(path: Path) -> Tensor:
    """Row numbers from a .npy (integers, no pickles), a .json list, or text (one per line or comma-separated)."""
    check_regular(path, "file of row numbers")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            values = np.asarray(json.loads(path.read_text()))
        else:
            values = np.asarray([int(v) for v in path.read_text().replace(",", " ").split()])
    except (OSError, ValueError, RecursionError) as e:
        raise PoisonlabError(f"{path}: not a list of row numbers ({e})") from None
    if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)) or (values < 0).any():
        raise PoisonlabError(f"{path}: expected a flat list of row numbers >= 0, got {values.dtype} {values.shape}")
    return torch.from_numpy(values.astype(np.int64))


def _to_nchw(x: np.ndarray, source: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
        return x
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    raise PoisonlabError(f"{source}: expected images shaped (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.shape}")


def _scale(x: np.ndarray, source: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    raise PoisonlabError(f"{source}: expected uint8 (0-255) or float (0-1) images, got dtype {x.dtype}")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, after checking each member's header: no pickled objects, no size it cannot hold.

    The headers are read before any data, so a member declaring 10**12 elements in a few bytes, an
    object array, a truncated or CRC-corrupt archive, or an empty file is a one-line error, not a
    memory blow-up or a traceback.
    """
    check_regular(path, "npz file")
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as member:
                    shape, dtype = _npy_header(member)
                if dtype.hasobject:
                    raise PoisonlabError(f"{path}: member {info.filename!r} holds Python objects (a pickle); "
                                         "expected plain numeric arrays")
                if math.prod(shape) * dtype.itemsize > info.file_size:
                    raise PoisonlabError(f"{path}: member {info.filename!r} declares shape {shape} of {dtype}, more "
                                         f"than its {info.file_size:,} bytes hold")
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except PoisonlabError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as e:
        raise PoisonlabError(f"{path}: not a readable .npz of plain arrays ({type(e).__name__}: {e})") from None


def _npy_header(member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """(shape, dtype) from an .npy stream's header, reading nothing after it."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


def implied_classes(labels: list[np.ndarray], path: Path) -> int:
    """Classes 0..max label when an npz names none; refused when the training rows cannot fill them all."""
    rows = len(labels[0])
    for a in labels:
        if a.min() < 0:
            raise PoisonlabError(f"{path}: label {a.min()} at index {int(np.argmin(a))} is negative; expected >= 0")
        if a.max() >= rows:
            raise PoisonlabError(f"{path}: label {a.max()} at index {int(np.argmax(a))} implies {int(a.max()) + 1:,} "
                                 f"classes for {rows:,} training rows; give a 'classes' array or labels 0 to K-1")
    return int(max(a.max() for a in labels)) + 1


def load_npz_dataset(arg: str | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """``npz:PATH``: arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``, ``classes`` (no pickles).

    Without ``x_test``/``y_test`` every row of ``x`` is training data and the test part is empty; a
    run sets rows aside only when asked (``holdout``).
    """
    if not arg:
        raise PoisonlabError("dataset npz: expected npz:PATH to an .npz with arrays x and y")
    path = Path(arg)
    arrays = read_npz(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise PoisonlabError(f"{path}: missing array {key!r}; found {sorted(arrays)}")
    labels = [arrays[k] for k in ("y", "y_test") if k in arrays]
    for key, a in zip(("y", "y_test"), labels, strict=False):
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or a.size == 0:
            raise PoisonlabError(f"{path}: {key!r} must be a non-empty 1-D integer array, got {a.dtype} {a.shape}")
    if "classes" in arrays:
        if arrays["classes"].ndim != 1:
            raise PoisonlabError(f"{path}: 'classes' must be a 1-D array of names, got shape {arrays['classes'].shape}")
        classes = tuple(str(c) for c in arrays["classes"])
    else:
        classes = tuple(str(k) for k in range(implied_classes(labels, path)))

    def part(xkey: str, ykey: str) -> ImageSet:
        source = f"{path} [{xkey}]"
        return to_image_set(_scale(_to_nchw(arrays[xkey], source), source), arrays[ykey], classes, source)

    if ("x_test" in arrays) != ("y_test" in arrays):
        raise PoisonlabError(f"{path}: has {'x_test' if 'x_test' in arrays else 'y_test'} without "
                             f"{'y_test' if 'x_test' in arrays else 'x_test'}; give both or neither")
    train = part("x", "y")
    if "x_test" not in arrays:
        return train, train.subset(slice(0, 0))
    test = part("x_test", "y_test")
    if test.shape != train.shape:
        raise PoisonlabError(f"{path}: x_test images are {test.shape}, x images {train.shape}; expected one shape")
    return train, test
