"""Shared decisions of the data scanners: which classes look poisoned, and which side of a class is the poison."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MINORITY = 0.25
"""A split whose smaller group holds at most this share of its class is read as poison on that group's side.

The rules for a split near half and half (the more spread-out group, the group nearer other classes in the
input) misread a small poison group whose trigger the model has learned: on the clip-art set (BadNets 1%,
a 12-px checkerboard, EfficientNet-Lite0 fine-tuned, seed 0), class 8's 24 poison images split cleanly from
its 98 own images in mid-level features, but the checkerboard put them farther from every class mean in
the input (medians 0.83 vs 0.70 class radii), so the input rule called the 98 the poison and ranked the
poison below chance (AUROC 0.22)."""


def median(x: Tensor) -> Tensor:
    """The median of ``x`` as a float64 scalar; unlike ``Tensor.median``, the mean of the two middle values
    when their count is even (for two values, ``Tensor.median`` returns the lower and a MAD of 0)."""
    return torch.quantile(x.double(), 0.5)


def robust_std(x: Tensor) -> float:
    """1.4826 x the median absolute deviation of ``x`` (at least 1e-12); 1.0 for fewer than two values."""
    return max(1.4826 * float(median((x - median(x)).abs())), 1e-12) if len(x) > 1 else 1.0


def minority(labels: Tensor) -> int | None:
    """Group 0 or 1 of a class's split ``labels`` when it holds at most ``MINORITY`` of the class, else None."""
    sizes = torch.bincount(labels, minlength=2)
    small = int(sizes.argmin())
    return small if len(labels) and int(sizes[small]) <= MINORITY * len(labels) else None


def robust_z(values: dict[int, float], min_mad: float = 0.0) -> dict[int, float]:
    """Each value's distance above the median of log-values, in units of 1.4826 x MAD (as Neural Cleanse's index);
    the MAD is taken as at least ``min_mad``, so that classes that happen to agree closely do not make a small
    difference look large."""
    keys = list(values)
    logs = torch.tensor([values[k] for k in keys], dtype=torch.float64).clamp_min(1e-12).log()
    centre = median(logs)
    z = (logs - centre) / (1.4826 * median((logs - centre).abs()).clamp_min(min_mad)).clamp_min(1e-6)
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
    are widely split, every widely split class is judged by its provenance, and when at least half of all
    classes then look poisoned, they are flagged as all-to-all poison. A clean class's far side stays nearest
    its own class, but a natural data set can hold a class whose far side does not: clip art splits widely in
    half its classes in mid-level features, and one (recreation, 144 of 320 images) lies nearest other classes
    (86%). So when fewer than half the classes look poisoned, a class is flagged only if it is also an outlier.

    ``by_origin`` (the scanners set it where provenance is ``counterfactual_share``) judges every widely split
    class by its provenance alone. Natural data split heavy-tailed (clean clip-art classes split by 12 to 35
    standard deviations in EfficientNet-Lite0's middle features), so the outlier test missed a 1% BadNets poison
    split by 27 in two of three seeds, while the counterfactual called no clean class's far side foreign in 9 scans
    (3 seeds x 3 scanners: at most 75%, below its 80% bar) and the poison's 85-100%.

    ``decide`` also says, for every class whose split is wide, why it was or was not flagged, so a scan
    that flags nothing still shows a ranking that separates.
    """

    class_threshold: float
    min_separation: float
    min_foreign: float
    by_origin: bool = False

    def decide(self, separation: dict[int, float], foreign_of: Callable[[int], float]
               ) -> tuple[set[int], dict[int, float], dict[str, str]]:
        """(suspicious classes, foreign share of each candidate class, reason per widely split class)."""
        wide = {k for k, s in separation.items() if s >= self.min_separation}
        outliers = suspicious_classes(separation, self.class_threshold, self.min_separation)
        every_class = self.by_origin or (len(separation) >= 3 and 2 * len(wide) >= len(separation))
        foreign = {k: foreign_of(k) for k in sorted(wide if every_class else outliers)}
        looks = {k for k, share in foreign.items() if share >= self.min_foreign}
        all_to_all = every_class and 2 * len(looks) >= len(separation)
        suspicious = looks if all_to_all or self.by_origin else looks & outliers
        z = robust_z(separation) if len(separation) >= 3 else {}
        reasons: dict[str, str] = {}
        for k in sorted(wide):
            split = f"split {separation[k]:.1f} sd"
            how = (f"{len(looks)} of {len(separation)} classes split so and look poisoned (all-to-all)" if all_to_all
                   else f"outlier z {z[k]:.1f}" if k in outliers else "judged by its origin alone" if self.by_origin
                   else "")
            if k in suspicious:
                reasons[str(k)] = f"flagged: {split}, {how}, {foreign[k]:.0%} of its far side nearest other classes"
            elif k in outliers or self.by_origin:
                reasons[str(k)] = f"rejected: {split}, {how}, but only {foreign[k]:.0%} of its far side " \
                                  f"looks like other classes (< {self.min_foreign:.0%})"
            elif not z:
                reasons[str(k)] = f"rejected: {split}, but fewer than 3 classes to compare"
            elif k in looks:
                reasons[str(k)] = f"rejected: {split}, {foreign[k]:.0%} of its far side nearest other classes, but " \
                                  f"not an outlier (z {z[k]:.1f} <= {self.class_threshold:g}) and only {len(looks)} " \
                                  f"of {len(separation)} classes look so (all-to-all poison needs half)"
            else:
                share = f", {foreign[k]:.0%} of its far side nearest other classes" if k in foreign else ""
                reasons[str(k)] = f"rejected: {split}, not an outlier among the classes (z {z[k]:.1f} <= " \
                                  f"{self.class_threshold:g}){share}, and too few classes split so for all-to-all " \
                                  "poison"
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
        return ClassSplit(float((t[cut - 1] + t[cut]) / 2), (float(lo.mean()), float(hi.mean())),
                          (robust_std(lo), robust_std(hi)))

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
