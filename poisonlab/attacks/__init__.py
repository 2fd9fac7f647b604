"""Attacks, one file each, registering themselves: data attacks poison a training set and return the ground
truth of what they touched; training attacks shape training through declared loss phases."""

from __future__ import annotations

from poisonlab.attacks.badnets import BadNets
from poisonlab.core import AllToAll, AllToOne
from poisonlab.registry import ATTACKS, discover

discover(__name__, __path__)

__all__ = ["ATTACKS", "AllToAll", "AllToOne", "BadNets"]
