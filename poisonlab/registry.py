"""Name -> component registries, so the CLI and config files name components and tests can walk them all.

A registry that belongs to a package (attacks, defenses, triggers, experiments) is filled by the
package's modules as they are imported, each registering itself with a decorator; the registry
imports its package the first time it is read, so a new component is one new file and no other edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from poisonlab.core import PoisonlabError

if TYPE_CHECKING:
    from poisonlab.core import Trigger

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of components of one kind, each with a one-line description."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, tuple[T, str]] = {}
        self._loaded = package is None

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self.package is not None
            importlib.import_module(self.package)

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
        self._load()
        try:
            return self._items[name][0]
        except KeyError:
            raise PoisonlabError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._items))}"
            ) from None

    def describe(self, name: str) -> str:
        self._load()
        return self._items[name][1]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def build(self, spec: str, **shared: Any) -> Any:
        """The component a ``NAME`` or ``NAME:key=value,...`` spec names, built with those keywords.

        ``shared`` keywords (a seed, say) are passed where the component's signature takes them and
        the spec does not set them.
        """
        import inspect

        name, kwargs = parse_spec(spec, self.kind)
        factory: Any = self.get(name)
        try:
            accepted = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            accepted = {}  # type: ignore[assignment]
        unknown = sorted(set(kwargs) - set(accepted)) if accepted else []
        if unknown:
            raise PoisonlabError(f"{self.kind} {spec!r}: unknown key {unknown[0]}; expected "
                                 f"{', '.join(k for k in accepted if k not in ('self', 'seed')) or 'no keys'}")
        where = f"{self.kind} {spec!r}"
        kwargs = {**{k: v for k, v in shared.items() if k in accepted}, **typed(factory, kwargs, where)}
        try:
            return factory(**kwargs)
        except TypeError as e:
            raise PoisonlabError(f"{self.kind} {spec!r}: {e}") from None


def typed(factory: Any, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``kwargs`` checked against ``factory``'s annotations: an int field takes integers only, a float field
    finite numbers, a str field the value as text; a one-line error naming the key otherwise."""
    import math
    import typing

    try:
        hints = typing.get_type_hints(factory)  # a class's (dataclass fields'), or a function's parameters
    except Exception:  # a factory whose annotations cannot be resolved is called unchecked
        return kwargs
    out = dict(kwargs)
    for key, value in kwargs.items():
        allowed = {a for a in typing.get_args(hints.get(key)) or (hints.get(key),) if a is not type(None)}
        if allowed <= {str} and allowed:
            out[key] = str(value)
        elif allowed == {int} and (not isinstance(value, int) or isinstance(value, bool)):
            raise PoisonlabError(f"{where}: {key}={value!r}: expected an integer")
        elif allowed == {float} and not (isinstance(value, int | float) and math.isfinite(value)):
            raise PoisonlabError(f"{where}: {key}={value!r}: expected a finite number")
    return out


def parse_scalar(text: str) -> Any:
    """``text`` as an int, else a float, else the string itself (for ``key=value`` specs and filters)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: str, kind: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` as (NAME, keywords); dashes in keys become underscores."""
    name, _, params = spec.strip().partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, params.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise PoisonlabError(f"{kind} {spec!r}: expected key=value, got {item!r}")
        if key in kwargs:
            raise PoisonlabError(f"{kind} {spec!r}: {key} is given twice")
        kwargs[key] = parse_scalar(value.strip())
    return name, kwargs


def discover(package: str, path: list[str]) -> None:
    """Import every module of ``package`` (its ``__path__``), so each registers its components."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


ATTACKS: Registry[Callable[..., Any]] = Registry("attack", "poisonlab.attacks")
TRIGGERS: Registry[Callable[..., Trigger]] = Registry("trigger", "poisonlab.triggers")
DEFENSES: Registry[Any] = Registry("defense", "poisonlab.defenses")
EXPERIMENTS: Registry[Any] = Registry("experiment", "poisonlab.experiment")


def registries() -> dict[str, Registry[Any]]:
    """Every registry, keyed by the plural ``poisonlab list`` shows."""
    from poisonlab.compress import DEPLOYMENTS
    from poisonlab.data import DATASETS
    from poisonlab.models import MODELS
    from poisonlab.scaling.resize import RESIZERS

    return {"datasets": DATASETS, "attacks": ATTACKS, "triggers": TRIGGERS, "models": MODELS,
            "deployments": DEPLOYMENTS, "defenses": DEFENSES, "resizers": RESIZERS, "experiments": EXPERIMENTS}
