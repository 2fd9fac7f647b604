"""Defenses, one file each, registering themselves with their kind; each returns a ``Verdict``.

Kinds (``core``): data scanners ``scan(model, training data)``, input filters ``fit(model, clean)`` then
``detect(model, x)``, model scanners ``scan(model, clean)``, mitigations ``repair(model, evidence)``.
``poisonlab.defenses.apply`` applies and scores any of them for every caller.
"""

from __future__ import annotations

from poisonlab.defenses.activation_clustering import ActivationClustering
from poisonlab.defenses.fine_pruning import FinePruning
from poisonlab.defenses.ibd_psc import IbdPsc
from poisonlab.defenses.neural_cleanse import NeuralCleanse
from poisonlab.defenses.retrain import Retrain
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.defenses.spectral import SpectralSignatures
from poisonlab.defenses.strip import Strip
from poisonlab.defenses.unlearning import Unlearning
from poisonlab.registry import DEFENSES, discover

discover(__name__, __path__)


def names_of(kind: str) -> list[str]:
    """The registered defenses of one kind (``data-scanner``, ``input-filter``, ``model-scanner``, ``mitigation``)."""
    return [n for n in DEFENSES if DEFENSES.get(n).kind == kind]


__all__ = ["DEFENSES", "ActivationClustering", "FinePruning", "IbdPsc", "NeuralCleanse", "Retrain",
           "SpectralSignatures", "Strip", "Unlearning", "detection_metrics", "names_of"]
