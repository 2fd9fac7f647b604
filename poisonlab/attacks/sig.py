"""SIG (Barni, Kallas, Tondi, "A new backdoor attack in CNNs by training set corruption without label poisoning",
ICIP 2019): a clean-label backdoor.

A share of the TARGET class's own training images get a horizontal sinusoid added
(``triggers.sinusoid``); no label changes, so every poisoned sample looks correctly labelled. The
network associates the signal with the target class; at test time the signal, possibly stronger
(``test_delta``), is added to any image. The paper uses delta = 20/255 and f = 6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from poisonlab.core import AllToOne, ImageSet, Poisoned, PoisonlabError, check_budget, target_class_rows
from poisonlab.registry import ATTACKS
from poisonlab.triggers.sinusoid import Sinusoid


@ATTACKS.register("sig", "clean-label sinusoidal-signal backdoor on the target class's images (Barni et al. 2019)")
@dataclass(frozen=True)
class SIG:
    """Add the signal to ``rate`` of the training set (or ``count`` samples), all drawn from class ``target``.

    ``rate`` is a share of the whole training set, as in every attack; it cannot exceed the target
    class's share.

    Example:
        >>> poisoned = SIG(target=0, rate=0.05).poison(train, torch.Generator().manual_seed(0))
        >>> poisoned.indices  # target-class images that carry the signal
    """

    target: int = 0
    rate: float = 0.05
    count: int | None = None
    train_delta: float = 20 / 255
    test_delta: float = 20 / 255
    frequency: float = 6.0

    def __post_init__(self) -> None:
        check_budget(self.rate, self.count)
        for name in ("train_delta", "test_delta"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise PoisonlabError(f"sig {name} {getattr(self, name)}: expected an amplitude in (0, 1]")
        if not self.frequency > 0:
            raise PoisonlabError(f"sig frequency {self.frequency}: expected a number of cycles > 0")

    def signal(self, delta: float) -> Sinusoid:
        """The signal at amplitude ``delta`` (``train_delta`` or ``test_delta``)."""
        return Sinusoid(delta=delta, frequency=self.frequency)

    def poison(self, train: ImageSet, rng: torch.Generator) -> Poisoned:
        idx = target_class_rows(train, self.target, self.rate, self.count, rng, "sig")
        x = train.x.clone()
        x[idx] = self.signal(self.train_delta)(x[idx])
        return Poisoned(ImageSet(x, train.y.clone(), train.classes), idx, self.signal(self.test_delta),
                        AllToOne(self.target))
