"""Where flagged samples come from: do they look like another class in the model's early features?

A class can be genuinely bimodal (MNIST's 5s are, in whitened penultimate features: a split as
wide as the poison's). What sets a dirty-label poison apart is provenance: its samples are
images of other classes, so in the convolutional features, before the layers that learned the
trigger shortcut, most of them lie nearer another class's mean than their own label's. A natural
sub-population stays nearest its own class.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from poisonlab.core import Images
from poisonlab.defenses.features import iter_features


def foreign_share(model: nn.Module, x: Images, label: int, means: Tensor, count: int, layer: str | int,
                  batch_size: int | None = None) -> float:
    """Share of images ``x`` (all labelled ``label``) whose ``layer`` features are nearest another class's mean.

    ``means`` are the (C, D) class means of ``layer`` and ``count`` the number of ``label`` images its
    mean was taken over. The images judged are taken out of their own class's mean first: a tight group
    of poison far from its class (20% of the class, 20 standard deviations out, in the mid-level
    features of a fine-tuned EfficientNet) otherwise drags that mean to itself and looks native. That
    takes a first pass for their sum, so no (N, D) feature matrix is ever held.
    """
    if len(x) == 0:
        return 0.0
    means = means.clone()
    if count > len(x):
        total = torch.zeros(means.shape[1], dtype=torch.float64)
        for f in iter_features(model, x, layer, batch_size):
            total += f.double().sum(0)
        means[label] = (means[label] * count - total) / (count - len(x))
    nearest = torch.cat([torch.cdist(f.double(), means).argmin(1) for f in iter_features(model, x, layer, batch_size)])
    return float((nearest != label).double().mean())
