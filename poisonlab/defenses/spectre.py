"""SPECTRE (Hayase, Kong, Somani, Oh, ICML 2021, arXiv 2104.11315): robust whitening and QUantum Entropy scores.

Per class, the features are centred and projected on their top ``dims`` principal directions (a
poison that shifts part of a class inflates the variance along its shift, so the shift lies in
them). There the class's mean and covariance are estimated robustly, so that the poison does not
inflate them, and the class is whitened with them: clean samples get about unit variance in every
direction and the poison stands out along its own. Each sample is scored by QUE,
tau_i = z_i^T U z_i with U = exp(alpha (S - I) / (||S||_2 - 1)) / tr(exp(...)) and S the second
moment of the whitened class: alpha -> 0 gives the squared whitened norm / dims, alpha -> inf the
squared projection on the top direction of S; the paper's alpha = 4 weighs the few directions
where S exceeds the identity most.

``dims``: the authors' code picks it per class among 1, 4, ..., 100 by the largest QUE-weighted
variance, which on poisonlab's MNIST runs picked the largest nearly every time; it is fixed here.
On those runs (badnets-cnn, pre-activation features) 16 missed 1% blend poison, 32 and 64 found
every poisoned class, 64 took twice as long.

The robust estimator (``robust_moments``) takes deterministic starts and reweights each to a fixed
point; the paper's filter (Diakonikolas et al. 2017) needs the poison rate, scikit-learn's
MinCovDet took 389 s for one 6,000 x 64 class, and its minimum-determinant criterion prefers a
subset that keeps a dense poison cluster (one class of BadNets all-to-all MNIST at 64 dims:
log-determinant 51 with the poison, 56 without); OGK (Maronna and Zamar 2002) broke down at 25%
poison. On Gaussian rows in 32 dims (2,000 rows) with a shifted copy as poison it recovers the
clean covariance (every entry within 0.1) for 10% to 40% poison at 10 standard deviations or
more, and fails at 8 or less. ``cutoff`` 0.999 rather than the textbook 0.975 (which holds from 8
standard deviations): MNIST classes have heavy tails, and 0.975 trims more of them, so 1% blend
poison split with D 6.3 instead of 7.5 and 17 clean rows were flagged with it instead of 2.

Without the poison rate the paper's removal of 1.5 x eps per class is replaced by a split: the
square roots of a class's QUE scores are split in two (exact 1-D 2-means, ``split.ClassSplit``,
again inside the low group while that is still bimodal), scores are given in standard deviations
of the clean group, so classes compare, and a class's bimodality is Ashman's D of its first split:
the gap between the groups over their pooled spread. Clean classes split with D 3.1 to 4.6
(badnets-cnn on MNIST, clean and backdoored models); poisoned ones with D 7.5 (blend at 1%), 15
to 16 (BadNets at 1% and 5%), 9.7 to 56 (every class of BadNets all-to-all at 10%). A class whose D
is at least ``min_separation`` and an outlier among the classes (or, all-to-all, when most classes
are split so) and whose high group mostly looks like other classes in the convolutional features
(or to the model without their offset on a deep net: ``provenance``) has its high group flagged
(``split.Gate``); a genuinely bimodal clean class (``make_synthetic``'s split with D up to 22) is kept by
that last test. ``removal`` instead flags that share
of every class, highest scores first, as the paper does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import ClassVar

import torch
from torch import Tensor, nn

from poisonlab.core import DefenseKind, PoisonlabError, Samples, Verdict
from poisonlab.defenses.features import ClassPass
from poisonlab.defenses.provenance import InputSides, Origin
from poisonlab.defenses.split import ClassSplit, minority
from poisonlab.registry import DEFENSES

MIN_ROWS = 10
"""Fewest rows a class needs to be scored; the projection keeps at most one dimension per ten rows."""


def que_scores(z: Tensor, alpha: float) -> Tensor:
    """QUE score of every row of ``z`` (n, d), whitened and centred: z_i^T U z_i, U as in the module docstring.

    U is formed from the eigenvectors of S = z^T z / n, so no matrix exponential is taken. When no
    eigenvalue of S exceeds 1, ||S|| - 1 is floored at a tiny positive number (the formula would
    otherwise weigh the smallest direction most) and U is the top direction.
    """
    z = z.double()
    values, vectors = torch.linalg.eigh(z.T @ z / len(z))
    return ((z @ vectors) ** 2 @ _que_weights(values, alpha)).float()


def _que_weights(values: Tensor, alpha: float) -> Tensor:
    """The eigenvalues of U for the ascending eigenvalues ``values`` of S (shifted by the largest: no overflow)."""
    weights = torch.exp(alpha * (values - values[-1]) / max(float(values[-1]) - 1.0, 1e-12))
    return weights / weights.sum()


def _chi2_quantile(q: float, dof: int) -> float:
    """The ``q`` quantile of a chi-square with ``dof`` degrees of freedom (Wilson-Hilferty; within 2% from dof 1)."""
    c = 2.0 / (9.0 * dof)
    return dof * (1.0 - c + NormalDist().inv_cdf(q) * math.sqrt(c)) ** 3


def _chi2_cdf(x: float, dof: int) -> float:
    """The chi-square distribution function (Wilson-Hilferty)."""
    c = 2.0 / (9.0 * dof)
    return NormalDist().cdf(((x / dof) ** (1 / 3) - 1.0 + c) / math.sqrt(c))


def _whitener(cov: Tensor) -> Tensor:
    """W with W^T cov W = I, directions without variance floored rather than blown up."""
    values, vectors = torch.linalg.eigh(cov)
    return vectors / values.clamp_min(float(values[-1]) * 1e-12 + 1e-300).sqrt()


def _moments(p: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance (normalised by n) of the rows of ``p``."""
    mean = p.mean(0)
    centred = p - mean
    return mean, centred.T @ centred / len(p)


def que_variance(z: Tensor, alpha: float) -> float:
    """The QUE-weighted variance tr(U S) of whitened rows ``z``: 1 when they look like what whitened them."""
    values = torch.linalg.eigvalsh(z.T @ z / len(z))
    return float(values @ _que_weights(values, alpha))


def concentrate(p: Tensor, mean: Tensor, cov: Tensor, cutoff: float, steps: int = 100) -> tuple[Tensor, Tensor]:
    """Reweight to a fixed point: keep the rows within the ``cutoff`` chi-square quantile, re-estimate, repeat.

    At least the closer half of the rows is kept, so a start on a minority ends on the majority. The
    covariance of the kept rows is scaled by Croux and Haesbroeck's (1999) factor for the normal
    truncated at the cutoff, so that clean rows come out with unit variance.
    """
    n, d = p.shape
    edge = _chi2_quantile(cutoff, d)
    factor = cutoff / _chi2_cdf(edge, d + 2)
    inside = torch.zeros(n, dtype=torch.bool)
    for _ in range(steps):
        dist = (((p - mean) @ _whitener(cov)) ** 2).sum(1)
        new = (dist <= edge) | (dist <= dist.median())
        if torch.equal(new, inside):
            break
        inside = new
        mean, cov = _moments(p[inside])
        cov = cov * factor
    return mean, cov


def robust_moments(p: Tensor, cutoff: float = 0.999, alpha: float = 4.0, starts: int = 3) -> tuple[Tensor, Tensor]:
    """A robust mean (d,) and covariance (d, d) of the rows of ``p`` (n, d, float64, columns its principal components).

    Deterministic starts, as in DetMCD (Hubert, Rousseeuw and Verdonck 2012): the median and MAD
    of every column, and both groups of the 2-means split of each of the ``starts`` columns of
    largest variance (a far poison group is split off along the direction it inflates). Each is
    concentrated to a fixed point (``concentrate``), and of the ends the one under which the rows
    show the largest QUE-weighted variance wins, the criterion the authors' code picks its
    estimate by: an estimate the poison inflated leaves the whitened rows near the identity. The
    minimum-determinant criterion instead prefers a subset that keeps a dense poison cluster.
    """
    p = p.double()
    n, d = p.shape
    median = p.median(0).values
    spread = 1.4826 * (p - median).abs().median(0).values
    begin = [(median, torch.diag(spread.clamp_min(float(spread.max()) * 1e-9 + 1e-300) ** 2))]
    for j in p.var(0).argsort(descending=True)[:starts].tolist():
        high = ClassSplit.fit(p[:, j]).high(p[:, j])
        begin += [_moments(p[group]) for group in (high, ~high) if int(group.sum()) > d]
    best, ends = -math.inf, begin[0]
    for mean, cov in begin:
        mean, cov = concentrate(p, mean, cov, cutoff)
        score = que_variance((p - mean) @ _whitener(cov), alpha)
        if score > best:
            best, ends = score, (mean, cov)
    return ends


def bimodality(split: ClassSplit) -> float:
    """Ashman's D of a split: the gap between the group centres over their pooled standard deviation, x sqrt(2)."""
    return math.sqrt(2.0) * abs(split.centers[1] - split.centers[0]) / math.hypot(*split.stds)


def nested_splits(root: Tensor, min_separation: float) -> list[ClassSplit]:
    """The 2-means split of ``root``, then of its low group while that splits with D >= ``min_separation``, and so on.

    Poison from several source classes can itself be bimodal in QUE scores, and a first split may
    fall between its groups; the last split is the one between the clean group and the rest.
    """
    splits = [ClassSplit.fit(root)]
    while True:
        low = root[~splits[-1].high(root)]
        inner = ClassSplit.fit(low)
        if len(low) < MIN_ROWS or bimodality(inner) < min_separation:
            return splits
        splits.append(inner)


@DEFENSES.register("spectre", "data scanner: robust whitening + QUantum Entropy scores per class (Hayase et al. 2021)")
@dataclass(frozen=True)
class Spectre:
    """Data scanner; ``removal`` (e.g. 1.5 x the expected poison rate) switches to the paper's per-class removal rule.

    The data go through the model once when the scanned features fit in ``keep_mb`` megabytes; beyond it
    the rest is recomputed batch by batch, one class at a time.

    Example:
        >>> verdict = Spectre().scan(model_trained_on_data, data)
        >>> verdict.scores             # clean standard deviations above the class's clean group
    """

    kind: ClassVar[DefenseKind] = "data-scanner"
    layer: str | int = "auto"
    dims: int = 32
    alpha: float = 4.0
    cutoff: float = 0.999
    class_threshold: float = 3.5
    min_separation: float = 6.0
    provenance_layer: str | int = "auto"
    min_foreign: float | None = None
    removal: float | None = None
    batch_size: int | None = None
    keep_mb: float = 512.0

    def __post_init__(self) -> None:
        if self.dims < 1:
            raise PoisonlabError(f"spectre dims {self.dims}: expected at least 1")
        if not 0.0 <= self.alpha < math.inf:
            raise PoisonlabError(f"spectre alpha {self.alpha}: expected a finite value >= 0")
        if not 0.5 <= self.cutoff < 1.0:
            raise PoisonlabError(f"spectre cutoff {self.cutoff}: expected a chi-square quantile in [0.5, 1)")
        if not self.class_threshold > 0 or not self.min_separation > 0:
            raise PoisonlabError(f"spectre class_threshold {self.class_threshold}, min_separation "
                                 f"{self.min_separation}: expected both > 0")
        if self.min_foreign is not None and not 0.0 <= self.min_foreign <= 1.0:
            raise PoisonlabError(f"spectre min_foreign {self.min_foreign}: expected a fraction in [0, 1]")
        if self.removal is not None and not 0.0 < self.removal < 1.0:
            raise PoisonlabError(f"spectre removal share {self.removal}: expected a fraction in (0, 1)")
        if self.keep_mb < 0:
            raise PoisonlabError(f"spectre keep_mb {self.keep_mb}: expected >= 0")

    def class_scores(self, f: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
        """QUE scores of one class's features ``f`` (n, D), given their mean and covariance."""
        values, vectors = torch.linalg.eigh(cov)
        rank = int((values > values[-1].clamp_min(1e-30) * 1e-6).sum())
        d = max(1, min(self.dims, rank, len(f) // MIN_ROWS))
        p = (f.double() - mean) @ vectors[:, -d:]
        centre, spread = robust_moments(p, self.cutoff, self.alpha)
        return que_scores((p - centre) @ _whitener(spread), self.alpha)

    @staticmethod
    def low_is_poison(inputs: InputSides, idx: Tensor, k: int, high: Tensor) -> bool:
        """Whether the low QUE group of a widely split class ``k`` is its poison: neither group is a small minority
        (``split.minority``) and the input says the low group lies nearer other classes (``poison_group``).

        With more poison than own rows in a class (10% poison in a 10-class set), the robust estimate settles on
        the poison and the class's own rows score high: on 10,000 MNIST rows (badnets-cnn, 8 epochs, seed 0) the
        high group of class 0 was its 953 own rows, under BadNets and blend at 10%, and both were flagged.
        """
        labels = high.long()
        return minority(labels) is None and inputs.poison_group(idx, k, labels) == 0

    def scan(self, model: nn.Module, data: Samples) -> Verdict:
        origin = Origin.of(model, self.layer, self.provenance_layer, self.min_foreign)
        seen = ClassPass.run(model, data, self.layer, origin.layer, self.batch_size, self.keep_mb)
        scores = torch.zeros(len(data))
        sides: dict[int, Tensor] = {}
        splits: dict[int, ClassSplit] = {}
        separation: dict[int, float] = {}
        inputs = InputSides(data, self.batch_size)
        for k, count in seen.stats.counts.items():
            if count < MIN_ROWS:
                continue
            idx = seen.indices(k)
            tau = self.class_scores(seen.features(k), seen.stats.mean(k), seen.stats.covariance(k))
            root = tau.sqrt()
            nested = nested_splits(root, self.min_separation)
            splits[k], separation[k] = nested[-1], bimodality(nested[0])
            high = splits[k].high(root)
            if self.removal is None and separation[k] >= self.min_separation and self.low_is_poison(
                    inputs, idx, k, high):
                splits[k] = splits[k].with_poison_high(False)
            scores[idx] = splits[k].scores(root).float()
            if self.removal is not None:
                sides[k] = idx[tau.argsort(descending=True)[: int(self.removal * count)]].sort().values
            else:
                sides[k] = idx[high == splits[k].poison_high]
        foreign: dict[int, float] = {}
        reasons: dict[str, str] = {}
        if self.removal is not None:
            suspicious = set(sides)
        else:
            gate = origin.gate(self.class_threshold, self.min_separation)
            suspicious, foreign, reasons = gate.decide(
                separation,
                lambda k: origin.share(model, seen, k, sides[k]))
        flagged = [sides[k] for k in sorted(suspicious)]
        flagged_idx = torch.cat(flagged).sort().values if flagged else torch.empty(0, dtype=torch.long)
        return Verdict(scores=scores, flagged=flagged_idx, details={
            "suspicious_classes": sorted(suspicious) if self.removal is None else [],
            "layer": self.layer, "dims": self.dims, "alpha": self.alpha,
            "splits": {str(k): {**s.summary(), "bimodality": separation[k]} for k, s in splits.items()},
            "foreign_share": {str(k): v for k, v in foreign.items()}, "gate": reasons,
        })
