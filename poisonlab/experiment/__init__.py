"""Experiments: typed configs, the run path every experiment shares, the run folder, and sweeps.

Each experiment module registers itself in ``poisonlab.registry.EXPERIMENTS``.
"""

from poisonlab.registry import discover

discover(__name__, __path__)
