"""STRIP (Gao et al. 2019, arXiv 1902.06531): reject inputs whose prediction survives superimposed images.

A triggered input keeps predicting the target class whatever clean image is laid over it, so the
entropy of its predictions over the overlays is low; a clean input's prediction scatters. The
entropy threshold is the ``frr`` quantile of clean inputs' entropies: ``frr`` is the share of
clean inputs rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from poisonlab.core import DefenseKind, ImageSet, PoisonlabError, Verdict
from poisonlab.registry import DEFENSES


def overlay_entropy(
    model: nn.Module, x: Tensor, pool: Tensor, n_overlays: int, alpha: float, seed: int, batch_size: int = 256
) -> Tensor:
    """Mean prediction entropy of each image in ``x`` over ``n_overlays`` images from ``pool`` laid on it.

    Superimposition is additive, ``clip(x + alpha * overlay, 0, 1)``, which keeps a saturated
    trigger intact while the overlay changes the content.
    """
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(pool), (len(x), n_overlays), generator=gen)
    out = torch.empty(len(x))
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            mixed = (xb[:, None] + alpha * pool[picks[i : i + batch_size]]).clamp(0, 1).flatten(0, 1)
            logp = torch.log_softmax(model(mixed.contiguous(memory_format=torch.channels_last)), dim=1)
            entropy = -(logp.exp() * logp).sum(1).view(len(xb), n_overlays)
            out[i : i + len(xb)] = entropy.mean(1)
    return out


@DEFENSES.register("strip", "input filter: STRIP prediction entropy under overlays (Gao et al. 2019)")
@dataclass
class Strip:
    """Input-time filter: ``fit`` on clean held-out images sets the threshold, ``detect`` flags inputs.

    Example:
        >>> strip = Strip(frr=0.01).fit(model, clean_val)
        >>> strip.detect(model, incoming.x).flagged   # indices of inputs judged triggered
    """

    kind: ClassVar[DefenseKind] = "input-filter"
    n_overlays: int = 16
    frr: float = 0.01
    alpha: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.frr < 1.0:
            raise PoisonlabError(f"STRIP false-rejection rate {self.frr}: expected a fraction in (0, 1)")
        if self.n_overlays < 1 or not self.alpha > 0:
            raise PoisonlabError(f"STRIP: expected n_overlays >= 1 and alpha > 0, got {self.n_overlays}, {self.alpha}")

    def fit(self, model: nn.Module, clean: ImageSet) -> Strip:
        """Keep ``clean`` as the overlay pool and set the threshold at its ``frr`` entropy quantile."""
        if len(clean) < 2:
            raise PoisonlabError(f"STRIP: expected at least 2 clean images to fit on, got {len(clean)}")
        half = len(clean) // 2
        self.pool_ = clean.x[:half]
        held = overlay_entropy(model, clean.x[half:], self.pool_, self.n_overlays, self.alpha, self.seed + 1)
        self.threshold_ = float(torch.quantile(held, self.frr))
        return self

    def detect(self, model: nn.Module, x: Tensor) -> Verdict:
        """Scores are negated entropies (higher = more suspicious); flagged = entropy below the threshold."""
        if not hasattr(self, "threshold_"):
            raise PoisonlabError("STRIP: call fit(model, clean) before detect")
        entropy = overlay_entropy(model, x, self.pool_, self.n_overlays, self.alpha, self.seed + 2)
        flagged = torch.nonzero(entropy < self.threshold_).flatten()
        return Verdict(scores=-entropy, flagged=flagged,
                       details={"threshold_entropy": self.threshold_, "frr": self.frr, "n_overlays": self.n_overlays})
