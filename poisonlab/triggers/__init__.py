"""Triggers: pure functions of a batch of images, named by spec strings like ``patch:size=4,position=top-left``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from poisonlab.core import PoisonlabError, Trigger
from poisonlab.registry import Registry, parse_scalar
from poisonlab.triggers.blend import Blend
from poisonlab.triggers.patch import POSITIONS, Checkerboard, Patch, Pixel

TRIGGERS: Registry[Callable[..., Trigger]] = Registry("trigger")
TRIGGERS.register("patch", "solid square: size, position, color, margin")(Patch)
TRIGGERS.register("checkerboard", "square of alternating color/1-color cells: size, position, color, margin")(
    Checkerboard
)
TRIGGERS.register("pixel", "one pixel: position, color, margin")(Pixel)
TRIGGERS.register("blend", "blend toward noise or an image: pattern=noise|PATH, alpha, seed")(Blend)


def parse_trigger(spec: str) -> Trigger:
    """Build a trigger from ``NAME`` or ``NAME:key=value,key=value``."""
    name, _, params = spec.partition(":")
    factory = TRIGGERS.get(name)
    kwargs: dict[str, Any] = {}
    for item in filter(None, params.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise PoisonlabError(f"trigger {spec!r}: expected key=value, got {item!r}")
        kwargs[key.strip().replace("-", "_")] = parse_scalar(value.strip())
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise PoisonlabError(f"trigger {spec!r}: {e}") from None


__all__ = ["POSITIONS", "TRIGGERS", "Blend", "Checkerboard", "Patch", "Pixel", "parse_trigger"]
