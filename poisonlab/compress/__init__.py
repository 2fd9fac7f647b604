"""Deployments: the transformations a model undergoes before use (int8, fp16, weight-only, pruning), by name.

A deployment spec is ``NAME`` or ``NAME:ARG``: ``int8-fbgemm``, ``int8-x86``, ``int8-qnnpack``, ``dynamic-int8``,
``fp16``, ``weight-only:4`` (bits), ``prune-l1:0.3``, ``prune-layer:0.3``, ``prune-filters:0.5`` (ratio).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from poisonlab.compress.prune import Method, check_ratio, prune_model
from poisonlab.compress.quantize import (
    WEIGHT_SCHEMES,
    Backend,
    WeightOnly,
    fake_quantize_weight,
    quantize_dynamic,
    quantize_static,
    to_float16,
)
from poisonlab.core import Deployment, PoisonlabError, Pruning, Samples, WeightGrid, in_memory
from poisonlab.registry import Registry

DeploymentFactory = Callable[[str], Deployment]
DEPLOYMENTS: Registry[DeploymentFactory] = Registry("deployment")
DEFAULT_DEPLOYMENTS = (
    "int8-fbgemm", "int8-qnnpack", "dynamic-int8", "fp16", "weight-only:4",
    "prune-l1:0.3", "prune-l1:0.5", "prune-filters:0.3", "prune-filters:0.5",
)
CALIBRATION_IMAGES = 512
"""Training images that calibrate static int8, for every caller (pipeline, deploy-check)."""


def calibration_images(train: Samples, seed: int, n: int = CALIBRATION_IMAGES) -> Tensor:
    """A seeded sample of ``n`` training images, in their original order, for static int8 calibration."""
    if n < 1:
        raise PoisonlabError(f"calibration: {n} images; expected at least 1")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return in_memory(train.subset(pick.sort().values)).x


def fake_quantized(model: nn.Module, grid: WeightGrid) -> nn.Module:
    """A float copy of ``model`` whose conv/linear weights are rounded to ``grid`` (a differentiable int8 stand-in)."""
    kinds: tuple[type[nn.Module], ...] = (nn.Linear,) if grid.linear_only else (nn.Conv2d, nn.Linear)
    out = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, nn.Conv2d | nn.Linear) and isinstance(m, kinds):
                m.weight.copy_(fake_quantize_weight(m.weight, grid.bits, grid.per_channel))
    return out


@dataclass
class StaticInt8:
    """Post-training static int8 quantization on ``backend``, calibrated on the images passed at deployment."""

    backend: Backend
    name: str = field(init=False)
    weight_grid: WeightGrid | None = field(init=False)
    pruning: Pruning | None = None

    def __post_init__(self) -> None:
        self.name = f"int8-{self.backend}"
        per_channel, bits = WEIGHT_SCHEMES[self.backend]
        self.weight_grid = WeightGrid(bits, per_channel)

    def __call__(self, model: nn.Module, calibration: Tensor | None = None) -> nn.Module:
        if calibration is None:
            raise PoisonlabError(f"deployment {self.name!r}: needs calibration images")
        return quantize_static(model, self.backend, calibration)

    def stand_in(self, model: nn.Module, deployed: nn.Module) -> nn.Module | None:
        """Real int8 kernels have no gradient: the float model with straight-through fake-quantized weights."""
        assert self.weight_grid is not None
        return fake_quantized(model, self.weight_grid)


@dataclass
class DynamicInt8:
    """Dynamic int8 quantization of the linear layers (fbgemm)."""

    name: str = "dynamic-int8"
    weight_grid: WeightGrid | None = WeightGrid(8, per_channel=False, linear_only=True)
    pruning: Pruning | None = None

    def __call__(self, model: nn.Module, calibration: Tensor | None = None) -> nn.Module:
        return quantize_dynamic(model)

    def stand_in(self, model: nn.Module, deployed: nn.Module) -> nn.Module | None:
        assert self.weight_grid is not None
        return fake_quantized(model, self.weight_grid)


@dataclass
class HalfPrecision:
    """Every weight and activation in float16."""

    name: str = "fp16"
    weight_grid: WeightGrid | None = None
    pruning: Pruning | None = None

    def __call__(self, model: nn.Module, calibration: Tensor | None = None) -> nn.Module:
        return to_float16(model)

    def stand_in(self, model: nn.Module, deployed: nn.Module) -> nn.Module | None:
        """The float model itself: fp16 rounding has no search direction of its own."""
        return None


@dataclass
class WeightOnlyInt:
    """Conv and linear weights rounded to a symmetric ``bits``-bit grid per output channel; activations in float."""

    bits: int
    name: str = field(init=False)
    weight_grid: WeightGrid | None = field(init=False)
    pruning: Pruning | None = None

    def __post_init__(self) -> None:
        self.name = f"weight-only:{self.bits}"
        self.weight_grid = WeightGrid(self.bits, per_channel=True)

    def __call__(self, model: nn.Module, calibration: Tensor | None = None) -> nn.Module:
        return WeightOnly(model, self.bits).eval()

    def stand_in(self, model: nn.Module, deployed: nn.Module) -> nn.Module | None:
        return deployed


@dataclass
class Prune:
    """``torch.nn.utils.prune`` by ``method`` at ``ratio``, made permanent."""

    method: Method
    ratio: float
    label: str
    name: str = field(init=False)
    weight_grid: WeightGrid | None = None
    pruning: Pruning | None = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"{self.label}:{self.ratio:g}"
        self.pruning = Pruning(self.method, self.ratio)

    def __call__(self, model: nn.Module, calibration: Tensor | None = None) -> nn.Module:
        return prune_model(model, self.method, self.ratio)

    def stand_in(self, model: nn.Module, deployed: nn.Module) -> nn.Module | None:
        return deployed


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
    def make(spec: str) -> Deployment:
        _no_arg(spec, spec.partition(":")[2])
        return StaticInt8(backend)

    return make


def _pruner(method: Method, label: str, default: float) -> DeploymentFactory:
    def make(spec: str) -> Deployment:
        return Prune(method, _ratio(spec, spec.partition(":")[2], default), label)

    return make


def _weight_only(spec: str) -> Deployment:
    arg = spec.partition(":")[2] or "4"
    if not arg.isdigit() or not 2 <= int(arg) <= 8:
        raise PoisonlabError(f"deployment {spec!r}: expected weight bits 2-8 after ':', e.g. weight-only:4")
    return WeightOnlyInt(int(arg))


def _fixed(make: Callable[[], Deployment]) -> DeploymentFactory:
    def factory(spec: str) -> Deployment:
        _no_arg(spec, spec.partition(":")[2])
        return make()

    return factory


_register = DEPLOYMENTS.register
_register("int8-fbgemm", "static int8 PTQ, fbgemm: per-channel weights, 7-bit activations")(_static("fbgemm"))
_register("int8-x86", "static int8 PTQ, x86 (PyTorch's default engine): as fbgemm, per-channel weights, "
          "7-bit activations")(_static("x86"))
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


def parse_deployment(spec: str) -> Deployment:
    """The deployment named by ``spec`` (``NAME`` or ``NAME:ARG``); one-line errors for a bad name or argument."""
    return DEPLOYMENTS.get(spec.strip().partition(":")[0])(spec.strip())


__all__ = ["CALIBRATION_IMAGES", "DEFAULT_DEPLOYMENTS", "DEPLOYMENTS", "Deployment", "calibration_images",
           "fake_quantized", "parse_deployment"]
