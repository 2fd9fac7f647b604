"""Name -> component registries, so the CLI and config files name components and tests can walk them all."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from poisonlab.core import PoisonlabError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of components of one kind, each with a one-line description."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, tuple[T, str]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """Decorator that registers ``item`` under ``name``."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = (item, description)
            return item

        return add

    def get(self, name: str) -> T:
        """The component called ``name``; a one-line error listing the allowed names otherwise."""
        try:
            return self._items[name][0]
        except KeyError:
            raise PoisonlabError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._items))}"
            ) from None

    def describe(self, name: str) -> str:
        return self._items[name][1]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def parse_scalar(text: str) -> Any:
    """``text`` as an int, else a float, else the string itself (for ``key=value`` specs and filters)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
