"""Shared decisions of the data scanners: which classes look poisoned, and which side of a class is the poison."""

from __future__ import annotations

from collections.abc import Callable
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


def suspicious_classes(values: dict[int, float], threshold: float, minimum: float = 0.0) -> set[int]:
    """Classes whose statistic is an upward outlier among the classes (robust z above ``threshold``) and >= ``minimum``.

    Needs a majority of clean classes: an all-to-all attack, which poisons every class alike,
    leaves no outlier and is not detected this way.
    """
    if len(values) < 3:
        return set()
    return {k for k, z in robust_z(values).items() if z > threshold and values[k] >= minimum}


@dataclass(frozen=True)
class Gate:
    """The data scanners' class rule: a class is poisoned when its split is wide (``min_separation`` clean
    standard deviations), an outlier among the classes (robust z > ``class_threshold``) and its far side
    mostly looks like other classes (``min_foreign``, see ``provenance``).

    All-to-all poison splits every class alike, so no class is an outlier; when at least half the classes
    are widely split, the outlier test says nothing and every widely split class is judged by its
    provenance alone. (A clean class's far side stays nearest its own class, so it is still not flagged.)

    ``decide`` also says, for every class whose split is wide, why it was or was not flagged, so a scan
    that flags nothing still shows a ranking that separates.
    """

    class_threshold: float
    min_separation: float
    min_foreign: float

    def decide(self, separation: dict[int, float], foreign_of: Callable[[int], float]
               ) -> tuple[set[int], dict[int, float], dict[str, str]]:
        """(suspicious classes, foreign share of each candidate class, reason per widely split class)."""
        wide = {k for k, s in separation.items() if s >= self.min_separation}
        every_class = len(separation) >= 3 and 2 * len(wide) >= len(separation)
        candidates = wide if every_class else suspicious_classes(separation, self.class_threshold, self.min_separation)
        foreign = {k: foreign_of(k) for k in sorted(candidates)}
        suspicious = {k for k, share in foreign.items() if share >= self.min_foreign}
        z = robust_z(separation) if len(separation) >= 3 else {}
        how = f"{len(wide)} of {len(separation)} classes split so (all-to-all)" if every_class else "outlier z {:.1f}"
        reasons: dict[str, str] = {}
        for k in sorted(separation):
            s = separation[k]
            if s < self.min_separation:
                continue
            split = f"split {s:.1f} sd"
            if k in suspicious:
                reasons[str(k)] = f"flagged: {split}, {how.format(z[k])}, {foreign[k]:.0%} of its far side nearest " \
                                  "other classes"
            elif k in foreign:
                reasons[str(k)] = f"rejected: {split}, {how.format(z[k])}, but only {foreign[k]:.0%} of its far side " \
                                  f"looks like other classes (< {self.min_foreign:.0%})"
            elif not z:
                reasons[str(k)] = f"rejected: {split}, but fewer than 3 classes to compare"
            else:
                reasons[str(k)] = f"rejected: {split}, not an outlier among the classes (z {z[k]:.1f} <= " \
                                  f"{self.class_threshold:g}, and too few classes split so for all-to-all poison)"
        return suspicious, foreign, reasons


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

        def std(g: Tensor) -> float:  # robust: 1.4826 x median absolute deviation
            return max(1.4826 * float((g - g.median()).abs().median()), 1e-12) if len(g) > 1 else 1.0

        return ClassSplit(float((t[cut - 1] + t[cut]) / 2), (float(lo.mean()), float(hi.mean())), (std(lo), std(hi)))

    def high(self, proj: Tensor) -> Tensor:
        """Boolean mask of the projections above the threshold."""
        return proj.double() > self.threshold

    def with_poison_high(self, poison_high: bool) -> ClassSplit:
        return ClassSplit(self.threshold, self.centers, self.stds, poison_high)

    def scores(self, proj: Tensor) -> Tensor:
        """Distance from the clean centre towards the poison side, in clean standard deviations."""
        clean = 0 if self.poison_high else 1
        sign = 1.0 if self.poison_high else -1.0
        return sign * (proj.double() - self.centers[clean]) / self.stds[clean]

    def side(self, proj: Tensor, clean_sds: float) -> Tensor:
        """Boolean mask of the projections more than ``clean_sds`` clean standard deviations towards the poison.

        A cut set by the clean group's spread, not the midpoint between the groups, keeps the
        stragglers of a broad poison group that 2-means leaves on the clean side.
        """
        return self.scores(proj) > clean_sds

    @property
    def separation(self) -> float:
        """Gap between the groups' centres in standard deviations of the clean group."""
        clean = 0 if self.poison_high else 1
        return abs(self.centers[1] - self.centers[0]) / self.stds[clean]

    def summary(self) -> dict[str, float]:
        clean, poison = (0, 1) if self.poison_high else (1, 0)
        return {"threshold": self.threshold, "clean_center": self.centers[clean],
                "poison_center": self.centers[poison],
                "separation": self.separation}


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


def two_means(x: Tensor, iters: int = 100) -> Tensor:
    """Labels 0/1 of a deterministic 2-means clustering of the rows of ``x`` (Lloyd's iterations).

    Started from the best split along the first principal component, the continuous relaxation
    of 2-means (Ding and He, ICML 2004): a seed at an outlier would instead split off one
    sub-cluster of a poison that is a mixture of source classes.
    """
    x = x.double()
    centred = x - x.mean(0)
    pc = torch.linalg.svd(centred, full_matrices=False)[2][0]
    proj = centred @ pc
    labels = ClassSplit.fit(proj).high(proj).long()
    for _ in range(iters):
        centers = torch.stack([x[labels == j].mean(0) if (labels == j).any() else x.mean(0) for j in (0, 1)])
        new = torch.cdist(x, centers).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels
