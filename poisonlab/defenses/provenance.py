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

from poisonlab.defenses.features import iter_features


def foreign_share(model: nn.Module, x: Tensor, label: int, means: Tensor, layer: str | int, batch_size: int) -> float:
    """Share of images ``x`` (all labelled ``label``) whose ``layer`` features are nearest another class's mean."""
    if len(x) == 0:
        return 0.0
    nearest = torch.cat([torch.cdist(f.double(), means).argmin(1) for f in iter_features(model, x, layer, batch_size)])
    return float((nearest != label).double().mean())
