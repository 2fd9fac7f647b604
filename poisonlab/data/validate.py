"""Checks every dataset passes before it becomes an ImageSet: one-line errors naming the bad item."""

from __future__ import annotations

import numpy as np
import torch

from poisonlab.core import ImageSet, PoisonlabError


def to_image_set(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...], source: str) -> ImageSet:
    """Validate float images in [0, 1] shaped (N, C, H, W) and integer labels, and wrap them as an ImageSet.

    Raises PoisonlabError naming ``source`` and the first offending index for NaNs, values outside
    [0, 1], duplicate class names, labels outside [0, len(classes)) and classes without a single sample.
    """
    if x.ndim != 4:
        raise PoisonlabError(f"{source}: expected images shaped (N, C, H, W), got {x.shape}")
    if len(x) != len(y):
        raise PoisonlabError(f"{source}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise PoisonlabError(f"{source}: no images")
    if not np.issubdtype(y.dtype, np.integer):
        raise PoisonlabError(f"{source}: labels must be integers, got dtype {y.dtype}")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        raise PoisonlabError(f"{source}: image {int(np.argmin(finite))} contains NaN or infinity")
    flat = x.reshape(len(x), -1)
    outside = (flat.min(axis=1) < 0) | (flat.max(axis=1) > 1)
    if outside.any():
        i = int(np.argmax(outside))
        raise PoisonlabError(
            f"{source}: image {i} has values in [{flat[i].min():g}, {flat[i].max():g}]; expected [0, 1]"
        )
    if len(set(classes)) != len(classes):
        twice = next(c for c in classes if classes.count(c) > 1)
        raise PoisonlabError(f"{source}: class name {twice!r} appears more than once; expected distinct names")
    bad = (y < 0) | (y >= len(classes))
    if bad.any():
        i = int(np.argmax(bad))
        raise PoisonlabError(f"{source}: label {int(y[i])} at index {i} is outside [0, {len(classes) - 1}]")
    counts = np.bincount(y, minlength=len(classes))
    if (counts == 0).any():
        k = int(np.argmin(counts))
        raise PoisonlabError(f"{source}: class {k} ({classes[k]!r}) has no images")
    return ImageSet(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(y.astype(np.int64)),
        classes,
    )
