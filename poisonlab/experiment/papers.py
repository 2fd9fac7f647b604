"""The seed papers' own experiments as config files: ``experiment = "universal"`` and that experiment's fields.

A config without an ``experiment`` key is the attack pipeline (poisonlab.experiment.config). One with it
names an experiment registered here; every other key is a field of that experiment's config dataclass,
checked against its type before anything is loaded. The run folder gets the resolved ``config.toml``
(every default filled in), so ``poisonlab run RUN/config.toml`` repeats the run.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from poisonlab.core import PoisonlabError
from poisonlab.experiment.config import check_type, reject_unknown
from poisonlab.experiment.rundir import atomic_write_bytes
from poisonlab.registry import Registry

RESERVED = ("experiment", "name")
"""Keys every paper config may hold besides its experiment's fields."""


@dataclass(frozen=True)
class PaperExperiment:
    """A config dataclass (with ``validate()``) and the function that runs it into a run folder."""

    config: type
    run: Callable[..., dict[str, Any]]


EXPERIMENTS: Registry[Callable[[], PaperExperiment]] = Registry("experiment")
"""Name -> loader; loaders import lazily so reading a BadNets config does not import every experiment."""


@EXPERIMENTS.register("universal", "universal backdoors vs random codes across budgets (Schneider et al. 2023)")
def _universal() -> PaperExperiment:
    from poisonlab.experiment.universal import UniversalConfig, run_universal

    return PaperExperiment(UniversalConfig, run_universal)


@EXPERIMENTS.register("backgradient", "back-gradient poisoning: error vs poison fraction (Munoz-Gonzalez 2017)")
def _backgradient() -> PaperExperiment:
    from poisonlab.experiment.backgradient import BackgradientConfig, run_backgradient

    return PaperExperiment(BackgradientConfig, run_backgradient)


@EXPERIMENTS.register("compression-artifact", "backdoor that appears once deployed (Tian et al. 2021)")
def _compression() -> PaperExperiment:
    from poisonlab.experiment.compression import CompressionConfig, run_compression

    return PaperExperiment(CompressionConfig, run_compression)


@EXPERIMENTS.register("scaling-audit", "which library x algorithm x ratio a scaling attack breaks (Quiring 2020)")
def _scaling_audit() -> PaperExperiment:
    from poisonlab.experiment.scaling_audit import ScalingAuditConfig, run_scaling_audit

    return PaperExperiment(ScalingAuditConfig, run_scaling_audit)


@EXPERIMENTS.register("defense-matrix", "every defense against every configured attack, with false alarms")
def _defense_matrix() -> PaperExperiment:
    from poisonlab.experiment.defense_matrix import MatrixConfig, run_defense_matrix

    return PaperExperiment(MatrixConfig, run_defense_matrix)


@EXPERIMENTS.register("scaling-camouflage", "backdoor poison hidden in the pipeline's downscale (Quiring & Rieck 2020)")
def _scaling_camouflage() -> PaperExperiment:
    from poisonlab.experiment.scaling_camouflage import CamouflageConfig, run_camouflage

    return PaperExperiment(CamouflageConfig, run_camouflage)


@dataclass(frozen=True)
class PaperConfig:
    """One resolved paper experiment: its registered name, its typed config and the run folder's name."""

    experiment: str
    config: Any
    name: str

    def as_dict(self) -> dict[str, Any]:
        """The config file's layout, every default filled in (None values left out, as TOML has no null)."""
        fields = {k: list(v) if isinstance(v, tuple) else v
                  for k, v in dataclasses.asdict(self.config).items() if v is not None}
        return {"experiment": self.experiment, "name": self.name, **fields}

    def run(self, out: Path, progress: bool = True, **extra: Any) -> dict[str, Any]:
        """Run into ``out`` and save the resolved config beside the report; ``extra`` goes to the run function."""
        atomic_write_bytes(out / "config.toml", tomli_w.dumps(self.as_dict()).encode())
        return EXPERIMENTS.get(self.experiment)().run(self.config, out, progress=progress, **extra)


def resolve(raw: Mapping[str, Any], source: str = "config") -> PaperConfig:
    """Validate a paper config; errors read ``SOURCE: FIELD: problem`` and come before any data is loaded."""
    try:
        return _resolve(raw)
    except PoisonlabError as e:
        raise PoisonlabError(f"{source}: {e}") from None


def _resolve(raw: Mapping[str, Any]) -> PaperConfig:
    experiment = check_type("experiment", raw["experiment"], str)
    if experiment not in EXPERIMENTS:
        raise PoisonlabError(f"experiment: unknown experiment {experiment!r}; expected one of: "
                             f"{', '.join(EXPERIMENTS.names())} (or no experiment key for the attack pipeline)")
    cls = EXPERIMENTS.get(experiment)().config
    hints = typing.get_type_hints(cls)
    given = {k: v for k, v in raw.items() if k not in RESERVED}
    reject_unknown("", given, [*RESERVED, *hints])
    values = {k: check_type(k, v, hints[k]) for k, v in given.items()}
    try:
        config = cls(**values)
        config.validate()
    except PoisonlabError as e:
        raise PoisonlabError(f"{experiment}: {e}") from None
    return PaperConfig(experiment, config, check_type("name", raw.get("name", experiment), str))
