"""Batched feature extraction from a chosen layer of a ``nn.Sequential`` classifier.

Scanners look at one class at a time; features are computed ``batch_size`` images at a time and
only the requested images' features are kept, so a full-dataset activation tensor never exists.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from poisonlab.core import ImageSet, PoisonlabError

LAYERS = ("penultimate", "pre-activation", "conv")
"""Named layers: the input of the last Linear (post-ReLU), the same units before their ReLU,
and the flattened output of the convolutional stack (the input of the first Linear)."""


def _linear_positions(model: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]


def layer_cut(model: nn.Module, layer: str | int) -> int:
    """How many leading modules of ``model`` produce the features of ``layer``.

    ``layer`` is a name from LAYERS or an integer k (features = output of ``model[:k]``).
    """
    if not isinstance(model, nn.Sequential):
        raise PoisonlabError(f"model: expected an nn.Sequential to cut at a layer, got {type(model).__name__}")
    linear = _linear_positions(model)
    if isinstance(layer, int):
        if not 0 < layer < len(model):
            raise PoisonlabError(f"feature layer {layer}: expected an index in [1, {len(model) - 1}]")
        return layer
    if layer not in LAYERS:
        raise PoisonlabError(f"feature layer {layer!r}: expected one of {', '.join(LAYERS)} or an integer")
    if not linear:
        raise PoisonlabError("model: expected at least one nn.Linear to locate the feature layer")
    if layer == "penultimate":
        return linear[-1]
    if layer == "pre-activation":
        if len(linear) < 2:
            raise PoisonlabError("feature layer 'pre-activation': the model has a single Linear layer")
        return linear[-2] + 1
    return linear[0]


def iter_features(
    model: nn.Module, x: Tensor, layer: str | int = "penultimate", batch_size: int = 1024
) -> Iterator[Tensor]:
    """Yield the flattened ``layer`` features of ``x``, ``batch_size`` images at a time."""
    if batch_size < 1:
        raise PoisonlabError(f"batch size {batch_size}: expected at least 1")
    head = nn.Sequential(*list(model)[: layer_cut(model, layer)])  # type: ignore[call-overload]
    head.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            batch = x[i : i + batch_size].contiguous(memory_format=torch.channels_last)
            yield head(batch).flatten(1).float()


def features(model: nn.Module, x: Tensor, layer: str | int = "penultimate", batch_size: int = 1024) -> Tensor:
    """The ``layer`` features of ``x`` as one (N, D) tensor; call it per class, not on a whole dataset."""
    parts = list(iter_features(model, x, layer, batch_size))
    return torch.cat(parts) if parts else torch.empty(0, 0)


def class_features(
    model: nn.Module, data: ImageSet, layer: str | int = "penultimate", batch_size: int = 1024
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield (class, indices of its samples in ``data``, their features), one class at a time."""
    for k in range(data.num_classes):
        idx = torch.nonzero(data.y == k).flatten()
        if len(idx):
            yield k, idx, features(model, data.x[idx], layer, batch_size)
