"""Mitigation by retraining: a fresh model trained on the data minus the samples a data scanner flagged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from poisonlab.core import DefenseKind, Evidence, PoisonlabError, Verdict
from poisonlab.defenses.scoring import as_mask
from poisonlab.registry import DEFENSES


@DEFENSES.register("retrain",
                   "mitigation: retrain from scratch without what a data scanner flagged (retrain:scanner=NAME)")
@dataclass(frozen=True)
class Retrain:
    """Drop what data scanner ``scanner`` flagged (default: the last one that ran) and retrain from scratch.

    The new model is the victim's architecture trained with its recipe and seed (``evidence.refit``).

    Example:
        >>> scan = SpectralSignatures().scan(model, data)
        >>> Retrain().repair(model, Evidence(clean, data, {"spectral": scan}, refit=fit)).model
    """

    kind: ClassVar[DefenseKind] = "mitigation"
    scanner: str | None = None

    def requires(self) -> str | None:
        return self.scanner or "data-scanner"

    def repair(self, model: nn.Module, evidence: Evidence) -> Verdict:
        if evidence.train is None or evidence.refit is None:
            raise PoisonlabError("retrain: needs the training set and the victim's recipe (run it in a pipeline)")
        scans = evidence.data_scans
        if not scans or (self.scanner is not None and self.scanner not in scans):
            raise PoisonlabError(f"retrain: removes what {self.scanner or 'a data scanner'} flagged; list it before")
        scan = scans[self.scanner] if self.scanner is not None else list(scans.values())[-1]
        flagged = scan.flagged if scan.flagged is not None else torch.empty(0, dtype=torch.long)
        keep = ~as_mask(flagged, len(evidence.train))
        repaired = evidence.refit(evidence.train.subset(keep))
        return Verdict(model=repaired, details={"removed": int((~keep).sum()), "kept": int(keep.sum())})
