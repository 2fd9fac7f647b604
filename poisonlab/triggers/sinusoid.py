"""Sinusoidal signal trigger (SIG: Barni, Kallas, Tondi, "A new backdoor attack in CNNs by training set
corruption without label poisoning", ICIP 2019).

Adds the horizontal signal v(i, j) = delta * sin(2 pi j f / m) to every channel of an image m
columns wide: vertical stripes, ``frequency`` cycles across the width, amplitude ``delta`` in [0, 1]
units (the paper: delta = 20/255, f = 6).

Shape: x (N, C, H, W) in [0, 1] -> (N, C, H, W); any channel count and size wider than 2 f pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from poisonlab.core import PoisonlabError
from poisonlab.registry import TRIGGERS


@TRIGGERS.register("sinusoid", "SIG horizontal sinusoid added to the image: delta, frequency (Barni et al. 2019)")
@dataclass(frozen=True)
class Sinusoid:
    """x + delta * sin(2 pi j f / m), clamped to [0, 1].

    Example:
        >>> signed = Sinusoid(delta=20 / 255, frequency=6)(images, None)
    """

    delta: float = 20 / 255
    frequency: float = 6.0

    def __post_init__(self) -> None:
        if not 0.0 < self.delta <= 1.0:
            raise PoisonlabError(f"sinusoid delta {self.delta}: expected an amplitude in (0, 1]")
        if not self.frequency > 0:
            raise PoisonlabError(f"sinusoid frequency {self.frequency}: expected a number of cycles > 0")

    def signal(self, width: int) -> Tensor:
        """The (width,) signal along the columns."""
        if not self.frequency < width / 2:  # at or above Nyquist the stripes alias (at f = m/2 they vanish)
            raise PoisonlabError(f"sinusoid frequency {self.frequency}: expected fewer than {width / 2:g} cycles "
                                 f"(half the width) for a {width}-px-wide image")
        return self.delta * torch.sin(2 * math.pi * self.frequency * torch.arange(width) / width)

    def __call__(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        return (x + self.signal(x.shape[-1]).to(x.dtype)).clamp(0, 1)
