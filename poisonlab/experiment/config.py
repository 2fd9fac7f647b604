"""Typed experiment configs read from TOML: validated field by field, components named through the registries.

A config describes one run (every field a single value) or a sweep (some fields lists, expanded as a
grid). Every error names the field and what it accepts, and all of them happen before any data is
loaded or any model trained.

Example config::

    name = "badnets-mnist"
    dataset = "mnist"
    model = "badnets-cnn"
    seed = [0, 1, 2]          # a list makes a sweep axis

    [training]
    epochs = 2

    [attack]
    name = "badnets"
    rate = [0.001, 0.01, 0.1]
    target = 8
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from poisonlab.core import PoisonlabError
from poisonlab.registry import Registry
from poisonlab.training import Recipe
from poisonlab.triggers import parse_trigger

TOP_LEVEL = ("name", "dataset", "model", "seed", "training", "attack", "preprocessing", "deployments", "defenses")
COMPONENT_LISTS = {"preprocessing": "preprocessing", "deployments": "deployments", "defenses": "defenses"}
"""Config field -> the key of its registry in ``poisonlab list``'s registries."""

STAGE_MODULES = {"deployments": ("poisonlab.compress", "DEPLOYMENTS"), "defenses": ("poisonlab.defenses", "DEFENSES")}
"""Registry kind -> (module, attribute) where the pipeline stage keeps it."""

PARAM_PARSERS: dict[str, Callable[[str], Any]] = {"trigger": parse_trigger}
"""Attack parameters given as spec strings in a config and built into objects before the attack is."""


def registry(kind: str) -> Registry[Any] | None:
    """The registry ``poisonlab list`` shows under ``kind`` (None while no module provides it).

    The CLI's listing is the one place every component module registers itself, so configs see
    attacks, deployments and defenses added by later modules without changes here. A stage module
    that exists but is not listed yet is found by its conventional registry name.
    """
    from poisonlab.cli.listing import registries

    found = registries().get(kind)
    if found is None and kind in STAGE_MODULES:
        module, attr = STAGE_MODULES[kind]
        try:
            found = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            return None
    return found


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin in (list, tuple, Sequence):
        return "a list"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(annotation, str(annotation))


def check_type(path: str, value: Any, annotation: Any) -> Any:
    """``value`` if it fits ``annotation`` (an int is a float; a list a tuple), else an error naming ``path``."""
    origin = typing.get_origin(annotation)
    ok: bool
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise PoisonlabError(f"{path}: {value!r} is not allowed; expected {_type_name(annotation)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is type(None):
                continue
            try:
                return check_type(path, value, option)
            except PoisonlabError:
                pass
        raise PoisonlabError(f"{path}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})")
    if origin in (list, tuple, Sequence):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if not isinstance(value, list | tuple):
            raise PoisonlabError(f"{path}: expected a list, got {value!r} ({type(value).__name__})")
        return tuple(check_type(f"{path}[{i}]", v, args[0]) if args else v for i, v in enumerate(value))
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _wrong(path, value, annotation)
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok else _wrong(path, value, annotation)
    if isinstance(annotation, type):
        return value if isinstance(value, annotation) else _wrong(path, value, annotation)
    return value


def _wrong(path: str, value: Any, annotation: Any) -> Any:
    raise PoisonlabError(f"{path}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def reject_unknown(section: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        where = f"{section}.{unknown[0]}" if section else unknown[0]
        raise PoisonlabError(f"{where}: unknown key; expected one of: {', '.join(sorted(allowed))}")


def _check_component(path: str, spec: str, reg: Registry[Any]) -> None:
    """A ``NAME`` or ``NAME:ARGUMENT`` spec whose NAME is registered in ``reg``."""
    name = spec.partition(":")[0]
    if name not in reg:
        allowed = ", ".join(reg.names()) or "(none)"
        raise PoisonlabError(f"{path}: unknown {reg.kind} {name!r}; expected one of: {allowed}")


def _parsed(key: str, param: inspect.Parameter | None) -> bool:
    """Whether a config string for ``key`` is a spec to build (a trigger object), not a plain value (a trigger name)."""
    return key in PARAM_PARSERS and param is not None and typing.get_origin(param.annotation) is Callable


def attack_parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The keyword parameters of an attack factory, annotations resolved."""
    try:
        sig = inspect.signature(factory, eval_str=True)
    except (NameError, TypeError):
        sig = inspect.signature(factory)
    return {n: p for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@dataclass(frozen=True)
class AttackConfig:
    """An attack by registered name, with its parameters as the config gives them (spec strings stay strings)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """The attack object; spec-string parameters (``trigger``) are parsed first."""
        factory = registry("attacks").get(self.name)  # type: ignore[union-attr]
        params = attack_parameters(factory)
        kwargs = {k: PARAM_PARSERS[k](v) if _parsed(k, params.get(k)) and isinstance(v, str) else v
                  for k, v in self.params.items()}
        try:
            return factory(**kwargs)
        except PoisonlabError as e:
            raise PoisonlabError(f"attack: {e}") from None
        except TypeError as e:
            raise PoisonlabError(f"attack {self.name!r}: {e}") from None


@dataclass(frozen=True)
class ExperimentConfig:
    """One fully resolved run: what ``poisonlab run CONFIG.toml`` executes and saves as ``config.toml``."""

    dataset: str
    attack: AttackConfig
    model: str = "badnets-cnn"
    seed: int = 0
    training: Recipe = field(default_factory=Recipe)
    preprocessing: tuple[str, ...] = ()
    deployments: tuple[str, ...] = ()
    defenses: tuple[str, ...] = ()
    name: str = "experiment"

    def as_dict(self) -> dict[str, Any]:
        """Plain data in the config file's layout, every default filled in (None values left out)."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "model": self.model,
            "seed": self.seed,
            "training": dataclasses.asdict(self.training),
            "attack": {"name": self.attack.name, **{k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in self.attack.params.items() if v is not None}},
            "preprocessing": list(self.preprocessing),
            "deployments": list(self.deployments),
            "defenses": list(self.defenses),
        }

    def to_toml(self) -> str:
        return tomli_w.dumps(self.as_dict())


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; one-line errors for a missing file or bad TOML."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PoisonlabError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise PoisonlabError(f"{path}: not valid TOML ({e})") from None


def _list_valued(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_list_valued(a) for a in typing.get_args(annotation))
    return origin in (list, tuple, Sequence) or annotation in (list, tuple)


def sweep_axes(raw: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Dotted field -> its values, for every field given as a list where one value is expected."""
    axes: dict[str, list[Any]] = {}
    for key in ("name", "dataset", "model", "seed"):
        if isinstance(raw.get(key), list):
            axes[key] = raw[key]
    for key, value in (raw.get("training") or {}).items() if isinstance(raw.get("training"), dict) else ():
        if isinstance(value, list):
            axes[f"training.{key}"] = value
    attack = raw.get("attack")
    if isinstance(attack, dict):
        given = attack.get("name")
        names: list[Any] = given if isinstance(given, list) else [given]
        params: dict[str, inspect.Parameter] = {}
        reg = registry("attacks")
        for name in names:
            if isinstance(name, str) and reg is not None and name in reg:
                params.update(attack_parameters(reg.get(name)))
        for key, value in attack.items():
            if not isinstance(value, list):
                continue
            list_param = key in params and _list_valued(params[key].annotation)
            if key == "name" or not list_param or (value and all(isinstance(v, list) for v in value)):
                axes[f"attack.{key}"] = value
    for path, values in axes.items():
        if not values:
            raise PoisonlabError(f"{path}: an empty list; give at least one value")
    if "seed" in axes:  # seeds vary fastest, so the repeats of one setting finish together
        axes["seed"] = axes.pop("seed")
    return axes


def expand(raw: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The grid: one (overrides, raw cell config) per combination of the sweep axes, in a stable order."""
    axes = sweep_axes(raw)
    cells = []
    for combo in itertools.product(*axes.values()):
        cell = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
        overrides = dict(zip(axes, combo, strict=True))
        for path, value in overrides.items():
            section, _, key = path.rpartition(".")
            (cell[section] if section else cell)[key] = value
        cells.append((overrides, cell))
    return cells


def resolve(raw: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate one cell's raw config and return it typed; errors read ``SOURCE: FIELD: problem``."""
    try:
        return _resolve(raw)
    except PoisonlabError as e:
        raise PoisonlabError(f"{source}: {e}") from None


def _resolve(raw: Mapping[str, Any]) -> ExperimentConfig:
    from poisonlab.data import DATASETS
    from poisonlab.models import MODELS

    if "experiment" in raw:
        raise PoisonlabError(f"experiment: {raw['experiment']!r} configs run one at a time with `poisonlab run`; "
                             "sweeps and the attack pipeline take configs without an experiment key")
    reject_unknown("", raw, TOP_LEVEL)
    for key in ("name", "dataset", "model", "seed"):
        if isinstance(raw.get(key), list):
            raise PoisonlabError(f"{key}: a list makes a sweep; run it with `poisonlab sweep`")
    if "dataset" not in raw:
        names = ", ".join(DATASETS.names())
        raise PoisonlabError(f"dataset: missing; expected one of: {names} (NAME or NAME:ARGUMENT)")
    dataset = check_type("dataset", raw["dataset"], str)
    _check_component("dataset", dataset, DATASETS)
    model = check_type("model", raw.get("model", "badnets-cnn"), str)
    if model not in MODELS:
        raise PoisonlabError(f"model: unknown model {model!r}; expected one of: {', '.join(MODELS.names())}")
    seed = check_type("seed", raw.get("seed", 0), int)
    if seed < 0:
        raise PoisonlabError(f"seed: {seed}; expected an integer >= 0")
    name = check_type("name", raw.get("name", "experiment"), str)

    training_raw = check_type("training", raw.get("training", {}), dict)
    hints = typing.get_type_hints(Recipe)
    reject_unknown("training", training_raw, list(hints))
    recipe_kwargs = {}
    for key, value in training_raw.items():
        if isinstance(value, list):
            raise PoisonlabError(f"training.{key}: a list makes a sweep; run it with `poisonlab sweep`")
        recipe_kwargs[key] = check_type(f"training.{key}", value, hints[key])
    for key, bad in (("epochs", lambda v: v < 1), ("batch_size", lambda v: v < 1), ("lr", lambda v: not v > 0),
                     ("weight_decay", lambda v: v < 0)):
        if key in recipe_kwargs and bad(recipe_kwargs[key]):
            expected = {"epochs": ">= 1", "batch_size": ">= 1", "lr": "> 0", "weight_decay": ">= 0"}[key]
            raise PoisonlabError(f"training.{key}: {recipe_kwargs[key]}; expected a number {expected}")
    recipe = Recipe(**recipe_kwargs)

    attack = resolve_attack(raw.get("attack"))
    lists: dict[str, tuple[str, ...]] = {}
    for key, kind in COMPONENT_LISTS.items():
        specs = check_type(key, raw.get(key, []), tuple[str, ...])
        if specs:
            reg = registry(kind)
            if reg is None:
                raise PoisonlabError(f"{key}: no {kind} are available in this poisonlab; leave the list empty")
            for i, spec in enumerate(specs):
                _check_component(f"{key}[{i}]", spec, reg)
        lists[key] = specs
    return ExperimentConfig(dataset=dataset, attack=attack, model=model, seed=seed, training=recipe, name=name, **lists)


def resolve_attack(raw: Any) -> AttackConfig:
    attacks = registry("attacks")
    assert attacks is not None
    if raw is None:
        raise PoisonlabError(f"attack: missing [attack] table; expected name = one of: {', '.join(attacks.names())}")
    raw = check_type("attack", raw, dict)
    if "name" not in raw:
        raise PoisonlabError(f"attack.name: missing; expected one of: {', '.join(attacks.names())}")
    name = check_type("attack.name", raw["name"], str)
    if name not in attacks:
        raise PoisonlabError(f"attack.name: unknown attack {name!r}; expected one of: {', '.join(attacks.names())}")
    params = attack_parameters(attacks.get(name))
    given = {k: v for k, v in raw.items() if k != "name"}
    reject_unknown("attack", given, list(params))
    resolved: dict[str, Any] = {}
    for key, param in params.items():
        if key in given:
            value = given[key]
            if isinstance(value, list) and not _list_valued(param.annotation):
                raise PoisonlabError(f"attack.{key}: a list makes a sweep; run it with `poisonlab sweep`")
            if _parsed(key, param):
                value = check_type(f"attack.{key}", value, str)
                try:
                    PARAM_PARSERS[key](value)
                except PoisonlabError as e:
                    raise PoisonlabError(f"attack.{key}: {e}") from None
            else:
                value = check_type(f"attack.{key}", value, param.annotation)
            resolved[key] = value
        elif param.default is not inspect.Parameter.empty and _plain(param.default):
            resolved[key] = param.default
    rate = resolved.get("rate")
    if isinstance(rate, float) and not 0.0 < rate < 1.0 and resolved.get("count") is None:
        raise PoisonlabError(f"attack.rate: {rate}; expected a poison fraction in (0, 1)")
    config = AttackConfig(name, resolved)
    config.build()
    return config


def _plain(value: Any) -> bool:
    """Whether a default can be written to TOML and read back unchanged."""
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def load(path: Path) -> ExperimentConfig:
    """The single run ``path`` describes; a config with list-valued fields is a sweep and is refused."""
    raw = read_toml(path)
    axes = sweep_axes(raw)
    if axes:
        first = next(iter(axes))
        raise PoisonlabError(f"{path}: {first}: a list makes a sweep; run it with `poisonlab sweep {path}`")
    return resolve(raw, str(path))
