"""A benign image corpus built offline, to calibrate scaling-attack detectors and to measure their false positives.

Photographs shipped with scikit-image and scikit-learn are split into two disjoint sets: ``calibration``
(thresholds are set on it) and ``holdout`` (false-positive rates are measured on it), so that a measured
rate is never the one a threshold was fitted to. Each set yields square RGB images of one size in the
variants a real data set holds and that trip naive detectors: crops at random scales and flips, JPEG at
quality 75 and 95, Gaussian noise (sigma 5 and 15), unsharp-mask sharpening, fine textures, photos resized
with bicubic interpolation, and images upscaled from 64 px (nearest, linear, cubic, Lanczos).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image

from poisonlab.core import PoisonlabError

SPLITS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # (photographs, fine textures); no image is in both splits, each has a scanned document
    "calibration": (("astronaut", "coffee", "china", "hubble_deep_field", "camera", "coins", "cell", "clock",
                     "motorcycle", "text"), ("grass", "brick")),
    "holdout": (("chelsea", "rocket", "flower", "retina", "immunohistochemistry", "moon", "page"), ("gravel",)),
}

COUNTS = {"crop": 48, "jpeg75": 32, "jpeg95": 32, "noise5": 24, "noise15": 24, "sharpen": 48, "texture": 40,
          "cubic": 32, "upscaled": 40}
"""Images per variant in one corpus (320 in all)."""


@lru_cache(maxsize=64)
def _load(name: str) -> np.ndarray:
    from skimage import data
    from sklearn.datasets import load_sample_images

    if name in ("china", "flower"):
        img = load_sample_images().images[("china", "flower").index(name)]
    elif name == "motorcycle":
        img = data.stereo_motorcycle()[0]
    else:
        img = getattr(data, name)()
    img = np.asarray(img)
    rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    return np.ascontiguousarray(rgb.astype(np.uint8))


def _fit(img: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    return cv2.resize(img, (size, size), interpolation=interpolation) if img.shape[0] != size else img


def _orient(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    out = img[:, ::-1] if rng.random() < 0.5 else img
    return np.ascontiguousarray(np.rot90(out) if rng.random() < 0.25 else out)


def _crop(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """A square crop of random side (at least ``size`` when the photo allows), scaled to ``size``."""
    h, w = img.shape[:2]
    side = min(h, w)
    side = int(rng.integers(min(size, side), side + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = img[top:top + side, left:left + side]
    return _orient(rng, _fit(crop, size, cv2.INTER_AREA if side > size else cv2.INTER_CUBIC))


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def _sharpen(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float64)
    blur = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.7, 2.0)))
    return np.clip(np.rint(x + rng.uniform(0.8, 2.0) * (x - blur)), 0, 255).astype(np.uint8)


def _texture(rng: np.random.Generator, textures: list[np.ndarray], photos: list[np.ndarray],
             size: int) -> np.ndarray:
    """A crop of a texture, or the most detailed of a few native-resolution crops of a photo."""
    if rng.random() < 0.5:
        img = textures[int(rng.integers(len(textures)))]
        side = int(rng.integers(int(0.6 * min(img.shape[:2])), min(img.shape[:2]) + 1))
        top = int(rng.integers(0, img.shape[0] - side + 1))
        left = int(rng.integers(0, img.shape[1] - side + 1))
        return _orient(rng, _fit(img[top:top + side, left:left + side], size, cv2.INTER_CUBIC))
    img = photos[int(rng.integers(len(photos)))]
    if min(img.shape[:2]) < size:
        img = cv2.resize(img, None, fx=size / min(img.shape[:2]), fy=size / min(img.shape[:2]),
                         interpolation=cv2.INTER_CUBIC)
    best, detail = img[:size, :size], -1.0
    for _ in range(6):
        top, left = int(rng.integers(0, img.shape[0] - size + 1)), int(rng.integers(0, img.shape[1] - size + 1))
        crop = img[top:top + size, left:left + size]
        d = float(np.abs(cv2.Laplacian(crop.astype(np.float64), cv2.CV_64F)).mean())
        if d > detail:
            best, detail = crop, d
    return _orient(rng, np.ascontiguousarray(best))


_UPSCALERS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)


def _variant(kind: str, rng: np.random.Generator, photos: list[np.ndarray], textures: list[np.ndarray],
             size: int) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    simple: dict[str, Callable[[], np.ndarray]] = {
        "crop": lambda: _crop(rng, photo, size),
        "jpeg75": lambda: _jpeg(_crop(rng, photo, size), 75),
        "jpeg95": lambda: _jpeg(_crop(rng, photo, size), 95),
        "noise5": lambda: _noise(rng, _crop(rng, photo, size), 5.0),
        "noise15": lambda: _noise(rng, _crop(rng, photo, size), 15.0),
        "sharpen": lambda: _sharpen(rng, _crop(rng, photo, size)),
        "texture": lambda: _texture(rng, textures, photos, size),
        "cubic": lambda: _orient(rng, cv2.resize(photo, (size, size), interpolation=cv2.INTER_CUBIC)),
        "upscaled": lambda: cv2.resize(_crop(rng, photo, 64), (size, size),
                                       interpolation=_UPSCALERS[int(rng.integers(len(_UPSCALERS)))]),
    }
    return simple[kind]()


def benign_corpus(split: str, size: int, seed: int = 0,
                  counts: dict[str, int] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(variant, uint8 RGB image size x size) pairs of one split, deterministic in ``seed``."""
    if split not in SPLITS:
        raise PoisonlabError(f"corpus split {split!r}: expected one of {', '.join(SPLITS)}")
    if size < 64:
        raise PoisonlabError(f"corpus size {size}: expected at least 64 (images are upscaled from 64 px)")
    names, texture_names = SPLITS[split]
    photos, textures = [_load(n) for n in names], [_load(n) for n in texture_names]
    rng = np.random.default_rng([seed, size, list(SPLITS).index(split)])
    for kind, count in (counts or COUNTS).items():
        for _ in range(count):
            yield kind, _variant(kind, rng, photos, textures, size)
