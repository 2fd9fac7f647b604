"""Shared fixtures: small seeded data so tests run in seconds."""

from __future__ import annotations

import pytest
import torch

from poisonlab.core import ImageSet
from poisonlab.data import make_synthetic


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def synthetic() -> ImageSet:
    """600 seeded 1x12x12 images of 4 classes."""
    return make_synthetic(600, num_classes=4, size=12, seed=0)


@pytest.fixture(scope="session")
def sets() -> tuple[ImageSet, ImageSet]:
    """1,000 seeded 1x12x12 images of 4 classes as 700 training and 300 test images (the compression tests' data)."""
    full = make_synthetic(1000, num_classes=4, size=12, seed=5)
    return full.subset(slice(0, 700)), full.subset(slice(700, 1000))
