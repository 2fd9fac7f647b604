"""Many-class handwritten numbers composed from MNIST digits: ``mnist-numbers:K`` has 10**K classes.

A K-digit number is K MNIST digit images side by side (28 x 28K pixels). Training numbers are
drawn from MNIST's training digits and test numbers from its test digits, so no digit image is
shared between train and test. Every class gets the same number of images. This is the offline
many-class benchmark for universal backdoors (and the bank-check scenario with amounts).
"""

from __future__ import annotations

import numpy as np
import torch

from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data.mnist import load_mnist

MAX_DIGITS = 3
DEFAULT_PER_CLASS = {1: (6000, 1000), 2: (500, 100), 3: (100, 10)}


def class_digits(num_digits: int) -> np.ndarray:
    """(10**K, K) array: row c holds the decimal digits of class c, most significant first."""
    c = np.arange(10**num_digits)
    return np.stack([(c // 10 ** (num_digits - 1 - i)) % 10 for i in range(num_digits)], axis=1)


def compose_numbers(
    digits: ImageSet, num_digits: int, per_class: int, seed: int, source: str = "mnist-numbers"
) -> tuple[ImageSet, np.ndarray]:
    """``per_class`` images of every K-digit number built from ``digits``; also the digit indices used.

    Each position of each image takes a digit image drawn uniformly (with a seeded generator) from
    the images of that digit in ``digits``. Returns the ImageSet (labels grouped in class order) and
    a (N, K) array of the indices into ``digits`` that make up each image, so callers can check
    which digit images a set uses.
    """
    if not 1 <= num_digits <= MAX_DIGITS:
        raise PoisonlabError(f"{source}: number of digits {num_digits}: expected 1 to {MAX_DIGITS}")
    if per_class < 1:
        raise PoisonlabError(f"{source}: images per class {per_class}: expected at least 1")
    rng = np.random.default_rng(seed)
    labels = digits.y.numpy()
    pools = [np.flatnonzero(labels == d) for d in range(10)]
    if any(len(p) == 0 for p in pools):
        raise PoisonlabError(f"{source}: the digit images must include every digit 0-9")
    table = class_digits(num_digits)
    y = np.repeat(np.arange(len(table)), per_class)
    parts = np.empty((len(y), num_digits), dtype=np.int64)
    for pos in range(num_digits):
        wanted = table[y, pos]
        for d in range(10):
            sel = np.flatnonzero(wanted == d)
            parts[sel, pos] = pools[d][rng.integers(0, len(pools[d]), size=len(sel))]
    idx = torch.from_numpy(parts)
    x = torch.cat([digits.x[idx[:, pos]] for pos in range(num_digits)], dim=3)
    names = tuple("".join(map(str, row)) for row in table)
    return ImageSet(x, torch.from_numpy(y), names), parts


def parse_numbers_spec(arg: str | None) -> tuple[int, int, int]:
    """``K[,train=N][,test=M]`` -> (K, train images per class, test images per class)."""
    head, *options = (arg or "2").split(",")
    try:
        k = int(head)
    except ValueError:
        raise PoisonlabError(f"mnist-numbers:{arg}: expected the digit count first, e.g. mnist-numbers:2") from None
    if not 1 <= k <= MAX_DIGITS:
        raise PoisonlabError(f"mnist-numbers:{arg}: number of digits {k}: expected 1 to {MAX_DIGITS}")
    sizes = dict(zip(("train", "test"), DEFAULT_PER_CLASS[k], strict=True))
    for opt in options:
        key, eq, value = opt.partition("=")
        if not eq or key.strip() not in sizes or not value.strip().isdigit():
            raise PoisonlabError(f"mnist-numbers:{arg}: option {opt!r}: expected train=N or test=N (images per class)")
        sizes[key.strip()] = int(value)
    return k, sizes["train"], sizes["test"]


def load_mnist_numbers(arg: str | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """``mnist-numbers:K[,train=N,test=M]``: 10**K classes, N (M) images per class from MNIST train (test) digits.

    Defaults: K=2 gives 50,000 / 10,000 images of 28x56; K=3 gives 100,000 / 10,000 of 28x84.
    """
    k, n_train, n_test = parse_numbers_spec(arg)
    digits_train, digits_test = load_mnist()
    train, _ = compose_numbers(digits_train, k, n_train, seed, f"mnist-numbers:{k} (train)")
    test, _ = compose_numbers(digits_test, k, n_test, seed + 1, f"mnist-numbers:{k} (test)")
    return train, test
