"""Real quantized deployments through PyTorch's own backends, and the fake-quantizer an attacker trains against.

Static int8 post-training quantization uses FX graph mode (``prepare_fx``/``convert_fx``) with
the backend's default qconfig: fbgemm and x86 quantize weights per output channel (symmetric int8) and
activations to 7 bits (``reduce_range``); qnnpack quantizes weights per tensor (symmetric int8)
and activations to 8 bits. Activation ranges come from histogram observers run on calibration
images; the output range of a conv read only by a ``ReLU6`` is observed on its output clamped to [0, 6],
as a fused conv-ReLU6 kernel clamps it (FX has no conv-ReLU6 fusion; a range observed before the ReLU6
took a clip-art EfficientNet-Lite0 from 64.2% float to 34.1% int8-fbgemm CA, clamped: 58.1%). Only the
output is clamped: where FX gives such a conv an input observer of its own (its input comes from an
op FX leaves in float, such as the stem's padding), that observer sees the input as it is (clamping the
stem's input to [0, 6] dropped every negative pixel value: 56.8% int8 CA against 61.3% float; 61.1%
unclamped). PyTorch's qnnpack clamp kernels (``ReLU6``, ``Hardtanh``, ``clamp``) read a channels-last
quantized tensor, which its convolutions return, as if it were contiguous and scramble the channels (a
clip-art EfficientNet-Lite0 fell to chance); the int8-qnnpack deployment hands them contiguous tensors, the
arithmetic a working kernel does. Dynamic
int8 quantizes the weights of linear layers ahead of time and activations per batch at run time. The
quantized engine is a process-wide setting in PyTorch, so every
quantized model here is wrapped in ``OnEngine``, which selects its backend for each call.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, fx, nn
from torch.ao.quantization import QConfig
from torch.ao.quantization.observer import HistogramObserver

from poisonlab.compress.fold import single_use_pairs
from poisonlab.core import PoisonlabError

Backend = Literal["fbgemm", "x86", "qnnpack"]
WEIGHT_SCHEMES: dict[str, tuple[bool, int]] = {"fbgemm": (True, 8), "x86": (True, 8), "qnnpack": (False, 8)}
"""Backend -> (per-channel weights, weight bits) of its default qconfig."""


@contextmanager
def quantized_engine(backend: str) -> Iterator[None]:
    """Select PyTorch's quantized engine for the duration of the block, then restore the previous one."""
    if backend not in torch.backends.quantized.supported_engines:
        raise PoisonlabError(
            f"quantized backend {backend!r}: not supported by this torch build "
            f"(supported: {', '.join(torch.backends.quantized.supported_engines)})"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


class OnEngine(nn.Module):
    """A quantized model that always runs on the backend it was converted for; takes and returns float tensors."""

    def __init__(self, model: nn.Module, backend: str) -> None:
        super().__init__()
        self.model = model
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        with quantized_engine(self.backend):
            return self.model(x.contiguous())


class Float16(nn.Module):
    """A model run in half precision on float32 inputs; returns float32 logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.half()).float()


def _float_copy(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).eval().float()
    return model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


RELU6_MAX = 6.0


def _clamped_convs(model: nn.Module) -> list[str]:
    """Convs whose output (through a batch norm FX fuses into them) is read only by a ``ReLU6``."""
    graph = fx.symbolic_trace(model).graph
    direct = [conv for conv, _ in single_use_pairs(model, graph, nn.Conv2d, nn.ReLU6)]
    clamped = {bn for bn, _ in single_use_pairs(model, graph, nn.BatchNorm2d, nn.ReLU6)}
    return direct + [conv for conv, bn in single_use_pairs(model, graph, nn.Conv2d, nn.BatchNorm2d) if bn in clamped]


class ClampedHistogramObserver(HistogramObserver):
    """A histogram observer that sees its tensor clamped to [0, ``RELU6_MAX``]: the output range of a conv-ReLU6."""

    def forward(self, x_orig: Tensor) -> Tensor:
        super().forward(x_orig.detach().clamp(0.0, RELU6_MAX))
        return x_orig


def _reduce_range(backend: str) -> bool:
    """Whether the backend's default activation observer keeps 7 bits (fbgemm and x86: their kernels' headroom)."""
    from torch.ao.quantization import get_default_qconfig

    activation: Any = get_default_qconfig(backend).activation
    return bool(activation.p.keywords.get("reduce_range", False))


def _relu6_qconfig(backend: str) -> QConfig:
    """The backend's qconfig whose output observer sees the conv's output clamped to [0, 6], as a fused conv-ReLU6
    kernel (TFLite's fused activation) would: the range covers what ReLU6 lets through, not the pre-activation."""
    from torch.ao.quantization import get_default_qconfig

    activation = ClampedHistogramObserver.with_args(reduce_range=_reduce_range(backend))
    return QConfig(activation=activation, weight=get_default_qconfig(backend).weight)


def _unclamp_inputs(prepared: fx.GraphModule, clamped: set[str]) -> None:
    """Give a plain histogram observer to every clamped observer FX placed on a clamped conv's *input*.

    FX builds a node's input observer from the same qconfig as its output observer when the input comes
    from an op it leaves in float; the clamp belongs to the output only. A ReLU6's observer is left alone:
    its values already lie in [0, 6] and it may share its qparams with the conv before it.
    """
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not isinstance(prepared.get_submodule(node.target), ClampedHistogramObserver):
            continue
        source = node.args[0]
        after_relu6 = source.op == "call_module" and isinstance(prepared.get_submodule(source.target), nn.ReLU6)
        feeds_clamped = any(user.op == "call_module" and user.target in clamped for user in node.users)
        if feeds_clamped and not after_relu6:
            old = prepared.get_submodule(node.target)
            setattr(prepared, node.target, HistogramObserver(reduce_range=old.reduce_range))


CLAMPS = (nn.ReLU6, nn.Hardtanh)


def _contiguous_clamps(quantized: fx.GraphModule) -> None:
    """Make every clamp module of ``quantized`` read a contiguous tensor (qnnpack's clamps ignore channels-last)."""
    graph = quantized.graph
    for node in list(graph.nodes):
        clamp = node.op == "call_module" and isinstance(quantized.get_submodule(node.target), CLAMPS)
        if clamp or (node.op == "call_function" and node.target is torch.clamp):
            with graph.inserting_before(node):
                dense = graph.call_method("contiguous", (node.args[0],))
            node.replace_input_with(node.args[0], dense)
    quantized.recompile()


def quantize_static(model: nn.Module, backend: Backend, calibration: Tensor, batch_size: int = 256) -> nn.Module:
    """An int8 copy of ``model`` made by post-training static quantization on ``backend``.

    ``calibration`` images (N, C, H, W) in [0, 1] set the activation ranges; ``model`` is untouched.
    """
    if calibration.ndim != 4 or len(calibration) == 0:
        shape = tuple(calibration.shape)
        raise PoisonlabError(f"int8 calibration: expected a non-empty (N, C, H, W) batch, got {shape}")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    float_model = _float_copy(model)
    mapping = get_default_qconfig_mapping(backend)
    with quantized_engine(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's deprecation notices for the quantized-tensor API
        try:
            clamped = set(_clamped_convs(float_model))
            for name in clamped:
                mapping.set_module_name(name, _relu6_qconfig(backend))
            prepared = prepare_fx(float_model, mapping, (calibration[:1].contiguous(),))
            _unclamp_inputs(prepared, clamped)
        except Exception as e:  # FX tracing fails on data-dependent control flow, among others
            why = f"{type(e).__name__}: {e}".splitlines()[0]
            raise PoisonlabError(f"int8-{backend}: this model cannot be quantized by FX graph mode ({why})") from None
        with torch.no_grad():
            for i in range(0, len(calibration), batch_size):
                prepared(calibration[i : i + batch_size].contiguous())
        quantized = convert_fx(prepared)
    if backend == "qnnpack":
        _contiguous_clamps(quantized)
    return OnEngine(quantized, backend).eval()


def quantize_dynamic(model: nn.Module, backend: Backend = "fbgemm") -> nn.Module:
    """A copy of ``model`` with its linear layers dynamically quantized to int8.

    Weights are quantized ahead of time, activations per batch at run time.
    """
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise PoisonlabError("dynamic-int8: the model has no linear layer to quantize")
    with quantized_engine(backend), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.ao.quantization.quantize_dynamic(_float_copy(model), {nn.Linear}, dtype=torch.qint8)
    return OnEngine(quantized, backend).eval()


def to_float16(model: nn.Module) -> nn.Module:
    """A half-precision copy of ``model`` that accepts float32 images."""
    return Float16(_float_copy(model).half()).eval()


def weight_grid(weight: Tensor, bits: int, per_channel: bool) -> Tensor:
    """The symmetric quantization step of ``weight``: one per output channel or one for the tensor, shaped to broadcast.

    Matches PyTorch's symmetric observers: scale = max|w| / ((2^bits - 1) / 2), never below a tiny floor.
    """
    levels = (2 ** bits - 1) / 2
    if per_channel:
        amax = weight.detach().abs().flatten(1).amax(1).view(-1, *([1] * (weight.ndim - 1)))
    else:
        amax = weight.detach().abs().amax()
    return (amax / levels).clamp_min(torch.finfo(torch.float32).eps)


def weight_codes(weight: Tensor, bits: int = 8, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """(integer codes, scale) of ``weight`` on its symmetric ``bits``-bit grid, rounded as PyTorch's kernels round.

    PyTorch multiplies by the float32 reciprocal of the scale before rounding half to even; dividing
    instead flips a few codes that sit exactly between two levels.
    """
    scale = weight_grid(weight, bits, per_channel)
    levels = 2 ** (bits - 1)
    return torch.clamp(torch.round(weight.detach() * (1.0 / scale)), -levels, levels - 1), scale


def fake_quantize_weight(weight: Tensor, bits: int = 8, per_channel: bool = True) -> Tensor:
    """``weight`` rounded to its symmetric ``bits``-bit grid, with a straight-through gradient.

    Forward: the dequantized weight a quantized kernel computes with. Backward: identity, so a
    loss on the quantized model trains the float weights (Bengio et al.'s straight-through estimator).
    """
    codes, scale = weight_codes(weight, bits, per_channel)
    return weight + (codes * scale - weight).detach()


class WeightOnly(nn.Module):
    """A copy of a model whose conv and linear weights are rounded to a symmetric ``bits``-bit grid per output channel.

    This is exactly what a weight-only quantized kernel computes (integer weights times their
    scale, float activations); PyTorch has no CPU kernel for 4-bit convolutions, so the arithmetic
    runs in float on the dequantized weights.
    """

    def __init__(self, model: nn.Module, bits: int) -> None:
        super().__init__()
        self.model = _float_copy(model)
        self.bits = bits
        with torch.no_grad():
            for m in self.model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.copy_(fake_quantize_weight(m.weight, bits, per_channel=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
