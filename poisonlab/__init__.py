"""poisonlab: data-poisoning and backdoor attacks on image classifiers, measured honestly, and the defenses.

The public Python API is importable from here (``from poisonlab import BadNets, train, SpectralSignatures``);
each name loads its module on first use, so ``import poisonlab`` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "ImageSet": "core", "Poisoned": "core", "Verdict": "core", "Evidence": "core", "PoisonlabError": "core",
    "AllToOne": "core", "AllToAll": "core", "LazyImageSet": "core", "in_memory": "core",
    "load_dataset": "data", "load_image_folder": "data", "make_synthetic": "data", "open_dataset": "data",
    "open_image_folder": "data",
    "build_model": "models", "load_model": "models", "save_model": "models", "model_factory": "models",
    "Recipe": "training", "train": "training", "predict": "training",
    "evaluate": "metrics",
    "BadNets": "attacks.badnets", "BlendedInjection": "attacks.blend",
    "Patch": "triggers.patch", "Checkerboard": "triggers.patch", "Blend": "triggers.blend",
    "parse_trigger": "triggers",
    "SpectralSignatures": "defenses.spectral", "ActivationClustering": "defenses.activation_clustering",
    "NeuralCleanse": "defenses.neural_cleanse", "Strip": "defenses.strip", "FinePruning": "defenses.fine_pruning",
    "detection_metrics": "defenses.scoring", "features": "defenses.features",
    "deploy_check": "compress.check", "CheckSettings": "compress.check", "parse_deployment": "compress",
    "ATTACKS": "registry", "DEFENSES": "registry", "TRIGGERS": "registry",
}
__all__ = sorted(_API)

def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'poisonlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"poisonlab.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
