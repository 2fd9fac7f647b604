"""Small datasets for instant tests: scikit-learn's bundled 8x8 digits and a seeded synthetic set."""

from __future__ import annotations

import numpy as np

from poisonlab.core import ImageSet
from poisonlab.data.validate import to_image_set


def load_sklearn_digits(arg: str | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 1,797 8x8 digits, split 80/20 stratified with a fixed split seed."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn takes a second to import
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, digits.target, test_size=0.2, stratify=digits.target, random_state=0)
    classes = tuple(str(d) for d in range(10))
    return to_image_set(xtr, ytr, classes, "digits (train)"), to_image_set(xte, yte, classes, "digits (test)")


def make_synthetic(
    n: int = 1000, num_classes: int = 4, size: int = 12, channels: int = 1, seed: int = 0, noise: float = 0.15
) -> ImageSet:
    """Seeded images: each class is a fixed smooth random prototype plus per-image noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((num_classes, channels, 3, 3))
    protos = np.kron(coarse, np.ones((1, 1, size // 3 + 1, size // 3 + 1)))[:, :, :size, :size] * 0.8
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = np.clip(protos[y] + noise * rng.standard_normal((n, channels, size, size)), 0, 1).astype(np.float32)
    classes = tuple(f"class{k}" for k in range(num_classes))
    return to_image_set(x, y, classes, "synthetic")


def load_synthetic(arg: str | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """2,000 training and 500 test synthetic 1x12x12 images of 4 classes (prototypes fixed, noise seeded)."""
    full = make_synthetic(2500, seed=seed)
    return full.subset(slice(0, 2000)), full.subset(slice(2000, 2500))


def load_breast_cancer_sets(arg: str | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's bundled breast-cancer table (569 x 30) as 1x1x30 'images', min-max scaled to [0, 1].

    Split 70/30 stratified with ``seed``; the scaling uses the training part's range (test values clipped).
    """
    from sklearn.datasets import load_breast_cancer  # deferred: scikit-learn takes a second to import
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    xtr, xte, ytr, yte = train_test_split(data.data, data.target, test_size=0.3, stratify=data.target,
                                          random_state=seed)
    lo, hi = xtr.min(0), xtr.max(0)
    scale = np.where(hi > lo, hi - lo, 1.0)

    def to_set(x: np.ndarray, y: np.ndarray, part: str) -> ImageSet:
        x01 = np.clip((x - lo) / scale, 0.0, 1.0).astype(np.float32)[:, None, None, :]
        return to_image_set(x01, y, tuple(str(c) for c in data.target_names), f"breast-cancer ({part})")

    return to_set(xtr, ytr, "train"), to_set(xte, yte, "test")

