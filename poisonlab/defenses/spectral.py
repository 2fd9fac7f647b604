"""Spectral Signatures (Tran, Li, Madry, NeurIPS 2018, arXiv 1811.00636), with whitened features.

Per class, a poison that shifts the mean of a subset of the class leaves a trace along the top
singular vector of the class's centred features; each sample's score is its squared projection
on it. As published (raw penultimate features, remove 1.5 x eps of every class) this is weak on
BadNets MNIST: the top direction is ordinary clean variation and every class loses samples. Here
(``whiten=True``) features are first whitened by the pooled within-class covariance, so the top
direction of a class is the one clean data does not explain (see ``whitening``); a class is
judged poisoned when its top whitened eigenvalue is an outlier among the classes, and only
there are samples flagged, on the poison side of the split along that direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from poisonlab.core import ImageSet, PoisonlabError, Verdict
from poisonlab.defenses.features import iter_features
from poisonlab.defenses.split import ClassSplit, poison_cluster, suspicious_classes
from poisonlab.defenses.whitening import ClassStats, class_spread, robust_whitener, top_direction


def class_stats(model: nn.Module, data: ImageSet, layer: str | int, batch_size: int) -> ClassStats:
    """First pass: per-class feature statistics, one batch at a time."""
    stats = ClassStats()
    for k in range(data.num_classes):
        idx = torch.nonzero(data.y == k).flatten()
        for f in iter_features(model, data.x[idx], layer, batch_size):
            stats.add(k, f)
    return stats


@dataclass(frozen=True)
class SpectralSignatures:
    """Data scanner; ``removal`` (e.g. 1.5 x the expected poison rate) switches to the paper's per-class removal rule.

    Example:
        >>> verdict = SpectralSignatures().scan(model_trained_on_data, data)
        >>> verdict.flagged            # indices judged poisoned
    """

    layer: str | int = "penultimate"
    whiten: bool = True
    class_threshold: float = 3.5
    removal: float | None = None
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.removal is not None and not 0.0 < self.removal < 1.0:
            raise PoisonlabError(f"spectral removal share {self.removal}: expected a fraction in (0, 1)")

    def scan(self, model: nn.Module, data: ImageSet) -> Verdict:
        stats = class_stats(model, data, self.layer, self.batch_size)
        dim = next(iter(stats.sums.values())).shape[0]
        if self.whiten:
            w, suspicious = robust_whitener(stats, self.class_threshold)
        else:
            w = torch.eye(dim, dtype=torch.float64)
            suspicious = suspicious_classes(class_spread(stats, w), self.class_threshold)
        eigenvalues = class_spread(stats, w)
        scores = torch.zeros(len(data))
        flagged: list[torch.Tensor] = []
        splits: dict[str, dict[str, float]] = {}
        for k in stats.counts:
            idx = torch.nonzero(data.y == k).flatten()
            z = torch.cat([(f.double() - stats.mean(k)) @ w
                           for f in iter_features(model, data.x[idx], self.layer, self.batch_size)])
            _, top = top_direction(z.T @ z / len(z))
            proj = z @ top
            if self.removal is not None:
                score = proj**2
                flagged.append(idx[score.argsort(descending=True)[: int(self.removal * len(idx))]])
                scores[idx] = score.float()
                continue
            split = ClassSplit.fit(proj)
            split = split.with_poison_high(poison_cluster(z, split.high(proj).long()) == 1)
            splits[str(k)] = split.summary()
            scores[idx] = split.scores(proj).float()
            if k in suspicious:
                flagged.append(idx[split.side(proj)])
        flagged_idx = torch.cat(flagged).sort().values if flagged else torch.empty(0, dtype=torch.long)
        return Verdict(scores=scores, flagged=flagged_idx, details={
            "top_eigenvalue": {str(k): v for k, v in eigenvalues.items()},
            "suspicious_classes": sorted(suspicious) if self.removal is None else [],
            "layer": self.layer, "whiten": self.whiten, "splits": splits,
        })
