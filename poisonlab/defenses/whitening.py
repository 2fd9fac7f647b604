"""Per-class feature statistics accumulated batch by batch, and whitening by the pooled within-class covariance.

Why whiten: in the raw features of a trained classifier a few directions of ordinary clean
variation (stroke width, slant) carry most of the variance, so the top singular vector of a
class is a clean direction and the poison's mean shift is lost under it. Whitening by the
covariance of clean variation makes every clean direction unit-variance, so what stands out in a
class afterwards is the structure clean data does not have. The pooled within-class covariance
is estimated from every class at once, so a poison concentrated in one target class (even half
of it) moves the estimate little; this is the idea behind SCAn's global variance model (Tang et
al., USENIX Security 2021) and SPECTRE's robust whitening (Hayase et al., ICML 2021).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ClassStats:
    """Count, sum and scatter (sum of outer products) of the features of each class, in float64."""

    counts: dict[int, int] = field(default_factory=dict)
    sums: dict[int, Tensor] = field(default_factory=dict)
    scatters: dict[int, Tensor] = field(default_factory=dict)

    def add(self, k: int, f: Tensor) -> None:
        """Accumulate a batch ``f`` (N, D) of class ``k``."""
        f = f.double()
        if k not in self.counts:
            self.counts[k], self.sums[k] = 0, torch.zeros(f.shape[1], dtype=torch.float64)
            self.scatters[k] = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        self.counts[k] += len(f)
        self.sums[k] += f.sum(0)
        self.scatters[k] += f.T @ f

    def mean(self, k: int) -> Tensor:
        return self.sums[k] / self.counts[k]

    def covariance(self, k: int) -> Tensor:
        """Covariance of class ``k`` about its own mean."""
        m = self.mean(k)
        return self.scatters[k] / self.counts[k] - torch.outer(m, m)

    def pooled_covariance(self) -> Tensor:
        """Within-class covariance averaged over the classes, weighted by size."""
        total = sum(self.counts.values())
        return sum(self.counts[k] * self.covariance(k) for k in self.counts) / total  # type: ignore[return-value]


def whitener(cov: Tensor, rel_floor: float = 1e-4) -> Tensor:
    """A (D, d) matrix W with W^T cov W = I over the directions whose variance exceeds ``rel_floor`` x the largest.

    Directions with no clean variance at all (dead units) are dropped rather than blown up.
    """
    values, vectors = torch.linalg.eigh(cov)
    keep = values > values.max().clamp_min(1e-30) * rel_floor
    return vectors[:, keep] / values[keep].sqrt()


def top_direction(cov: Tensor) -> tuple[float, Tensor]:
    """Largest eigenvalue and its unit eigenvector of a symmetric matrix."""
    values, vectors = torch.linalg.eigh(cov)
    return float(values[-1]), vectors[:, -1]

