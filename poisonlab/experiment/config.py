"""Typed configs: one dataclass per experiment, read from TOML or the command line, validated field by field.

A config dataclass's fields are the experiment's TOML keys and its command-line options (nested dataclass
fields such as ``training`` are TOML tables and flat options); ``field(metadata={"help": ...})`` gives the
help text. Every error names the field and what it accepts and comes before any data is loaded. A config
whose fields hold lists where one value is expected is a sweep (``sweep_axes``).

Example (the attack pipeline)::

    name = "badnets-mnist"
    dataset = "mnist"
    seed = [0, 1, 2]          # a list makes a sweep axis

    [training]
    epochs = 2

    [attack]
    name = "badnets"
    rate = [0.001, 0.01, 0.1]
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poisonlab.core import PoisonlabError, check_regular
from poisonlab.registry import ATTACKS, Registry
from poisonlab.triggers import parse_trigger, trigger_spec


def helped(default: Any, help: str) -> Any:
    """A config field with its help text (``--help`` and the docs read it); mutable defaults are copied."""
    if dataclasses.is_dataclass(default) or isinstance(default, dict | list):
        return field(default_factory=lambda: default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin in (list, tuple, Sequence):
        return "a list"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def list_valued(annotation: Any) -> bool:
    """Whether ``annotation`` takes a list (then a list value is not a sweep axis)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(list_valued(a) for a in typing.get_args(annotation))
    return origin in (list, tuple, Sequence) or annotation in (list, tuple)


def _wrong(path: str, value: Any, annotation: Any) -> Any:
    raise PoisonlabError(f"{path}: expected {type_name(annotation)}, got {value!r} ({type(value).__name__})")


def check_type(path: str, value: Any, annotation: Any) -> Any:
    """``value`` if it fits ``annotation`` (an int is a float; a list a tuple), else an error naming ``path``."""
    origin = typing.get_origin(annotation)
    if annotation is Any or annotation is inspect.Parameter.empty:
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise PoisonlabError(f"{path}: {value!r} is not allowed; expected {type_name(annotation)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is type(None):
                continue
            try:
                return check_type(path, value, option)
            except PoisonlabError:
                pass
        return _wrong(path, value, annotation)
    if origin in (list, tuple, Sequence):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if not isinstance(value, list | tuple):
            return _wrong(path, value, annotation)
        return tuple(check_type(f"{path}[{i}]", v, args[0]) if args else v for i, v in enumerate(value))
    if origin is dict or annotation is dict:
        return value if isinstance(value, dict) else _wrong(path, value, annotation)
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise PoisonlabError(f"{path}: {value}; expected a finite number")
        return float(value) if ok else _wrong(path, value, annotation)
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not -(2**63) <= value < 2**63:
            raise PoisonlabError(f"{path}: {value} does not fit a 64-bit integer; expected -2**63 to 2**63 - 1")
        return value if ok else _wrong(path, value, annotation)
    if isinstance(annotation, type):
        return value if isinstance(value, annotation) else _wrong(path, value, annotation)
    return value


def reject_unknown(section: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        where = f"{section}.{unknown[0]}" if section else unknown[0]
        raise PoisonlabError(f"{where}: unknown key; expected one of: {', '.join(sorted(allowed))}")


def check_component(path: str, spec: str, reg: Registry[Any]) -> None:
    """A ``NAME`` or ``NAME:ARGUMENT`` spec whose NAME is registered in ``reg``."""
    name = spec.partition(":")[0]
    if name not in reg:
        raise PoisonlabError(f"{path}: unknown {reg.kind} {name!r}; expected one of: {', '.join(reg.names())}")


def _is_trigger(annotation: Any) -> bool:
    """A parameter typed ``Trigger`` (a callable): given in configs as a trigger spec string."""
    return typing.get_origin(annotation) is Callable or annotation is Callable


def parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a component factory, annotations resolved (inherited fields in their own module)."""
    try:
        hints = typing.get_type_hints(factory)
    except (NameError, TypeError):
        hints = {}
    params = inspect.signature(factory).parameters.items()
    return {n: p.replace(annotation=hints.get(n, p.annotation)) for n, p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def plain(value: Any) -> bool:
    """Whether a value can be written to TOML and read back unchanged."""
    if isinstance(value, list | tuple):
        return all(plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def field_default(f: dataclasses.Field[Any]) -> Any:
    """A dataclass field's default, made by its factory when it has one."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def attack_defaults(name: str) -> dict[str, Any]:
    """The parameters a config can set on attack ``name``, with their defaults as config values (triggers as specs)."""
    cls = ATTACKS.get(name)
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    out: dict[str, Any] = {}
    for key, param in parameters(cls).items():
        default = field_default(fields[key]) if key in fields else param.default
        if not _settable(param) or default is inspect.Parameter.empty:
            continue
        if _is_trigger(param.annotation) and not isinstance(default, str):
            default = trigger_spec(default)
        if plain(default):
            out[key] = default
    return out


@dataclass(frozen=True)
class AttackConfig:
    """An attack by registered name with its parameters as the config gives them (trigger specs stay strings)."""

    name: str = "badnets"
    params: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """The attack object; trigger specs are parsed first. Its own checks (budget, target) run here."""
        factory = ATTACKS.get(self.name)
        params = parameters(factory)
        kwargs = {k: parse_trigger(v) if _is_trigger(params[k].annotation) and isinstance(v, str) else v
                  for k, v in self.params.items()}
        try:
            return factory(**kwargs)
        except PoisonlabError as e:
            raise PoisonlabError(f"attack: {e}") from None
        except TypeError as e:
            raise PoisonlabError(f"attack {self.name!r}: {e}") from None

    @staticmethod
    def missing(path: str = "attack") -> PoisonlabError:
        """The error for a config that gives no ``[attack]`` table."""
        return PoisonlabError(f"{path}: missing [attack] table; expected name = one of: {', '.join(ATTACKS.names())}")

    @staticmethod
    def resolve(raw: Any, path: str = "attack") -> AttackConfig:
        """Validate an ``[attack]`` table: a registered name and that attack's parameters, each type-checked."""
        if raw is None:
            raise AttackConfig.missing(path)
        raw = check_type(path, raw, dict)
        if "name" not in raw:
            raise PoisonlabError(f"{path}.name: missing; expected one of: {', '.join(ATTACKS.names())}")
        name = check_type(f"{path}.name", raw["name"], str)
        if name not in ATTACKS:
            raise PoisonlabError(f"{path}.name: unknown attack {name!r}; expected one of: {', '.join(ATTACKS.names())}")
        params = parameters(ATTACKS.get(name))
        given = {k: v for k, v in raw.items() if k != "name"}
        reject_unknown(path, given, [k for k, p in params.items() if _settable(p)])
        check_given = getattr(ATTACKS.get(name), "check_given", None)
        if check_given is not None:  # an attack's rule about parameters set together (not about its defaults)
            try:
                check_given(given)
            except PoisonlabError as e:
                raise PoisonlabError(f"{path}: {e}") from None
        resolved = attack_defaults(name) | {k: field_value(f"{path}.{k}", v, params[k].annotation)
                                             for k, v in given.items()}
        unused = getattr(ATTACKS.get(name), "unused", None)
        if unused is not None:  # a default the given parameters make meaningless is not written into the config
            resolved = {k: v for k, v in resolved.items() if k not in unused(resolved)}
        config = AttackConfig(name, resolved)
        config.build()
        return config

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()
                                      if v is not None}}


def _settable(param: inspect.Parameter) -> bool:
    """Whether a config can set this attack parameter (plain values and trigger specs, not tensors or models)."""
    return _is_trigger(param.annotation) or _plain_annotation(param.annotation)


def _plain_annotation(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, Sequence):
        return all(_plain_annotation(a) for a in typing.get_args(annotation) if a is not Ellipsis)
    return origin is typing.Literal or annotation in (int, float, str, bool, type(None))


def field_value(path: str, value: Any, annotation: Any) -> Any:
    """One config value checked against its field: a list where one value goes is a sweep; triggers must parse."""
    if isinstance(value, list) and not list_valued(annotation):
        raise PoisonlabError(f"{path}: a list makes a sweep; run it with `poisonlab sweep`")
    if not _is_trigger(annotation):
        return check_type(path, value, annotation)
    value = check_type(path, value, str)
    try:
        parse_trigger(value)
    except PoisonlabError as e:
        raise PoisonlabError(f"{path}: {e}") from None
    return value


def resolve_fields(cls: type, raw: Mapping[str, Any], section: str = "") -> Any:
    """An instance of config dataclass ``cls`` from ``raw``: unknown keys refused, every value type-checked.

    Nested dataclass fields are tables; ``AttackConfig`` fields are ``[attack]`` tables. The class's own
    ``__post_init__`` checks ranges; its errors get the section prefixed.
    """
    types_of = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    reject_unknown(section, raw, names)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{section}.{key}" if section else key
        annotation = types_of[key]
        if annotation is AttackConfig:
            values[key] = AttackConfig.resolve(value, path)
        elif dataclasses.is_dataclass(annotation):
            values[key] = resolve_fields(annotation, check_type(path, value, dict), path)  # type: ignore[arg-type]
        else:
            values[key] = field_value(path, value, annotation)
    try:
        return cls(**values)
    except PoisonlabError as e:
        raise PoisonlabError(f"{section}.{e}" if section else str(e)) from None


def as_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data in the file's layout, every default filled in (None values left out: TOML has no null)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, AttackConfig):
            out[f.name] = value.as_dict()
        elif dataclasses.is_dataclass(value):
            out[f.name] = as_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = [dict(v) if isinstance(v, Mapping) else v for v in value]
        elif value is not None:
            out[f.name] = value
    return out


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; one-line errors for a missing or non-regular file, text that is not UTF-8, or bad TOML."""
    check_regular(path, "config file")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise PoisonlabError(f"{path}: cannot read this config file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise PoisonlabError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); expected a TOML config"
                             ) from None
    except RecursionError:
        raise PoisonlabError(f"{path}: nested too deeply; expected a TOML config of a few tables") from None
    except tomllib.TOMLDecodeError as e:
        raise PoisonlabError(f"{path}: not valid TOML ({e})") from None


def sweep_axes(cls: type, raw: Mapping[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """Dotted field -> its values, for every field of ``cls`` given as a list where one value is expected."""
    axes: dict[str, list[Any]] = {}
    types_of = typing.get_type_hints(cls)
    for key, value in raw.items():
        annotation = types_of.get(key)
        path = f"{prefix}{key}"
        if annotation is AttackConfig and isinstance(value, dict):
            given = value.get("name")
            params: dict[str, inspect.Parameter] = {}
            for name in given if isinstance(given, list) else [given]:
                if isinstance(name, str) and name in ATTACKS:
                    params.update(parameters(ATTACKS.get(name)))
            for k, v in value.items():
                listed = k in params and list_valued(params[k].annotation)
                if isinstance(v, list) and (k == "name" or not listed or (v and all(isinstance(x, list) for x in v))):
                    axes[f"{path}.{k}"] = v
        elif annotation is not None and dataclasses.is_dataclass(annotation) and isinstance(value, dict):
            axes.update(sweep_axes(annotation, value, f"{path}."))  # type: ignore[arg-type]
        elif annotation is not None and isinstance(value, list):
            if not list_valued(annotation) or (value and all(isinstance(x, list) for x in value)):
                axes[path] = value
    for path, values in axes.items():
        if not values:
            raise PoisonlabError(f"{path}: an empty list; give at least one value")
    if "seed" in axes:  # seeds vary fastest, so the repeats of one setting finish together
        axes["seed"] = axes.pop("seed")
    return axes
