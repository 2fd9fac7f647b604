"""Triggers: pure functions of a batch of images, named by spec strings like ``patch:size=4,position=top-left``."""

from __future__ import annotations

import dataclasses

from poisonlab.core import PoisonlabError, Trigger
from poisonlab.registry import TRIGGERS, discover
from poisonlab.triggers.blend import Blend
from poisonlab.triggers.patch import POSITIONS, Checkerboard, Patch, Pixel

discover(__name__, __path__)


def parse_trigger(spec: str) -> Trigger:
    """Build a trigger from ``NAME`` or ``NAME:key=value,key=value``."""
    return TRIGGERS.build(spec)  # type: ignore[no-any-return]


def trigger_spec(trigger: Trigger) -> str:
    """The spec string that builds ``trigger`` again (``patch:size=3,position=bottom-right,...``)."""
    for name in TRIGGERS:
        if TRIGGERS.get(name) is type(trigger) and dataclasses.is_dataclass(trigger):
            fields = ",".join(f"{f.name}={getattr(trigger, f.name)}" for f in dataclasses.fields(trigger))
            return f"{name}:{fields}" if fields else name
    raise PoisonlabError(f"trigger {trigger!r}: not a registered trigger, so it has no spec")


__all__ = ["POSITIONS", "TRIGGERS", "Blend", "Checkerboard", "Patch", "Pixel", "parse_trigger", "trigger_spec"]
