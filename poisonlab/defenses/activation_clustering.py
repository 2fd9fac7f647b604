"""Activation Clustering (Chen et al., SafeAI@AAAI 2019, arXiv 1811.03728), with whitened features.

Per class, the activations are reduced to a few dimensions and split in two by k-means; in a
poisoned class one cluster is the poison. As published (raw activations, the smaller cluster is
poison when under 35% of the class) it fails twice on BadNets MNIST: clean classes split along
ordinary variation into a small cluster too, and at 10% poison the poison outnumbers the target
class's clean samples. Here the features are whitened by the pooled within-class covariance of
the classes that look clean (``whitening.robust_whitener``), a class is poisoned when its top
whitened eigenvalue is an outlier among the classes, and the poison cluster is picked by
``split.poison_cluster``. ``rule="size"`` keeps the paper's decision for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn

from poisonlab.core import ImageSet, PoisonlabError, Verdict
from poisonlab.defenses.features import iter_features
from poisonlab.defenses.spectral import class_stats
from poisonlab.defenses.split import poison_cluster
from poisonlab.defenses.whitening import class_spread, robust_whitener, whitener


@dataclass(frozen=True)
class ActivationClustering:
    """Data scanner.

    Example:
        >>> verdict = ActivationClustering().scan(model_trained_on_data, data)
        >>> verdict.flagged            # indices judged poisoned
    """

    layer: str | int = "penultimate"
    dims: int = 10
    whiten: bool = True
    class_threshold: float = 3.5
    rule: Literal["whitened", "size"] = "whitened"
    size_ratio: float = 0.35
    batch_size: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in ("whitened", "size"):
            raise PoisonlabError(f"activation clustering rule {self.rule!r}: expected whitened or size")
        if self.dims < 1 or not 0.0 < self.size_ratio < 0.5:
            raise PoisonlabError(f"activation clustering: expected dims >= 1 and size_ratio in (0, 0.5), got {self}")

    def scan(self, model: nn.Module, data: ImageSet) -> Verdict:
        stats = class_stats(model, data, self.layer, self.batch_size)
        dim = next(iter(stats.sums.values())).shape[0]
        if not self.whiten:
            w, suspicious = torch.eye(dim, dtype=torch.float64), set()
        elif self.rule == "whitened":
            w, suspicious = robust_whitener(stats, self.class_threshold)
        else:
            w, suspicious = whitener(stats.pooled_covariance()), set()
        spread = class_spread(stats, w)
        scores = torch.zeros(len(data))
        flagged: list[torch.Tensor] = []
        clusters: dict[str, dict[str, float]] = {}
        for k in stats.counts:
            idx = torch.nonzero(data.y == k).flatten()
            z = torch.cat([(f.double() - stats.mean(k)) @ w
                           for f in iter_features(model, data.x[idx], self.layer, self.batch_size)])
            basis = torch.linalg.svd(z, full_matrices=False)[2][: self.dims]
            reduced = (z @ basis.T).numpy()
            km = KMeans(2, n_init=3, random_state=self.seed).fit(reduced)
            labels = torch.from_numpy(km.labels_.astype(np.int64))
            sizes = torch.bincount(labels, minlength=2)
            if self.rule == "size":
                bad = int(sizes.argmin())
                is_poisoned = bool(sizes[bad] < self.size_ratio * len(idx))
            else:
                bad = poison_cluster(z, labels)
                is_poisoned = k in suspicious
            centers = torch.from_numpy(km.cluster_centers_)
            dist = torch.cdist(torch.from_numpy(reduced), centers)
            scores[idx] = (dist[:, 1 - bad] - dist[:, bad]).float()
            if is_poisoned:
                flagged.append(idx[labels == bad])
            clusters[str(k)] = {"poison_cluster_size": int(sizes[bad]), "class_size": len(idx),
                                "top_eigenvalue": spread[k], "flagged": is_poisoned}
        flagged_idx = torch.cat(flagged).sort().values if flagged else torch.empty(0, dtype=torch.long)
        return Verdict(scores=scores, flagged=flagged_idx, details={
            "suspicious_classes": sorted(int(c) for c, v in clusters.items() if v["flagged"]),
            "clusters": clusters, "layer": self.layer, "rule": self.rule, "whiten": self.whiten,
        })
