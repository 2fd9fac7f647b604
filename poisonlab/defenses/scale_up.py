"""SCALE-UP (Guo et al., ICLR 2023, arXiv 2302.03251): triggered inputs keep their prediction when their pixels
are amplified.

Multiplying an image's pixel values by n (clipped to [0, 1]) pushes a benign image off its class, but a
triggered image, whose prediction rides on a saturated trigger, keeps predicting the target class. An
image's scaled prediction consistency (SPC) is the share of its amplified copies predicted as the image
itself is. It needs the model's predicted labels only, so it works on a black-box model.

The factors are 1 + step, 1 + 2 step, ... up to ``max_scale``: {3, 5, 7, 9, 11} by default, the set of the
released implementations. ``scale-up`` is the paper's data-limited variant: an input's SPC is standardised
with the mean and standard deviation of the SPC of the defender's clean images predicted as the same class,
since some classes are naturally steadier under amplification than others. Its threshold is the ``1 - frr``
quantile of clean held-out images' standardised SPC, as STRIP sets its own; ``standardize=False`` thresholds
the raw SPC instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from poisonlab.core import DefenseKind, Images, ImageSet, PoisonlabError, Verdict, batches, inference_batch
from poisonlab.registry import DEFENSES
from poisonlab.training.trainer import device_of


class Consistency(NamedTuple):
    """Each image's SPC and the class the model predicts for it unamplified."""

    spc: Tensor
    label: Tensor


def spc(model: nn.Module, x: Images, scales: tuple[float, ...], batch_size: int | None = None) -> Consistency:
    """The SPC of every image in ``x``: the share of ``clip(x * n, 0, 1)`` over ``n`` in ``scales`` predicted as
    ``x`` is; images are read ``batch_size`` at a time (default: ``core.inference_batch``), in memory or from files.
    """
    if not scales:
        raise PoisonlabError("SCALE-UP: expected at least one scaling factor")
    if batch_size is None:
        batch_size = inference_batch(x.shape[1:])
    was_training = model.training
    model.eval()
    device = device_of(model)
    kept = torch.empty(len(x))
    label = torch.empty(len(x), dtype=torch.int64)
    start = 0
    try:
        with torch.no_grad():
            for batch in batches(x, batch_size):
                batch = batch.to(device).contiguous(memory_format=torch.channels_last)
                pred = model(batch).argmax(1)
                same = torch.zeros(len(batch), device=device)
                for n in scales:
                    same += model((batch * n).clamp(0, 1)).argmax(1) == pred
                kept[start : start + len(batch)] = same.cpu() / len(scales)
                label[start : start + len(batch)] = pred.cpu()
                start += len(batch)
    finally:
        model.train(was_training)
    return Consistency(kept, label)


@dataclass(frozen=True)
class ClassStats:
    """Mean and standard deviation of benign SPC per predicted class; ``overall`` serves a class seen too rarely."""

    mean: Tensor
    std: Tensor
    overall: tuple[float, float]

    def standardize(self, found: Consistency) -> Tensor:
        """Each SPC minus its predicted class's benign mean, over that class's benign standard deviation."""
        return (found.spc - self.mean[found.label]) / self.std[found.label]


def class_stats(benign: Consistency, num_classes: int, floor: float) -> ClassStats:
    """Per-class SPC statistics of benign images; a standard deviation below ``floor`` counts as ``floor``.

    A class predicted for fewer than 2 of the benign images takes the statistics of all of them. The floor
    (one SPC step, ``1 / len(scales)``) keeps a class whose benign images all share one SPC from dividing by 0.
    """
    overall = (float(benign.spc.mean()), max(float(benign.spc.std()) if len(benign.spc) > 1 else 0.0, floor))
    mean = torch.full((num_classes,), overall[0])
    std = torch.full((num_classes,), overall[1])
    for c in range(num_classes):
        values = benign.spc[benign.label == c]
        if len(values) >= 2:
            mean[c] = values.mean()
            std[c] = max(float(values.std()), floor)
    return ClassStats(mean, std, overall)


@DEFENSES.register("scale-up", "input filter: prediction kept under amplified pixels (SCALE-UP, Guo et al. 2023)")
@dataclass
class ScaleUp:
    """Input-time filter: ``fit`` sets per-class SPC statistics and the threshold on clean images, ``detect`` flags.

    Example:
        >>> scale_up = ScaleUp(frr=0.01).fit(model, clean_val)
        >>> scale_up.detect(model, incoming.x).flagged   # inputs whose prediction survives amplification
    """

    kind: ClassVar[DefenseKind] = "input-filter"
    max_scale: int = 11
    step: int = 2
    standardize: bool = True
    frr: float = 0.01
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.step < 1 or self.max_scale < 1 + self.step:
            raise PoisonlabError(f"SCALE-UP max_scale={self.max_scale}, step={self.step}: expected step >= 1 and "
                                 "max_scale >= 1 + step")
        if not 0.0 < self.frr < 1.0:
            raise PoisonlabError(f"SCALE-UP false-rejection rate {self.frr}: expected a fraction in (0, 1)")
        if self.batch_size is not None and self.batch_size < 1:
            raise PoisonlabError(f"SCALE-UP batch_size {self.batch_size}: expected a positive number of images")

    @property
    def scales(self) -> tuple[float, ...]:
        """The amplification factors: 1 + step, 1 + 2 step, ... up to ``max_scale``."""
        return tuple(float(n) for n in range(1 + self.step, self.max_scale + 1, self.step))

    def _score(self, model: nn.Module, x: Tensor) -> Tensor:
        found = spc(model, x, self.scales, self.batch_size)
        return self.stats_.standardize(found) if self.standardize else found.spc

    def fit(self, model: nn.Module, clean: ImageSet) -> ScaleUp:
        """Class statistics from half of ``clean``; the threshold is the other half's ``1 - frr`` score quantile."""
        if len(clean) < 2:
            raise PoisonlabError(f"SCALE-UP: expected at least 2 clean images to fit on, got {len(clean)}")
        half = len(clean) // 2
        benign = spc(model, clean.x[:half], self.scales, self.batch_size)
        self.stats_ = class_stats(benign, clean.num_classes, 1 / len(self.scales))
        self.threshold_ = float(torch.quantile(self._score(model, clean.x[half:]), 1 - self.frr))
        return self

    def detect(self, model: nn.Module, x: Tensor) -> Verdict:
        """Scores are (standardised) SPC values (higher = more suspicious); flagged = scores above the threshold."""
        if not hasattr(self, "threshold_"):
            raise PoisonlabError("SCALE-UP: call fit(model, clean) before detect")
        scores = self._score(model, x)
        return Verdict(scores=scores, flagged=torch.nonzero(scores > self.threshold_).flatten(),
                       details={"threshold": self.threshold_, "frr": self.frr, "scales": list(self.scales),
                                "standardize": self.standardize})
