"""Batched feature extraction from a chosen layer of a ``nn.Sequential`` classifier.

Scanners look at one class at a time; features are computed ``batch_size`` images at a time and
only the requested images' features are kept, so a full-dataset activation tensor never exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.defenses.whitening import ClassStats, whitener

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


def iter_layers(
    model: nn.Module, x: Tensor, layers: Sequence[str | int], batch_size: int = 512
) -> Iterator[list[Tensor]]:
    """Yield, ``batch_size`` images at a time, the flattened features of every layer in ``layers``.

    The model runs once per batch: a layer's features come from the same forward pass that goes
    on to the next, deeper one. Image-shaped activations are kept channels-last, where CPU
    pooling is several times faster than on the (N, C, H, W) layout a one-channel input leaves.
    """
    if batch_size < 1:
        raise PoisonlabError(f"batch size {batch_size}: expected at least 1")
    cuts = [layer_cut(model, layer) for layer in layers]
    wanted = set(cuts)
    mods = list(model)[: max(cuts)]  # type: ignore[call-overload]
    for m in mods:
        m.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            h, out = x[i : i + batch_size], {}
            for depth, m in enumerate(mods, 1):
                h = m(h)
                if h.dim() == 4:
                    h = h.contiguous(memory_format=torch.channels_last)
                if depth in wanted:
                    out[depth] = h
            yield [out[c].flatten(1).float() for c in cuts]


def iter_features(
    model: nn.Module, x: Tensor, layer: str | int = "penultimate", batch_size: int = 512
) -> Iterator[Tensor]:
    """Yield the flattened ``layer`` features of ``x``, ``batch_size`` images at a time."""
    for (f,) in iter_layers(model, x, [layer], batch_size):
        yield f


def features(model: nn.Module, x: Tensor, layer: str | int = "penultimate", batch_size: int = 512) -> Tensor:
    """The ``layer`` features of ``x`` as one (N, D) tensor; call it per class, not on a whole dataset."""
    parts = list(iter_features(model, x, layer, batch_size))
    return torch.cat(parts) if parts else torch.empty(0, 0)


@dataclass
class ClassPass:
    """What the data scanners learn from one batched pass over a dataset, class by class.

    ``stats`` are the per-class statistics of the scanned layer, ``means`` the (C, D') class means
    of the provenance layer (computed on the way, as it lies before the scanned layer), and
    ``kept`` the scanned features of each class while their total fits in the ``keep_mb`` budget.
    A class not kept is recomputed batch by batch when asked for, so memory stays within the
    budget plus one class's features however large the dataset, and a dataset that fits is read
    through the model once instead of twice.
    """

    model: nn.Module
    data: ImageSet
    layer: str | int
    batch_size: int
    stats: ClassStats
    means: Tensor
    kept: dict[int, Tensor]

    @staticmethod
    def run(model: nn.Module, data: ImageSet, layer: str | int, provenance_layer: str | int, batch_size: int,
            keep_mb: float) -> ClassPass:
        stats, kept, budget = ClassStats(), {}, keep_mb * 2**20
        sums: Tensor | None = None
        for k in range(data.num_classes):
            idx = torch.nonzero(data.y == k).flatten()
            parts: list[Tensor] = []
            for f, early in iter_layers(model, data.x[idx], [layer, provenance_layer], batch_size):
                if sums is None:
                    sums = torch.zeros(data.num_classes, early.shape[1], dtype=torch.float64)
                stats.add(k, f)
                sums[k] += early.double().sum(0)
                parts.append(f)
            size = sum(f.numel() * f.element_size() for f in parts)
            if parts and size <= budget:
                kept[k], budget = torch.cat(parts), budget - size
        if sums is None:
            raise PoisonlabError("data scanner: expected at least one sample")
        means = sums / torch.bincount(data.y, minlength=data.num_classes).clamp_min(1).double()[:, None]
        return ClassPass(model, data, layer, batch_size, stats, means, kept)

    def whitening(self, whiten: bool) -> Tensor:
        """The (D, d) whitener of the pooled within-class covariance, or the identity when ``whiten`` is off."""
        if not whiten:
            return torch.eye(next(iter(self.stats.sums.values())).shape[0], dtype=torch.float64)
        return whitener(self.stats.pooled_covariance())

    def whitened(self, k: int, w: Tensor) -> tuple[Tensor, Tensor]:
        """Class ``k``'s features centred and whitened by ``w`` (n, d), and their covariance (d, d).

        The covariance comes from the pass's statistics (it equals z.T z / n) without the (n, d) product.
        """
        z = ((self.features(k) - self.stats.mean(k).float()) @ w.float()).double()
        return z, w.T @ self.stats.covariance(k) @ w

    def indices(self, k: int) -> Tensor:
        """Positions in the dataset of class ``k``'s samples, in the order of its features."""
        return torch.nonzero(self.data.y == k).flatten()

    def features(self, k: int) -> Tensor:
        """Class ``k``'s scanned features: kept from the pass, or recomputed batch by batch."""
        if k in self.kept:
            return self.kept[k]
        return features(self.model, self.data.x[self.indices(k)], self.layer, self.batch_size)
