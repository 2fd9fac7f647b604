"""Mitigation by retraining: a fresh model trained on the data minus the samples a scanner flagged."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from poisonlab.core import ImageSet, Verdict
from poisonlab.defenses.scoring import as_mask
from poisonlab.models import build_model
from poisonlab.training import Recipe, train


@dataclass(frozen=True)
class Retrain:
    """Drop ``scan.flagged`` from ``data`` and train ``model_name`` from scratch with ``recipe`` and ``seed``.

    Example:
        >>> repaired = Retrain().repair(poisoned.data, SpectralSignatures().scan(model, poisoned.data)).model
    """

    model_name: str = "badnets-cnn"
    recipe: Recipe = Recipe()
    seed: int = 0

    def repair(self, data: ImageSet, scan: Verdict, progress: bool = False) -> Verdict:
        flagged = scan.flagged if scan.flagged is not None else torch.empty(0, dtype=torch.long)
        keep = ~as_mask(flagged, len(data))
        kept = data.subset(keep)
        model = train(build_model(self.model_name, kept, self.seed), kept, self.recipe, self.seed,
                      progress=progress, description="retraining")
        return Verdict(model=model, details={"removed": int((~keep).sum()), "kept": int(keep.sum())})
