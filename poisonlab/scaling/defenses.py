"""Defenses against image-scaling attacks (Quiring et al., USENIX Security 2020, Sec. 5).

* Robust scaling: a resize that reads every source pixel with comparable weight (area, Pillow's filters)
  leaves the attacker no pixels to hide in; ``safe_resize`` is the drop-in.
* Image reconstruction: before a vulnerable resize, replace each pixel the scaler reads by the median
  (selective median filter) or by a random pick (selective random filter) of the pixels around it that it
  does not read, so the attacker's few modified pixels are overwritten by the image they hide in.
* Detection: an attack image disagrees with itself across scalers. ``roundtrip`` compares the image with
  its downscale-upscale round trip; ``filtering`` compares the resize of the image with the resize of its
  selective-median reconstruction; ``robust-compare`` compares the vulnerable resize with area scaling.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import cv2
import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from poisonlab.core import PoisonlabError, Verdict
from poisonlab.scaling.operator import ScalingOperator, operator_for
from poisonlab.scaling.resize import RESIZERS, Resizer, get_resizer

_CHUNK = 8192


def safe_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Downscale with OpenCV area interpolation, which reads every pixel: not open to scaling attacks."""
    return get_resizer("opencv", "area")(image, size)


def is_robust(resizer: Resizer, source_shape: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether ``resizer`` reads every source pixel for this downscale (the paper's first robustness criterion)."""
    return operator_for(resizer, source_shape, size).coverage() == 1.0


def _window(op: ScalingOperator) -> int:
    ratio = max(op.source_shape[0] / op.target_shape[0], op.source_shape[1] / op.target_shape[1])
    return 2 * max(1, int(np.ceil(ratio / 2))) + 1


def _neighbours(image: np.ndarray, op: ScalingOperator, window: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of read pixels and, per read pixel and channel, its window with read pixels set to NaN."""
    k = window or _window(op)
    mask = op.read_mask()
    planes = (image[..., None] if image.ndim == 2 else image).astype(np.float32)
    hidden = np.where(mask[..., None], np.nan, planes)
    pad = k // 2
    padded = np.pad(hidden, ((pad, pad), (pad, pad), (0, 0)), constant_values=np.nan)
    windows = sliding_window_view(padded, (k, k), axis=(0, 1))  # (H, W, C, k, k), a view
    coords = np.argwhere(mask)
    return coords, windows


def _reconstruct(image: np.ndarray, op: ScalingOperator, window: int | None,
                 pick: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    if image.shape[:2] != op.source_shape:
        raise PoisonlabError(f"image {image.shape[:2]}: expected {op.source_shape} to match the scaler")
    coords, windows = _neighbours(image, op, window)
    out = (image[..., None] if image.ndim == 2 else image).astype(np.float64).copy()
    for start in range(0, len(coords), _CHUNK):
        r, c = coords[start:start + _CHUNK].T
        vals = windows[r, c].reshape(len(r), out.shape[2], -1)  # (n, C, k*k), NaN where the scaler reads
        out[r, c] = np.where(np.isnan(vals).all(axis=2), out[r, c], pick(vals))
    out = out[..., 0] if image.ndim == 2 else out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8) if image.dtype == np.uint8 else out


def _nanmedian(vals: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows are handled by the caller
        return np.nanmedian(vals, axis=2)


def selective_median(image: np.ndarray, resizer: Resizer, size: tuple[int, int],
                     window: int | None = None) -> np.ndarray:
    """Replace every pixel ``resizer`` reads by the median of the unread pixels in its window."""
    return _reconstruct(image, operator_for(resizer, image.shape[:2], size), window, _nanmedian)


def selective_random(image: np.ndarray, resizer: Resizer, size: tuple[int, int], window: int | None = None,
                     seed: int = 0) -> np.ndarray:
    """Replace every pixel ``resizer`` reads by a random unread pixel from its window."""
    rng = np.random.default_rng(seed)

    def pick(vals: np.ndarray) -> np.ndarray:
        key = np.where(np.isnan(vals), -1.0, rng.random(vals.shape))
        chosen = np.take_along_axis(vals, key.argmax(axis=2)[..., None], axis=2)[..., 0]
        return np.nan_to_num(chosen)

    return _reconstruct(image, operator_for(resizer, image.shape[:2], size), window, pick)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def roundtrip_score(image: np.ndarray, resizer: Resizer, size: tuple[int, int]) -> float:
    """MSE between the image and its downscale by ``resizer`` upscaled back (bilinear)."""
    small = resizer(image.astype(np.float64), size)
    back = cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return _mse(image, back.reshape(image.shape))


def filtering_score(image: np.ndarray, resizer: Resizer, size: tuple[int, int]) -> float:
    """MSE between the resize of the image and the resize of its selective-median reconstruction."""
    img = image.astype(np.float64)
    return _mse(resizer(img, size), resizer(selective_median(img, resizer, size), size))


def robust_compare_score(image: np.ndarray, resizer: Resizer, size: tuple[int, int]) -> float:
    """MSE between the resize by ``resizer`` and area scaling, which an attack cannot steer."""
    img = image.astype(np.float64)
    return _mse(resizer(img, size), safe_resize(img, size))


DETECTORS: dict[str, Callable[[np.ndarray, Resizer, tuple[int, int]], float]] = {
    "roundtrip": roundtrip_score, "filtering": filtering_score, "robust-compare": robust_compare_score,
}

# Default flag thresholds (MSE on the 0-255 scale): just above the largest benign score that
# bench/scaling_defenses.py measured on 256px photo crops at ratios 4 and 8 with opencv-linear (roundtrip
# 1236, filtering 464, robust-compare 431). Scores scale with image content and size: calibrate on your data.
THRESHOLDS = {"roundtrip": 1300.0, "filtering": 500.0, "robust-compare": 450.0}


def detect(images: list[np.ndarray], resizer: Resizer, size: tuple[int, int], score: str = "filtering",
           threshold: float | None = None) -> Verdict:
    """Score every image with ``score`` and flag those above ``threshold`` (default: THRESHOLDS)."""
    if score not in DETECTORS:
        raise PoisonlabError(f"unknown detection score {score!r}; expected one of: {', '.join(DETECTORS)}")
    import torch

    values = torch.tensor([DETECTORS[score](img, resizer, size) for img in images], dtype=torch.float64)
    cut = THRESHOLDS[score] if threshold is None else threshold
    return Verdict(scores=values, flagged=values > cut, details={"score": score, "threshold": cut})


def median_filtered(x: torch.Tensor, resizer: str, size: tuple[int, int]) -> torch.Tensor:
    """Selective median filter against ``resizer``'s pipeline to ``size`` on every plane of NCHW images in [0, 1]."""
    op = RESIZERS.get(resizer)
    planes = x.numpy().reshape(-1, *x.shape[-2:]) * 255.0
    out = np.stack([selective_median(p, op, size) for p in planes]) / 255.0
    return torch.from_numpy(out).float().reshape(x.shape)
