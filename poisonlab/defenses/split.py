"""Shared decisions of the data scanners: which classes look poisoned, and which side of a class is the poison."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def robust_z(values: dict[int, float]) -> dict[int, float]:
    """Each value's distance above the median of log-values, in units of 1.4826 x MAD (as Neural Cleanse's index)."""
    keys = list(values)
    logs = torch.tensor([values[k] for k in keys], dtype=torch.float64).clamp_min(1e-12).log()
    median = logs.median()
    mad = 1.4826 * (logs - median).abs().median()
    z = (logs - median) / mad.clamp_min(1e-6)
    return {k: float(v) for k, v in zip(keys, z, strict=True)}


def suspicious_classes(values: dict[int, float], threshold: float) -> set[int]:
    """Classes whose statistic is an upward outlier among the classes (robust z above ``threshold``).

    Needs a majority of clean classes: an all-to-all attack, which poisons every class alike,
    leaves no outlier and is not detected this way.
    """
    if len(values) < 3:
        return set()
    return {k for k, z in robust_z(values).items() if z > threshold}


@dataclass(frozen=True)
class ClassSplit:
    """The best two-group split of 1-D projections (exact 1-D 2-means) and which group is the poison."""

    threshold: float
    centers: tuple[float, float]
    stds: tuple[float, float]
    poison_high: bool = True

    @staticmethod
    def fit(proj: Tensor) -> ClassSplit:
        t = proj.double().sort().values
        n = len(t)
        if n < 2:
            v = float(t[0]) if n else 0.0
            return ClassSplit(v, (v, v), (1.0, 1.0))
        csum, csq = t.cumsum(0), (t * t).cumsum(0)
        left = torch.arange(1, n, dtype=torch.float64)
        right = n - left
        ss_left = csq[:-1] - csum[:-1] ** 2 / left
        ss_right = (csq[-1] - csq[:-1]) - (csum[-1] - csum[:-1]) ** 2 / right
        cut = int((ss_left + ss_right).argmin()) + 1
        lo, hi = t[:cut], t[cut:]

        def std(g: Tensor) -> float:
            return max(float(g.std()), 1e-12) if len(g) > 1 else 1.0

        return ClassSplit(float((t[cut - 1] + t[cut]) / 2), (float(lo.mean()), float(hi.mean())), (std(lo), std(hi)))

    def high(self, proj: Tensor) -> Tensor:
        """Boolean mask of the projections above the threshold."""
        return proj.double() > self.threshold

    def with_poison_high(self, poison_high: bool) -> ClassSplit:
        return ClassSplit(self.threshold, self.centers, self.stds, poison_high)

    def side(self, proj: Tensor) -> Tensor:
        """Boolean mask of the projections on the poison side of the threshold."""
        return self.high(proj) if self.poison_high else ~self.high(proj)

    def scores(self, proj: Tensor) -> Tensor:
        """Distance from the clean centre towards the poison side, in clean standard deviations."""
        clean = 0 if self.poison_high else 1
        sign = 1.0 if self.poison_high else -1.0
        return sign * (proj.double() - self.centers[clean]) / self.stds[clean]

    def summary(self) -> dict[str, float]:
        clean, poison = (0, 1) if self.poison_high else (1, 0)
        return {"threshold": self.threshold, "clean_center": self.centers[clean],
                "poison_center": self.centers[poison],
                "separation": abs(self.centers[poison] - self.centers[clean]) / self.stds[clean]}


def poison_cluster(z: Tensor, labels: Tensor) -> int:
    """Which of two groups (labels 0/1) of a class's whitened features is the poison: the more spread-out one.

    Clean samples of a class vary the way the pooled clean classes do, about unit variance per
    whitened direction. Poison brought into a class from other classes is a mixture of those
    classes, so it carries their between-class scatter on top and is more spread out; this holds
    whichever group is larger, unlike the paper's smaller-cluster rule.
    """
    spread = []
    for j in (0, 1):
        g = z[labels == j]
        spread.append(float(((g - g.mean(0)) ** 2).sum(1).mean()) if len(g) > 1 else 0.0)
    return int(spread[1] > spread[0])
