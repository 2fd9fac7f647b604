"""A user's own data: a folder of images in class sub-folders, or an .npz with x/y arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data.validate import to_image_set

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def read_pixels(path: Path, mode: str | None = None) -> np.ndarray:
    """One image file as uint8 (H, W) or (H, W, 3); ``mode`` 'L' or 'RGB' forces the channels."""
    try:
        with Image.open(path) as im:
            im.load()
            if mode is None:
                mode = "L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"
            return np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise PoisonlabError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise PoisonlabError(f"{path}: not a readable image ({e})") from None


def read_image(path: Path, mode: str | None = None) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1]; ``mode`` 'L' or 'RGB' forces the channels."""
    arr = read_pixels(path, mode).astype(np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise PoisonlabError(f"{root}: expected one sub-folder of images per class, found none")
    return folders


def load_image_folder(root: Path) -> ImageSet:
    """Images under ``root/<class name>/``; classes in sorted folder order; all images one size.

    Grayscale when every image is grayscale, RGB otherwise. Errors name the offending file.
    """
    if not root.is_dir():
        raise PoisonlabError(f"{root}: no such folder of images")
    folders = _class_folders(root)
    files: list[tuple[Path, int]] = []
    for k, folder in enumerate(folders):
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise PoisonlabError(f"{folder}: class {folder.name!r} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += [(p, k) for p in found]
    gray = True
    for path, _ in files:
        try:
            with Image.open(path) as im:
                gray &= im.mode in ("1", "L", "I", "I;16", "F")
        except (UnidentifiedImageError, OSError) as e:
            raise PoisonlabError(f"{path}: not a readable image ({e})") from None
    mode = "L" if gray else "RGB"
    images: list[np.ndarray] = []
    for path, _ in files:
        img = read_image(path, mode)
        if images and img.shape != images[0].shape:
            raise PoisonlabError(
                f"{path}: size {img.shape[2]}x{img.shape[1]} differs from the first image's "
                f"{images[0].shape[2]}x{images[0].shape[1]}; resize the folder to one size first"
            )
        images.append(img)
    y = np.array([k for _, k in files], dtype=np.int64)
    return to_image_set(np.stack(images), y, tuple(f.name for f in folders), str(root))


def _split(full: ImageSet, test_size: float = 0.2) -> tuple[ImageSet, ImageSet]:
    """A stratified split with a fixed seed, so the test set never depends on the run's seed."""
    idx = np.arange(len(full))
    labels = full.y.numpy()
    stratify = labels if np.bincount(labels).min() >= 2 else None
    from sklearn.model_selection import train_test_split  # deferred: scikit-learn takes a second to import

    tr, te = train_test_split(idx, test_size=test_size, stratify=stratify, random_state=0)
    return full.subset(torch.from_numpy(np.sort(tr))), full.subset(torch.from_numpy(np.sort(te)))


def load_folder_dataset(arg: str | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """``folder:PATH``: PATH/train and PATH/test if both exist, else PATH split 80/20 (fixed split seed)."""
    if not arg:
        raise PoisonlabError("dataset folder: expected folder:PATH to a folder of class sub-folders")
    root = Path(arg)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = load_image_folder(root / "train"), load_image_folder(root / "test")
        if train.classes != test.classes or train.shape != test.shape:
            raise PoisonlabError(f"{root}: train/ and test/ must have the same class folders and image size")
        return train, test
    return _split(load_image_folder(root))


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


def load_npz_dataset(arg: str | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """``npz:PATH``: arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``, ``classes`` (no pickles)."""
    if not arg:
        raise PoisonlabError("dataset npz: expected npz:PATH to an .npz with arrays x and y")
    path = Path(arg)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise PoisonlabError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise PoisonlabError(f"{path}: not a readable .npz without pickled objects ({e})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise PoisonlabError(f"{path}: missing array {key!r}; found {sorted(arrays)}")
    labels = [arrays[k] for k in ("y", "y_test") if k in arrays]
    for key, a in zip(("y", "y_test"), labels, strict=False):
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or a.size == 0:
            raise PoisonlabError(f"{path}: {key!r} must be a non-empty 1-D integer array, got {a.dtype} {a.shape}")
    if "classes" in arrays:
        classes = tuple(str(c) for c in arrays["classes"])
    else:
        classes = tuple(str(k) for k in range(max(int(a.max()) for a in labels) + 1))

    def part(xkey: str, ykey: str) -> ImageSet:
        source = f"{path} [{xkey}]"
        return to_image_set(_scale(_to_nchw(arrays[xkey], source), source), arrays[ykey], classes, source)

    train = part("x", "y")
    if "x_test" in arrays and "y_test" in arrays:
        return train, part("x_test", "y_test")
    return _split(train)
