"""Defenses against image-scaling attacks (Quiring et al., USENIX Security 2020, Sec. 5).

* Robust scaling: a resize that reads every source pixel with comparable weight (area, Pillow's filters)
  leaves the attacker no pixels to hide in; ``safe_resize`` is the drop-in.
* Image reconstruction: before a vulnerable resize, replace each pixel the scaler reads by the median
  (selective median filter) or by a random pick (selective random filter) of the pixels around it that it
  does not read, so the attacker's few modified pixels are overwritten by the image they hide in.
* Detection: an attack image disagrees with itself across scalers. ``local`` (the default) and ``grid``
  measure how far the pixels the scaler reads stand out from their neighbours against grids it does not
  read (``poisonlab.scaling.grid``): per window, so an attack on part of the image shows, and over the whole
  image. The global MSE scores of the paper: ``roundtrip`` compares the image with its downscale-upscale
  round trip; ``filtering`` compares the resize of the image with the resize of its selective-median
  reconstruction; ``robust-compare`` compares the vulnerable resize with area scaling.
* Thresholds come from a calibration per resizer and ratio (``poisonlab.scaling.calibration``): the
  shipped table, or one ``calibrate`` sets on a user's benign images at a stated false-positive rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from rich.console import Console
from rich.progress import Progress

from poisonlab.core import PoisonlabError, Verdict
from poisonlab.scaling.calibration import (
    DEFAULT_FPR,
    SCORES,
    Calibration,
    Entry,
    downscale_ratio,
    ratio_key,
    shipped,
    threshold_at,
)
from poisonlab.scaling.grid import grid_contrast, read_grid
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
    """np.nanmedian over the last axis (NaN where all are NaN), by one sort: many times faster on small windows."""
    ordered = np.sort(vals, axis=2)  # NaN sorts last
    n = (~np.isnan(vals)).sum(axis=2)
    lo = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[..., None], axis=2)[..., 0]
    hi = np.take_along_axis(ordered, (n // 2)[..., None], axis=2)[..., 0]
    return np.where(n > 0, (lo + hi) / 2, np.nan)


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
    """MSE between the resize of the image and the resize of its selective-median reconstruction.

    NaN when the resize reads every pixel: there is no unread pixel to reconstruct from.
    """
    if operator_for(resizer, image.shape[:2], size).coverage() == 1.0:
        return float("nan")
    img = image.astype(np.float64)
    return _mse(resizer(img, size), resizer(selective_median(img, resizer, size), size))


def robust_compare_score(image: np.ndarray, resizer: Resizer, size: tuple[int, int]) -> float:
    """MSE between the resize by ``resizer`` and area scaling, which an attack cannot steer."""
    img = image.astype(np.float64)
    return _mse(resizer(img, size), safe_resize(img, size))


def grid_score(image: np.ndarray, resizer: Resizer, size: tuple[int, int]) -> float:
    """Global grid contrast (``poisonlab.scaling.grid``): about 1 on benign images, far above on attacks."""
    return grid_contrast(image, resizer, size).global_ratio


def local_score(image: np.ndarray, resizer: Resizer, size: tuple[int, int]) -> float:
    """Largest grid contrast over windows of 1/8 of the output's side: catches attacks on part of the image."""
    return grid_contrast(image, resizer, size).local_ratio


DETECTORS: dict[str, Callable[[np.ndarray, Resizer, tuple[int, int]], float]] = {
    "local": local_score, "grid": grid_score, "filtering": filtering_score, "roundtrip": roundtrip_score,
    "robust-compare": robust_compare_score,
}
"""Detection scores by name; ``local`` is the default. NaN where a score does not apply to the resize."""


def open_to_attack(resizer: Resizer, source_shape: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether the resize leaves pixels unread or lightly read, where an image-scaling attack can hide."""
    return not bool(read_grid(operator_for(resizer, source_shape, size)).all())


def score_all(image: np.ndarray, resizer: Resizer, size: tuple[int, int]) -> dict[str, float]:
    """Every detection score of one image (the grid contrast computed once for ``local`` and ``grid``)."""
    g = grid_contrast(image, resizer, size)
    rest = {name: DETECTORS[name](image, resizer, size) for name in DETECTORS if name not in ("local", "grid")}
    return {"local": g.local_ratio, "grid": g.global_ratio, **rest}


def _progress(enabled: bool) -> Progress:
    return Progress(console=Console(stderr=True), disable=not enabled, transient=True)


def _check_size(image: np.ndarray, size: tuple[int, int], name: str) -> None:
    if image.shape[0] < size[0] or image.shape[1] < size[1]:
        raise PoisonlabError(f"{name}: {image.shape[1]}x{image.shape[0]} is smaller than the size "
                             f"{size[1]}x{size[0]}; expected a downscale")


def calibrate(images: Iterable[np.ndarray], resizer: Resizer, size: tuple[int, int], fpr: float = DEFAULT_FPR,
              names: Sequence[str] | None = None, progress: bool = False) -> list[Entry]:
    """Thresholds for every score at ``fpr`` from benign ``images``, one entry per ratio among them.

    Images the resize reads in full (not open to an attack) are left out; a ratio with too few images
    for ``fpr`` is refused with its count.
    """
    if not 0 < fpr < 1:
        raise PoisonlabError(f"--fpr {fpr}: expected a false-positive rate between 0 and 1")
    groups: dict[int, list[dict[str, float]]] = {}
    with _progress(progress) as bar:
        task = bar.add_task("scoring benign images", total=len(names) if names is not None else None)
        for i, img in enumerate(images):
            _check_size(img, size, names[i] if names is not None else f"image {i}")
            if open_to_attack(resizer, img.shape[:2], size):
                groups.setdefault(ratio_key(img.shape, size), []).append(score_all(img, resizer, size))
            bar.advance(task)
    if not groups:
        raise PoisonlabError(f"{resizer.name} reads every pixel of these images at {size[1]}x{size[0]}: there is "
                             "no image-scaling attack to calibrate against")
    return [Entry(resizer.name, key, len(rows),
                  {s: threshold_at(np.array([r[s] for r in rows]), fpr, f"{resizer.name} at ratio {key}")
                   for s in SCORES}, size=f"{size[1]}x{size[0]}")
            for key, rows in sorted(groups.items())]


def detect(images: Sequence[np.ndarray], resizer: Resizer, size: tuple[int, int], score: str = "local",
           threshold: float | None = None, calibration: Calibration | None = None,
           names: Sequence[str] | None = None, progress: bool = False) -> Verdict:
    """Score every image with ``score`` and flag those above the threshold.

    The threshold is ``threshold`` when given, else the ``calibration`` entry for the resizer and each
    image's ratio (default: the shipped table). ``details`` say which calibration was used and, per
    image, its ratio, threshold, calibrated ratio, the window of the local maximum and any note (an image
    the resize reads in full is not open to an attack: score NaN, never flagged).
    """
    if score not in DETECTORS:
        raise PoisonlabError(f"unknown detection score {score!r}; expected one of: {', '.join(DETECTORS)}")
    if threshold is not None and calibration is not None:
        raise PoisonlabError("--threshold and --calibration: expected one of them, not both")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise PoisonlabError(f"--threshold {threshold}: expected a finite number >= 0")
    table = None if threshold is not None else calibration or shipped()
    labels = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    values, flags, rows = [], [], []
    with _progress(progress) as bar:
        task = bar.add_task(f"scanning ({score})", total=len(images))
        for img, label in zip(images, labels, strict=True):
            _check_size(img, size, label)
            row: dict[str, Any] = {"ratio": round(downscale_ratio(img.shape, size), 3), "threshold": threshold,
                                   "calibrated_ratio": None, "window": None, "note": None}
            value = float("nan")
            if not open_to_attack(resizer, img.shape[:2], size):
                row["note"] = "the resize reads every pixel: not open to an image-scaling attack"
            else:
                if score in ("local", "grid"):
                    g = grid_contrast(img, resizer, size)
                    value = g.local_ratio if score == "local" else g.global_ratio
                    row["window"] = list(g.window) if score == "local" else None
                else:
                    value = DETECTORS[score](img, resizer, size)
                if not math.isfinite(value):
                    raise PoisonlabError(f"{label}: the {score} score does not apply to {resizer.name} from "
                                         f"{img.shape[1]}x{img.shape[0]} to {size[1]}x{size[0]}; choose another "
                                         "--score")
                if table is not None:
                    entry = table.entry(resizer.name, ratio_key(img.shape, size), score)
                    row["threshold"], row["calibrated_ratio"] = entry.thresholds[score], entry.ratio
            values.append(value)
            flags.append(math.isfinite(value) and value > row["threshold"])
            rows.append(row)
            bar.advance(task)
    source = {"source": "explicit --threshold", "threshold": threshold} if table is None else table.describe()
    return Verdict(scores=torch.tensor(values, dtype=torch.float64), flagged=torch.tensor(flags, dtype=torch.bool),
                   details={"score": score, "calibration": source, "images": rows})


def median_filtered(x: torch.Tensor, resizer: str, size: tuple[int, int]) -> torch.Tensor:
    """Selective median filter against ``resizer``'s pipeline to ``size`` on every plane of NCHW images in [0, 1]."""
    op = RESIZERS.get(resizer)
    planes = x.numpy().reshape(-1, *x.shape[-2:]) * 255.0
    out = np.stack([selective_median(p, op, size) for p in planes]) / 255.0
    return torch.from_numpy(out).float().reshape(x.shape)
