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
