"""Spectral Signatures (Tran, Li, Madry, NeurIPS 2018, arXiv 1811.00636), with whitened features.

Per class, a poison that shifts the mean of a subset of the class leaves a trace along the top
singular vector of the class's centred features; each sample's score is its squared projection
on it. As published (raw penultimate features, remove 1.5 x eps of every class) this is weak on
BadNets MNIST: the top direction is ordinary clean variation and every class loses samples. Here
(``whiten=True``) features are first whitened by the pooled within-class covariance, so the top
direction of a class is the one clean data does not explain (see ``whitening``). Along it each
class is split in two (exact 1-D 2-means); a class is judged poisoned when the gap between its
two groups, in standard deviations of the clean group, is an outlier among the classes (and at
least ``min_separation``) and the samples on its poison side mostly look like other classes in the
convolutional features, or to the model without their offset on a deep net (``provenance``); only there
are they flagged. The poison side is a group of at most a quarter of the class (``split.minority``), else
the group clearly nearer other classes in the input (``provenance.poison_group``), else the more spread-out
group (``split.poison_cluster``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from poisonlab.core import DefenseKind, PoisonlabError, Samples, Verdict
from poisonlab.defenses.features import ClassPass
from poisonlab.defenses.provenance import InputSides, Origin
from poisonlab.defenses.split import ClassSplit, minority, poison_cluster
from poisonlab.defenses.whitening import top_direction
from poisonlab.registry import DEFENSES


@DEFENSES.register("spectral", "data scanner: Spectral Signatures on whitened features (Tran et al. 2018)")
@dataclass(frozen=True)
class SpectralSignatures:
    """Data scanner; ``removal`` (e.g. 1.5 x the expected poison rate) switches to the paper's per-class removal rule.

    The data go through the model once when the scanned features fit in ``keep_mb`` megabytes
    (60,000 MNIST images at 512 features: 117 MB); beyond it the rest is recomputed batch by batch.

    Example:
        >>> verdict = SpectralSignatures().scan(model_trained_on_data, data)
        >>> verdict.flagged            # indices judged poisoned
    """

    kind: ClassVar[DefenseKind] = "data-scanner"
    layer: str | int = "auto"
    whiten: bool = True
    class_threshold: float = 3.5
    min_separation: float = 6.0
    clean_sds: float = 4.0
    provenance_layer: str | int = "auto"
    min_foreign: float | None = None
    removal: float | None = None
    batch_size: int | None = None
    keep_mb: float = 512.0

    def __post_init__(self) -> None:
        if self.removal is not None and not 0.0 < self.removal < 1.0:
            raise PoisonlabError(f"spectral removal share {self.removal}: expected a fraction in (0, 1)")

    def scan(self, model: nn.Module, data: Samples) -> Verdict:
        origin = Origin.of(model, self.layer, self.provenance_layer, self.min_foreign)
        seen = ClassPass.run(model, data, self.layer, origin.layer, self.batch_size, self.keep_mb)
        w = seen.whitening(self.whiten)
        scores = torch.zeros(len(data))
        sides: dict[int, torch.Tensor] = {}
        splits: dict[int, ClassSplit] = {}
        inputs = InputSides(data, self.batch_size)
        for k in seen.stats.counts:
            idx = seen.indices(k)
            z, cov = seen.whitened(k, w)
            _, top = top_direction(cov)
            proj = z @ top
            if self.removal is not None:
                score = proj**2
                sides[k] = idx[score.argsort(descending=True)[: int(self.removal * len(idx))]]
                scores[idx] = score.float()
                continue
            split = ClassSplit.fit(proj)
            groups = split.high(proj).long()
            small = minority(groups)
            if small is not None:
                split = split.with_poison_high(small == 1)
            else:
                split = split.with_poison_high(poison_cluster(z, groups) == 1)
                if max(split.separation, split.with_poison_high(not split.poison_high).separation) \
                        >= self.min_separation:
                    nearer = inputs.poison_group(idx, k, groups)
                    split = split if nearer is None else split.with_poison_high(nearer == 1)
            splits[k] = split
            scores[idx] = split.scores(proj).float()
            sides[k] = idx[split.side(proj, self.clean_sds)]
        foreign: dict[int, float] = {}
        reasons: dict[str, str] = {}
        if self.removal is not None:
            suspicious = set(sides)
        else:
            gate = origin.gate(self.class_threshold, self.min_separation)
            suspicious, foreign, reasons = gate.decide(
                {k: s.separation for k, s in splits.items()},
                lambda k: origin.share(model, seen, k, sides[k]))
        flagged = [sides[k] for k in sorted(suspicious)]
        flagged_idx = torch.cat(flagged).sort().values if flagged else torch.empty(0, dtype=torch.long)
        return Verdict(scores=scores, flagged=flagged_idx, details={
            "suspicious_classes": sorted(suspicious) if self.removal is None else [],
            "layer": self.layer, "whiten": self.whiten,
            "splits": {str(k): s.summary() for k, s in splits.items()},
            "foreign_share": {str(k): v for k, v in foreign.items()}, "gate": reasons,
        })
