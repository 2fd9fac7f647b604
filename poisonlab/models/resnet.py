"""ResNet-20, the CIFAR-10 residual network of He et al. 2016 (arXiv 1512.03385, section 4.2), for any channels.

Three stages of three BasicBlocks (16, 32, 64 channels; strides 1, 2, 2), BatchNorm, global average
pooling and one linear head: 0.27 M parameters, small enough to train on a CPU. Plain modules only, so
FX graph mode quantizes it (the residual additions become quantized adds), and it ends in
``AdaptiveAvgPool2d -> Flatten -> Linear``, where the data scanners' ``penultimate`` layer (the input of
the last Linear) reads the pooled 64 features. Its last Conv2d, the one fine-pruning prunes, is the
second convolution of the last block, whose shortcut is the identity.
"""

from __future__ import annotations

from torch import Tensor, nn

from poisonlab.models import MODELS, Normalize, Shape

WIDTHS = (16, 32, 64)
BLOCKS_PER_STAGE = 3


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (identity, or a strided 1x1 conv-BN where the shape changes)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels_out))
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


@MODELS.register("resnet-small", "ResNet-20 (He et al. 2016): 3 stages x 3 blocks (16/32/64), BN, avg-pool, FC; 0.27 M")
def resnet_small(shape: Shape, num_classes: int) -> nn.Module:
    """ResNet-20 for ``shape`` images (any channel count, 8 px or more a side) and ``num_classes`` logits."""
    layers: list[nn.Module] = [Normalize(shape[0]), nn.Conv2d(shape[0], WIDTHS[0], 3, padding=1, bias=False),
                               nn.BatchNorm2d(WIDTHS[0]), nn.ReLU()]
    channels = WIDTHS[0]
    for stage, width in enumerate(WIDTHS):
        for block in range(BLOCKS_PER_STAGE):
            layers.append(BasicBlock(channels, width, 2 if stage and not block else 1))
            channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
