"""Defenses: data scanners, an input filter, a model scanner and mitigations, each returning a ``Verdict``.

Kinds (by the method a defense offers):
- data scanner ``scan(model, data) -> Verdict`` (per-sample scores, flagged indices);
- input filter ``fit(model, clean).detect(model, x) -> Verdict``;
- model scanner ``scan(model, clean) -> Verdict`` (per-class scores, flagged classes);
- mitigation ``repair(...) -> Verdict`` (``model`` is the repaired model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from poisonlab.defenses.activation_clustering import ActivationClustering
from poisonlab.defenses.fine_pruning import FinePruning
from poisonlab.defenses.neural_cleanse import NeuralCleanse
from poisonlab.defenses.retrain import Retrain
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.defenses.spectral import SpectralSignatures
from poisonlab.defenses.strip import Strip
from poisonlab.defenses.unlearning import Unlearning
from poisonlab.registry import Registry

DEFENSES: Registry[Callable[..., Any]] = Registry("defense")
DEFENSES.register("spectral", "data scanner: Spectral Signatures on whitened features (Tran et al. 2018)")(
    SpectralSignatures)
DEFENSES.register("activation-clustering", "data scanner: Activation Clustering on whitened features "
                  "(Chen et al. 2018)")(ActivationClustering)
DEFENSES.register("strip", "input filter: STRIP prediction entropy under overlays (Gao et al. 2019)")(Strip)
DEFENSES.register("neural-cleanse", "model scanner: reverse-engineered triggers, MAD anomaly index "
                  "(Wang et al. 2019)")(NeuralCleanse)
DEFENSES.register("fine-pruning", "mitigation: prune dormant last-conv channels, fine-tune (Liu et al. 2018)")(
    FinePruning)
DEFENSES.register("unlearning", "mitigation: fine-tune on Neural Cleanse's reversed trigger with true labels "
                  "(Wang et al. 2019)")(Unlearning)
DEFENSES.register("retrain", "mitigation: retrain from scratch without the samples a data scanner flagged")(Retrain)

DATA_SCANNERS = ("spectral", "activation-clustering")

__all__ = ["DATA_SCANNERS", "DEFENSES", "ActivationClustering", "FinePruning", "NeuralCleanse", "Retrain",
           "SpectralSignatures", "Strip", "Unlearning", "detection_metrics"]
