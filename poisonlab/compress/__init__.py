"""Deployments: the transformations a model undergoes before use (int8, fp16, weight-only, pruning), by name.

A deployment spec is ``NAME`` or ``NAME:ARG``: ``int8-fbgemm``, ``int8-qnnpack``, ``dynamic-int8``,
``fp16``, ``weight-only:4`` (bits), ``prune-l1:0.3``, ``prune-layer:0.3``, ``prune-filters:0.5`` (ratio).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from poisonlab.compress.prune import Method, check_ratio, prune_model
from poisonlab.compress.quantize import Backend, WeightOnly, quantize_dynamic, quantize_static, to_float16
from poisonlab.core import Deployment, PoisonlabError
from poisonlab.registry import Registry

DeploymentFactory = Callable[[str, "Tensor | None"], Deployment]
DEPLOYMENTS: Registry[DeploymentFactory] = Registry("deployment")
DEFAULT_DEPLOYMENTS = (
    "int8-fbgemm", "int8-qnnpack", "dynamic-int8", "fp16", "weight-only:4",
    "prune-l1:0.3", "prune-l1:0.5", "prune-filters:0.3", "prune-filters:0.5",
)


@dataclass
class StaticInt8:
    """Post-training static int8 quantization on ``backend``, calibrated on ``calibration`` images."""

    backend: Backend
    calibration: Tensor = field(repr=False)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"int8-{self.backend}"

    def __call__(self, model: nn.Module) -> nn.Module:
        return quantize_static(model, self.backend, self.calibration)


@dataclass
class DynamicInt8:
    """Dynamic int8 quantization of the linear layers (fbgemm)."""

    name: str = "dynamic-int8"

    def __call__(self, model: nn.Module) -> nn.Module:
        return quantize_dynamic(model)


@dataclass
class HalfPrecision:
    """Every weight and activation in float16."""

    name: str = "fp16"

    def __call__(self, model: nn.Module) -> nn.Module:
        return to_float16(model)


@dataclass
class WeightOnlyInt:
    """Conv and linear weights rounded to a symmetric ``bits``-bit grid per output channel; activations in float."""

    bits: int
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"weight-only:{self.bits}"

    def __call__(self, model: nn.Module) -> nn.Module:
        return WeightOnly(model, self.bits).eval()


@dataclass
class Prune:
    """``torch.nn.utils.prune`` by ``method`` at ``ratio``, made permanent."""

    method: Method
    ratio: float
    label: str
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"{self.label}:{self.ratio:g}"

    def __call__(self, model: nn.Module) -> nn.Module:
        return prune_model(model, self.method, self.ratio)


def _no_arg(spec: str, arg: str) -> None:
    if arg:
        raise PoisonlabError(f"deployment {spec!r}: takes no ':' argument")


def _ratio(spec: str, arg: str, default: float) -> float:
    try:
        ratio = float(arg) if arg else default
    except ValueError:
        raise PoisonlabError(f"deployment {spec!r}: expected a pruning ratio after ':', e.g. 0.3") from None
    check_ratio(ratio, f"deployment {spec!r}")
    return ratio


def _static(backend: Backend) -> DeploymentFactory:
    def make(spec: str, calibration: Tensor | None) -> Deployment:
        _no_arg(spec, spec.partition(":")[2])
        if calibration is None:
            raise PoisonlabError(f"deployment {spec!r}: needs calibration images")
        return StaticInt8(backend, calibration)

    return make


def _pruner(method: Method, label: str, default: float) -> DeploymentFactory:
    def make(spec: str, calibration: Tensor | None) -> Deployment:
        return Prune(method, _ratio(spec, spec.partition(":")[2], default), label)

    return make


def _weight_only(spec: str, calibration: Tensor | None) -> Deployment:
    arg = spec.partition(":")[2] or "4"
    if not arg.isdigit() or not 2 <= int(arg) <= 8:
        raise PoisonlabError(f"deployment {spec!r}: expected weight bits 2-8 after ':', e.g. weight-only:4")
    return WeightOnlyInt(int(arg))


def _fixed(make: Callable[[], Deployment]) -> DeploymentFactory:
    def factory(spec: str, calibration: Tensor | None) -> Deployment:
        _no_arg(spec, spec.partition(":")[2])
        return make()

    return factory


_register = DEPLOYMENTS.register
_register("int8-fbgemm", "static int8 PTQ, fbgemm: per-channel weights, 7-bit activations")(_static("fbgemm"))
_register("int8-qnnpack", "static int8 PTQ, qnnpack: per-tensor weights, 8-bit activations")(_static("qnnpack"))
_register("dynamic-int8", "dynamic int8 quantization of linear layers (fbgemm)")(_fixed(DynamicInt8))
_register("fp16", "half precision weights and activations")(_fixed(HalfPrecision))
_register("weight-only", "weights rounded to BITS per channel, float activations: weight-only:4")(_weight_only)
_register("prune-l1", "global magnitude pruning of conv+linear weights: prune-l1:RATIO")(
    _pruner("global", "prune-l1", 0.3))
_register("prune-layer", "per-layer magnitude pruning of conv+linear weights: prune-layer:RATIO")(
    _pruner("layer", "prune-layer", 0.3))
_register("prune-filters", "structured L1 pruning of each conv layer's filters: prune-filters:RATIO")(
    _pruner("filters", "prune-filters", 0.5))


def parse_deployment(spec: str, calibration: Tensor | None = None) -> Deployment:
    """The deployment named by ``spec`` (``NAME`` or ``NAME:ARG``); static int8 needs ``calibration`` images."""
    return DEPLOYMENTS.get(spec.strip().partition(":")[0])(spec.strip(), calibration)


__all__ = ["DEFAULT_DEPLOYMENTS", "DEPLOYMENTS", "Deployment", "parse_deployment"]
