"""Activation Clustering (Chen et al., SafeAI@AAAI 2019, arXiv 1811.03728), with whitened features.

Per class, the activations are reduced to a few dimensions and split in two by k-means; in a
poisoned class one cluster is the poison. As published (raw activations, the smaller cluster is
poison when under 35% of the class) it fails twice on BadNets MNIST: clean classes split along
ordinary variation into a small cluster too, and at 10% poison the poison outnumbers the target
class's clean samples. Here the features are whitened by the pooled within-class covariance
(``whitening``), the poison cluster is one of at most a quarter of the class (``split.minority``), else the
one clearly nearer other classes in the input where the clusters lie far apart (``provenance.poison_group``),
else the more spread-out one
(``split.poison_cluster``); a larger cluster is never flagged on that rule alone (a poison trained to
a tight cluster left the real eights of all-to-all MNIST as the spread-out majority: 833 flagged, 1
of them poison). A class is poisoned when the gap between its clusters, in standard deviations of
the clean cluster along the line joining them, is an outlier among the classes (and at least
``min_separation``) and most of the flagged samples look like other classes in the convolutional
features, or by the model without their offset on a deep net (``provenance``).
``rule="size"`` keeps the paper's decision (smaller cluster, under ``size_ratio``) for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from poisonlab.core import DefenseKind, PoisonlabError, Samples, Verdict
from poisonlab.defenses.features import ClassPass
from poisonlab.defenses.provenance import InputSides, Origin
from poisonlab.defenses.split import minority, poison_cluster, robust_std, two_means
from poisonlab.registry import DEFENSES


@DEFENSES.register("activation-clustering",
                   "data scanner: Activation Clustering on whitened features (Chen et al. 2018)")
@dataclass(frozen=True)
class ActivationClustering:
    """Data scanner.

    The data go through the model once when the scanned features fit in ``keep_mb`` megabytes
    (60,000 MNIST images at 512 features: 117 MB); beyond it the rest is recomputed batch by batch.

    Example:
        >>> verdict = ActivationClustering().scan(model_trained_on_data, data)
        >>> verdict.flagged            # indices judged poisoned
    """

    kind: ClassVar[DefenseKind] = "data-scanner"
    layer: str | int = "auto"
    dims: int = 10
    whiten: bool = True
    class_threshold: float = 3.5
    min_separation: float = 6.0
    clean_sds: float = 4.0
    provenance_layer: str | int = "auto"
    min_foreign: float | None = None
    rule: Literal["whitened", "size"] = "whitened"
    size_ratio: float = 0.35
    batch_size: int | None = None
    keep_mb: float = 512.0

    def __post_init__(self) -> None:
        if self.rule not in ("whitened", "size"):
            raise PoisonlabError(f"activation clustering rule {self.rule!r}: expected whitened or size")
        if self.dims < 1 or not 0.0 < self.size_ratio < 0.5:
            raise PoisonlabError(f"activation clustering: expected dims >= 1 and size_ratio in (0, 0.5), got {self}")

    def scan(self, model: nn.Module, data: Samples) -> Verdict:
        origin = Origin.of(model, self.layer, self.provenance_layer, self.min_foreign)
        seen = ClassPass.run(model, data, self.layer, origin.layer, self.batch_size, self.keep_mb)
        w = seen.whitening(self.whiten)
        scores = torch.zeros(len(data))
        groups: dict[int, torch.Tensor] = {}
        separation: dict[int, float] = {}
        clusters: dict[str, dict[str, float]] = {}
        inputs = InputSides(data, self.batch_size)
        unsure: set[int] = set()  # widely split classes whose larger cluster would be called the poison unconfirmed
        for k in seen.stats.counts:
            idx = seen.indices(k)
            z, cov = seen.whitened(k, w)
            basis = torch.linalg.eigh(cov)[1].flip(1)[:, : self.dims].T  # the top right singular vectors of z
            reduced = z @ basis.T
            labels = two_means(reduced)
            sizes = torch.bincount(labels, minlength=2)
            small = int(sizes.argmin()) if self.rule == "size" else minority(labels)
            bad = poison_cluster(z, labels) if small is None else small
            t, spread, separation[k] = _axis(reduced, labels, bad)
            if small is None and max(separation[k], _axis(reduced, labels, 1 - bad)[2]) >= self.min_separation:
                nearer = inputs.poison_group(idx, k, labels)
                if nearer is None and sizes[bad] > sizes[1 - bad]:
                    unsure.add(k)
                if nearer is not None and nearer != bad:
                    bad = nearer
                    t, spread, separation[k] = _axis(reduced, labels, bad)
            scores[idx] = (t / spread).float()
            groups[k] = idx[labels == bad] if self.rule == "size" else idx[t / spread > self.clean_sds]
            clusters[str(k)] = {"poison_cluster_size": int(sizes[bad]), "class_size": len(idx),
                                "separation": separation[k]}
        reasons: dict[str, str] = {}
        if self.rule == "size":
            suspicious = {k for k in groups if len(groups[k]) < self.size_ratio * clusters[str(k)]["class_size"]}
        else:
            gate = origin.gate(self.class_threshold, self.min_separation)
            suspicious, foreign, reasons = gate.decide(separation,
                                                       lambda k: origin.share(model, seen, k, groups[k]))
            for k in unsure & suspicious:
                suspicious.discard(k)
                reasons[str(k)] = f"rejected: split {separation[k]:.1f} sd, but the poison side would be the larger " \
                                  "cluster and the input does not say it is the one nearer other classes"
            for k, share in foreign.items():
                clusters[str(k)]["foreign_share"] = share
        flagged = [groups[k] for k in sorted(suspicious)]
        flagged_idx = torch.cat(flagged).sort().values if flagged else torch.empty(0, dtype=torch.long)
        return Verdict(scores=scores, flagged=flagged_idx, details={
            "suspicious_classes": sorted(suspicious), "clusters": clusters, "gate": reasons,
            "layer": self.layer, "rule": self.rule, "whiten": self.whiten,
        })


def _axis(reduced: Tensor, labels: Tensor, bad: int) -> tuple[Tensor, float, float]:
    """Projections on the line from the clean cluster's centre to cluster ``bad``'s, the clean cluster's robust
    spread along it, and the clusters' gap in those spreads (0 when a cluster is empty)."""
    sizes = torch.bincount(labels, minlength=2)
    centers = torch.stack([reduced[labels == j].mean(0) if sizes[j] else reduced.mean(0) for j in (0, 1)])
    axis = (centers[bad] - centers[1 - bad]) / (centers[bad] - centers[1 - bad]).norm().clamp_min(1e-12)
    t = (reduced - centers[1 - bad]) @ axis
    good = t[labels != bad]
    spread = robust_std(good)
    return t, spread, float(t[labels == bad].mean() - good.mean()) / spread if sizes.min() else 0.0
