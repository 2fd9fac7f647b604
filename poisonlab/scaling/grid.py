"""Grid contrast: how far the pixels a scaler reads stand out from their neighbours, against grids it does not read.

An image-scaling attack changes only the pixels a vulnerable resize reads with a heavy weight (a sparse,
regular grid), so on an attack image those pixels disagree with the unread pixels around them. That
disagreement alone is a poor test: sharpened photos, noise and fine textures disagree with their
neighbours everywhere. Here each grid pixel gets a residual, its value minus the mean of the pixels in its
small window that are on neither grid. Per output pixel, the resize of the residuals on the
read grid is compared with the same resize of the residuals on copies of the grid shifted within the
sampling period, which the scaler does not read. On a benign image the two agree whatever its texture;
on an attack the read grid carries another image.

Per output pixel the contrast is ``q = (e_read + f) / (e_shifted + f)`` (energies averaged over the
shifts, ``f`` a floor so flat regions give 1, not 0/0). The global score is the geometric mean of q over
the output; the local score is the largest geometric mean over windows of 1/8 of the output's height and
width (at least 8 output pixels; half-window strides), so an attack on a part of the image is not
averaged away. Both are about 1 on benign images and far above it on attacks. An attacker who evades it
must also change the shifted grids, i.e. paint the target into most pixels of the region it attacks
(``bench/scaling_adaptive.py`` measures what that costs). An edge-following predictor (LOCO-I per
quadrant) was tried and dropped: it spares upscaled images but lets an attacker that also changes one
neighbour of each read pixel pass unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from poisonlab.scaling.operator import ScalingOperator, operator_for
from poisonlab.scaling.resize import Resizer

HEAVY = 0.2
"""A tap is read when its weight is at least this share of the largest weight of its output."""
FLOOR = 4.0
"""Residual energy (0-255 scale, squared) added per output value and channel: flat regions give ratios near 1."""
WINDOWS = 8
"""Local windows are 1/WINDOWS of the output's height and width ..."""
MIN_WINDOW = 8
"""... and at least this many output pixels a side (or the whole side), so small outputs are not scored on a few
pixels: a 64 px output (where the shipped table is calibrated) and larger ones get 1/8 windows."""
MAX_OVERLAP = 0.75
"""A shifted grid is used when at most this share of it falls on read pixels (irregular, low-ratio grids)."""


@dataclass(frozen=True)
class GridContrast:
    """Global and local grid contrast of one image; NaN when the resize leaves no unread grid to compare with."""

    global_ratio: float
    local_ratio: float
    window: tuple[int, int, int, int]
    """(top, left, height, width) in output pixels of the window with the local maximum."""


def _heavy(m: np.ndarray) -> np.ndarray:
    """Per source index (columns of ``m``, one row per output): whether some output gives it a heavy weight."""
    a = np.abs(m)
    peak = a.max(axis=1, keepdims=True)
    return ((a >= HEAVY * np.where(peak > 0, peak, np.inf)) & (a > 0)).any(axis=0)


def read_grid(op: ScalingOperator) -> np.ndarray:
    """(H, W) bool: the pixels the resize reads with a heavy weight, the ones an attack must change."""
    return _heavy(op.left)[:, None] & _heavy(op.right.T)[None, :]


def _run(heavy: np.ndarray) -> int:
    """Longest run of consecutive read indices along one axis."""
    edges = np.diff(np.r_[0, heavy.astype(np.int8), 0])
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max(initial=1))


def _phases(source: int, target: int) -> list[int]:
    """Up to four offsets spread over one sampling period of an axis (at least offsets 0 and 1)."""
    period = max(2, round(source / target))
    return sorted({round(period * q / 4) % period for q in range(4)})


def shifts(mask: np.ndarray, op: ScalingOperator) -> list[tuple[tuple[int, int], np.ndarray]]:
    """(offset, used) per shifted grid: ``used`` marks the read pixels whose shifted copy is not read itself."""
    (big_h, big_w), (h, w) = op.source_shape, op.target_shape
    out = []
    for a in _phases(big_h, h):
        for b in _phases(big_w, w):
            if a or b:
                used = mask & ~np.roll(mask, (-a, -b), axis=(0, 1))
                if used.sum() >= (1 - MAX_OVERLAP) * mask.sum() > 0:
                    out.append(((a, b), used))
    return out


def _residuals(planes: np.ndarray, reference: np.ndarray, k: int, at: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(n, C): the pixels at ``at`` (none of them reference pixels) minus the mean of the ``reference`` pixels in
    their k x k window (0 where there is none)."""
    r, c = at
    ref = reference.astype(np.float32)
    total = cv2.boxFilter(planes * ref[..., None], -1, (k, k), normalize=False,
                          borderType=cv2.BORDER_CONSTANT).reshape(planes.shape)[r, c]
    count = cv2.boxFilter(ref, -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)[r, c][:, None]
    return np.where(count > 0, planes[r, c] - total / np.where(count > 0, count, 1.0), 0.0)


def energy_maps(image: np.ndarray, op: ScalingOperator) -> tuple[np.ndarray, np.ndarray] | None:
    """(read, shifted) energies per output pixel (h, w), summed over channels and averaged over the shifts.

    ``read``: the squared resize of the residuals on the read grid; ``shifted``: the same for the residuals
    of the shifted grids, moved onto the read grid. None when no shifted grid exists.
    """
    rows, cols = _heavy(op.left), _heavy(op.right.T)
    mask = rows[:, None] & cols[None, :]
    grids = shifts(mask, op)
    if not grids:
        return None
    k = 2 * ((max(_run(rows), _run(cols)) + 1) // 2) + 1
    planes = (image[..., None] if image.ndim == 2 else image).astype(np.float32)
    big_h, big_w = mask.shape
    read = np.zeros(op.target_shape)
    shifted = np.zeros(op.target_shape)
    for (a, b), used in grids:
        reference = ~(mask | np.roll(mask, (a, b), axis=(0, 1)))
        r, c = np.nonzero(used)
        for energy, at in ((read, (r, c)), (shifted, ((r + a) % big_h, (c + b) % big_w))):
            on_grid = np.zeros((planes.shape[2], big_h, big_w))
            on_grid[:, r, c] = _residuals(planes, reference, k, at).T
            energy += (op.apply(on_grid) ** 2).sum(axis=0)
    return read / len(grids), shifted / len(grids)


def _window_means(m: np.ndarray, size: tuple[int, int],
                  stride: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means, tops, lefts): ``m`` averaged over windows at ``stride`` steps, the last ones flush with the edges."""
    integral = np.pad(m, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)
    tops = np.unique(np.r_[np.arange(0, m.shape[0] - size[0] + 1, stride[0]), m.shape[0] - size[0]])[:, None]
    lefts = np.unique(np.r_[np.arange(0, m.shape[1] - size[1] + 1, stride[1]), m.shape[1] - size[1]])[None, :]
    sums = (integral[tops + size[0], lefts + size[1]] - integral[tops, lefts + size[1]]
            - integral[tops + size[0], lefts] + integral[tops, lefts])
    return sums / (size[0] * size[1]), tops[:, 0], lefts[0]


def grid_contrast(image: np.ndarray, resizer: Resizer, size: tuple[int, int]) -> GridContrast:
    """Global and local grid contrast of ``image`` (H, W[, C], 0-255) against ``resizer`` to ``size`` (h, w)."""
    op = operator_for(resizer, image.shape[:2], size)
    maps = energy_maps(np.asarray(image, dtype=np.float32), op)
    h, w = size
    if maps is None:
        return GridContrast(float("nan"), float("nan"), (0, 0, h, w))
    floor = FLOOR * (1 if image.ndim == 2 else image.shape[2])
    log_q = np.log((maps[0] + floor) / (maps[1] + floor))
    win = (min(h, max(MIN_WINDOW, -(-h // WINDOWS))), min(w, max(MIN_WINDOW, -(-w // WINDOWS))))
    means, tops, lefts = _window_means(log_q, win, (max(1, win[0] // 2), max(1, win[1] // 2)))
    i, j = np.unravel_index(int(means.argmax()), means.shape)
    return GridContrast(float(np.exp(log_q.mean())), float(np.exp(means[i, j])),
                        (int(tops[i]), int(lefts[j]), *win))
