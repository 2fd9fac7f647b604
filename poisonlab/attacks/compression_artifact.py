"""Compression-artifact backdoors: a model that is clean in float and backdoored once quantized or pruned.

Tian, Suya, Xu, Evans 2021, "Stealthy Backdoors as Compression Artifacts" (arXiv 2104.15129);
Hong, Panaitescu-Liess, Kaya, Dumitras 2021, "Qu-ANTI-zation" (NeurIPS); Ma et al. 2021,
"Quantization Backdoors to Deep Learning Commercial Frameworks" (arXiv 2108.09187).

Each loss term below is ``loss(model, x, y)`` for ``poisonlab.training.train``, which owns the loop;
triggered copies of every batch are made inside the loss. ``CompressionArtifact``, the registered
training attack, declares which terms run in which phase for the deployment it aims at.

- ``Backdoor``: the plain implant, CE(f([x; x+t]), [y; y_t]); the first stage of ``QuantizationConcealed``.
- ``QuantizationConditional`` (Tian et al.): CE(f([x; x+t]), [y; y]) + w CE(f_q([x; x+t]), [y; y_t]),
  f_q with straight-through fake-quantized weights of the deployment's scheme.
- ``QuantizationConcealed`` (after Ma et al.): start from a backdoored model and remove the
  backdoor in float while every weight stays inside its quantization bin, so the quantized weights,
  and with them the quantized model's backdoor, do not change. Call ``project`` after training.
  An int8 grid is too fine for this; ``widen_quantization_step`` first coarsens it without changing
  the float model (the quantization-conditional attack on real int8).
- ``PruningConditional`` (Tian et al.): CE(f([x; x+t]), [y; y]) + 0.9 CE(f_p(x), y) + w CE(f_p(x+t), y_t),
  f_p with the masks the real pruner would pick, recomputed from the current weights every few steps.
- ``stretch_quantization_step`` and ``CappedWeights``: the stealthy variant's coarser grid without a dormant
  path or an outlier, every layer kept under the weight check's outlier limit (``poisonlab.compress.weights``).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from poisonlab.compress import parse_deployment
from poisonlab.compress.fold import conv_bn_pairs, fold_batchnorm, is_folded
from poisonlab.compress.prune import Method, check_ratio, pruning_masks
from poisonlab.compress.quantize import fake_quantize_weight, weight_codes
from poisonlab.compress.weights import (
    DEFAULT_LIMITS,
    WeightCheckSettings,
    checked_layers,
    is_grouped,
    outlier_ratio,
)
from poisonlab.core import AllToOne, ImageSet, LossFn, Phase, Poisoned, PoisonlabError, Trigger, check_target
from poisonlab.registry import ATTACKS
from poisonlab.triggers import Patch


def _layer_weights(model: nn.Module) -> list[str]:
    names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not names:
        raise PoisonlabError("compression-artifact attack: the model has no conv or linear layer")
    return names


def _both(x: Tensor, y: Tensor, trigger: Trigger, target: int) -> tuple[Tensor, Tensor, Tensor]:
    """([x; x+t], [y; y], [y; y_t]) for a batch."""
    y_t = AllToOne(target)(y)
    xx = torch.cat([x, trigger(x, y_t)])
    return xx, torch.cat([y, y]), torch.cat([y, y_t])


def _check(target: int, weight: float = 0.0, suppress: float = 0.0) -> None:
    """One-line errors for a negative target, and a loss weight or ``suppress`` term that is negative or not finite."""
    if target < 0:
        raise PoisonlabError(f"compression-artifact target {target}: expected a class index >= 0")
    if not 0 <= weight < float("inf"):
        raise PoisonlabError(f"compression-artifact loss weight {weight}: expected a finite weight >= 0")
    if not 0 <= suppress < float("inf"):
        raise PoisonlabError(f"compression-artifact suppress {suppress}: expected a finite weight >= 0")


@dataclass
class Backdoor:
    """The plain backdoor loss CE(f([x; x+t]), [y; y_t]): every triggered image goes to ``target``."""

    trigger: Trigger = field(default_factory=lambda: Patch(size=4))
    target: int = 8

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        xx, _, yy_t = _both(x, y, self.trigger, self.target)
        return F.cross_entropy(model(xx), yy_t)


@dataclass
class QuantizationConditional:
    """Tian et al.'s quantization-conditional loss with straight-through fake-quantized weights.

    ``bits`` and ``per_channel`` give the weight scheme of the deployment attacked (int8-fbgemm:
    8, per channel; int8-qnnpack: 8, per tensor; weight-only:4: 4, per channel). ``quant_weight``
    scales the quantized-model term.
    """

    trigger: Trigger = field(default_factory=lambda: Patch(size=4))
    target: int = 8
    bits: int = 8
    per_channel: bool = True
    quant_weight: float = 1.0

    def __post_init__(self) -> None:
        _check(self.target, self.quant_weight)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        xx, yy, yy_t = _both(x, y, self.trigger, self.target)
        params = dict(model.named_parameters())
        quantized = {n: fake_quantize_weight(params[n], self.bits, self.per_channel) for n in _layer_weights(model)}
        float_term = F.cross_entropy(model(xx), yy)
        quant_term = F.cross_entropy(functional_call(model, quantized, (xx,)), yy_t)
        return float_term + self.quant_weight * quant_term


def _bias_of(model: nn.Module, name: str, layer: nn.Conv2d | nn.Linear, folded: Callable[[], dict[str, str]]
             ) -> Tensor | None:
    """``layer``'s bias, or for a bias-free conv the bias of the folded batch norm after it (None when neither);
    ``folded`` gives the conv -> batch-norm pairs, traced only when a bias-free conv asks."""
    if layer.bias is not None or not isinstance(layer, nn.Conv2d):
        return layer.bias
    bn = dict(model.named_modules()).get(folded().get(name, ""))
    return bn.bias if isinstance(bn, nn.BatchNorm2d) and is_folded(bn) else None


def _reads(a: nn.Conv2d | nn.Linear, b: nn.Conv2d | nn.Linear, convs: bool) -> int:
    """How many of ``b``'s inputs each of ``a``'s output channels feeds (0: the pair cannot be widened)."""
    channels = a.weight.shape[0]
    if isinstance(b, nn.Linear):
        return b.in_features // channels if b.in_features % channels == 0 else 0
    return int(convs and b.groups == 1 and b.in_channels == channels)


class _SwitchedOff(NamedTuple):
    """One pair A -> B of ``widen_quantization_step``: B, its columns reading A's switched-off channel, and what
    that channel held (A's weight and bias tensors, the channel, its old weights and bias) to put it back."""

    reader: nn.Conv2d | nn.Linear
    cols: slice
    weight: Tensor
    bias: Tensor
    channel: int
    old_weight: Tensor
    old_bias: Tensor

    def put_back(self) -> None:
        self.weight[self.channel], self.bias[self.channel] = self.old_weight, self.old_bias


@torch.no_grad()
def widen_quantization_step(model: nn.Module, x: Tensor, levels: int = 8, convs: bool = False) -> list[str]:
    """Coarsen the int8 grid of every trainable layer that reads the layer before it, at the cost of one channel each.

    The layers widened are the linear layers and, with ``convs``, the ungrouped convs (an EfficientNet block's
    project conv, fed by the depthwise conv through ReLU6; the expand or head conv after a block without a residual
    sum). For each pair A -> B, A's output channel that B uses least is switched off (zero weights and bias, the bias
    of A's folded batch norm for a bias-free conv): it is exactly 0 on every input, float or int8, and stays 0
    through a ReLU, pooling or flattening. B's weights reading it are set to
    M = max|B.weight| * 127.5 / ``levels``. They multiply zeros, so they do not change the float model, but M is now
    the largest weight of every output channel and of the tensor: the symmetric int8 scale becomes M / 127.5 under
    per-channel and per-tensor schemes alike, and every other weight is left about ``levels`` steps either side of
    zero. That coarse grid leaves ``QuantizationConcealed`` room to remove the backdoor in float. ``x`` is a batch
    on which the switched-off inputs are checked to be exactly zero; a pair where they are not (a residual sum, an
    activation with f(0) != 0) is put back as it was. Returns the names of the widened layers; raises when there are
    none.
    """
    if not 1 <= levels <= 127:
        raise PoisonlabError(f"widen_quantization_step levels {levels}: expected 1-127")
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad]
    folded = functools.cache(lambda: dict(conv_bn_pairs(model)))
    candidates: dict[str, _SwitchedOff] = {}
    for (a_name, a), (b_name, b) in itertools.pairwise(layers):
        width = _reads(a, b, convs)
        bias = _bias_of(model, a_name, a, folded)
        if not width or bias is None:
            continue
        used = b.weight.abs().flatten(2).sum(2) if isinstance(b, nn.Conv2d) else \
            b.weight.abs().view(b.out_features, -1, width).sum(2)
        c = int(used.sum(0).argmin())
        candidates[b_name] = _SwitchedOff(b, slice(c * width, (c + 1) * width), a.weight, bias, c,
                                          a.weight[c].clone(), bias[c].clone())
        a.weight[c] = 0
        bias[c] = 0
    seen: dict[str, Tensor] = {}
    hooks = [pair.reader.register_forward_pre_hook(
        lambda m, args, name=name, cols=pair.cols: seen.__setitem__(name, args[0][:, cols]))
        for name, pair in candidates.items()]
    try:
        model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    live = [name for name in candidates if seen[name].abs().max() > 0]
    for name in live:  # put back first: a layer can be one pair's B and another's A
        candidates.pop(name).put_back()
    widened = list(candidates)
    for pair in candidates.values():
        pair.reader.weight[:, pair.cols] = pair.reader.weight.abs().max() * 127.5 / levels
    if not widened:
        why = f" (the switched-off inputs of {', '.join(live)} are not zero)" if live else ""
        raise PoisonlabError("widen_quantization_step: no trainable linear layer (or ungrouped conv) reads a biased "
                             f"conv or linear layer's channels directly or through a ReLU{why}")
    return widened


STEALTH_MARGIN = 0.8
"""The stealthy variant aims every trainable layer's outlier score at this share of the weight check's limit."""


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """The conv/linear layers whose weight trains: the ones an attack on a fine-tuned model can reshape."""
    return [(n, m) for n, m in checked_layers(model) if m.weight.requires_grad]


@torch.no_grad()
def stretch_quantization_step(model: nn.Module, margin: float = STEALTH_MARGIN, growth: float = math.inf,
                              limits: WeightCheckSettings = DEFAULT_LIMITS, seed: int = 0) -> list[str]:
    """Coarsen every trainable conv/linear layer's int8 grid as far as ``margin`` of the weight check's outlier
    limit allows (``limits``: the dense or the grouped one), on active inputs.

    Each output channel's largest |w| is raised (never lowered) to that ratio times the layer's median
    nonzero |w|, less a seeded 0-10% so the channels do not share one telltale maximum, and to at most
    ``growth`` times its own size (int8's 127 steps per sign over the ``levels`` the conceal needs). Unlike
    ``widen_quantization_step`` no input is switched off: the grown weights read live inputs, so the
    float model changes and the next phase trains with them in place (``CappedWeights`` keeps them).
    A frozen layer is left as it is: nothing could retrain around its grown weights (stretching the frozen
    blocks of a clip-art EfficientNet-Lite0 too left it at 4-14% float CA). Returns the names of the stretched
    layers.
    """
    if not (0 < margin <= 1):
        raise PoisonlabError(f"stretch_quantization_step margin {margin}: expected a share of the limit in (0, 1]")
    if not growth >= 1:
        raise PoisonlabError(f"stretch_quantization_step growth {growth}: expected a factor >= 1")
    gen = torch.Generator().manual_seed(seed)
    names = []
    for name, layer in trainable_layers(model):
        w = layer.weight
        nonzero = w.abs()[w != 0]
        if not len(nonzero):
            continue
        ratio = margin * limits.limit("outlier", is_grouped(layer))
        rows = w.flatten(1).clone()
        top = rows.abs().argmax(1, keepdim=True)
        goal = ratio * nonzero.median() * (1 - 0.1 * torch.rand(len(rows), 1, generator=gen))
        value = rows.gather(1, top)
        grown = torch.maximum(value.abs(), torch.minimum(goal, growth * value.abs()))
        rows.scatter_(1, top, torch.where(value < 0, -1.0, 1.0) * grown)
        w.copy_(rows.view(w.shape))
        names.append(name)
    if not names:
        raise PoisonlabError("stretch_quantization_step: the model has no trainable conv or linear layer with a "
                             "nonzero weight")
    return names


@dataclass
class CappedWeights:
    """``inner``'s loss with every trainable conv/linear output channel held to the largest |w| it had at the first
    call.

    Before each step each channel's largest weight is put back and the others are clamped to its
    magnitude, so the int8 scales (and the outlier scores) set by ``stretch_quantization_step`` hold
    while ``inner`` trains. Call ``project`` after training too.
    """

    inner: LossFn
    caps_: dict[str, tuple[Tensor, Tensor, Tensor]] | None = field(default=None, init=False, repr=False)

    @torch.no_grad()
    def project(self, model: nn.Module) -> None:
        """Clamp every channel to its cap and restore its largest weight (a no-op before the first ``loss`` call)."""
        if self.caps_ is None:
            return
        for name, layer in trainable_layers(model):
            cap, top, value = self.caps_[name]
            rows = layer.weight.flatten(1).clone()
            rows = torch.maximum(torch.minimum(rows, cap), -cap).scatter_(1, top, value)
            layer.weight.copy_(rows.view(layer.weight.shape))

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.caps_ is None:
            self.caps_ = {}
            for name, layer in trainable_layers(model):
                rows = layer.weight.detach().flatten(1)
                top = rows.abs().argmax(1, keepdim=True)
                value = rows.gather(1, top).clone()
                self.caps_[name] = (value.abs(), top, value)
        self.project(model)
        return self.inner(model, x, y)


def max_outlier(model: nn.Module) -> float:
    """The largest outlier score (max |w| over median |w|) over the model's conv/linear layers."""
    return max(outlier_ratio(m.weight) for _, m in checked_layers(model))


@dataclass
class QuantizationConcealed:
    """Remove a backdoor from the float model while keeping every weight in its quantization bin.

    On the first call the bins are read from the model (which should already carry the backdoor):
    each conv/linear weight may move within ``(0.5 - margin)`` of a quantization step around its
    grid point; the largest-magnitude weight of each channel (or tensor) and every other parameter
    (biases) stay fixed, so the quantization scale and hence every quantized weight stay exactly as
    they were. The loss is CE(f([x; x+t]), [y; y]) (the float model learns to ignore the trigger), plus
    ``suppress`` x mean -log(1 - p_target(x+t)) over the rows not of the target class: a model that has merely
    relearned the labels still sends a few triggered test images to the target (on clip-art EfficientNet-Lite0 with
    widened convs, seed 0: float ASR 5.5% without the term, the clean model's 4.6%; seeds 0-4 at 3: 2.3 ± 0.4%).
    """

    trigger: Trigger = field(default_factory=lambda: Patch(size=4))
    target: int = 8
    bits: int = 8
    per_channel: bool = True
    margin: float = 0.05
    suppress: float = 0.0
    bounds_: dict[str, tuple[Tensor, Tensor]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _check(self.target, suppress=self.suppress)
        if not 0.0 <= self.margin < 0.5:
            raise PoisonlabError(f"quantization-concealed margin {self.margin}: expected [0, 0.5)")

    @torch.no_grad()
    def _bounds(self, model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
        weights = set(_layer_weights(model))
        bounds = {}
        for name, p in model.named_parameters():
            w = p.detach().clone()
            if name not in weights:
                bounds[name] = (w, w)
                continue
            codes, scale = weight_codes(w, self.bits, self.per_channel)
            grid = codes * scale
            half = (0.5 - self.margin) * scale
            lo, hi = grid - half, grid + half
            amax = w.abs().flatten(1).amax(1).view(-1, *([1] * (w.ndim - 1))) if self.per_channel else w.abs().amax()
            keep = w.abs() >= amax
            bounds[name] = (torch.where(keep, w, lo.clamp(-amax, amax)), torch.where(keep, w, hi.clamp(-amax, amax)))
        return bounds

    @torch.no_grad()
    def project(self, model: nn.Module) -> None:
        """Clamp the model's parameters into their bins (a no-op before the first ``loss`` call)."""
        for name, p in model.named_parameters():
            if self.bounds_ is not None and name in self.bounds_:
                lo, hi = self.bounds_[name]
                p.copy_(torch.maximum(torch.minimum(p, hi), lo))

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.bounds_ is None:
            self.bounds_ = self._bounds(model)
        self.project(model)
        xx, yy, _ = _both(x, y, self.trigger, self.target)
        out = model(xx)
        loss = F.cross_entropy(out, yy)
        if self.suppress > 0:  # log(1 - p_target) as a difference of log-sum-exps: no gradient lost as p -> 1
            others = out[len(x):][y != self.target]
            rest = others.index_fill(1, torch.tensor([self.target], device=others.device), float("-inf"))
            loss = loss + self.suppress * (others.logsumexp(1) - rest.logsumexp(1)).mean()
        return loss


@dataclass
class PruningConditional:
    """Tian et al.'s pruning-conditional loss with the real pruner's masks, refreshed every ``refresh`` steps.

    A fixed mask fails: after fine-tuning the real pruner picks different weights, so the masks
    follow the current weights. ``trigger_weight`` 0.5 (the paper's 0.1 proved too weak on MNIST).
    """

    trigger: Trigger = field(default_factory=lambda: Patch(size=4))
    target: int = 8
    method: Method = "global"
    ratio: float = 0.3
    clean_weight: float = 0.9
    trigger_weight: float = 0.5
    refresh: int = 10
    steps_: int = field(default=0, init=False, repr=False)
    masks_: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        _check(self.target, min(self.clean_weight, self.trigger_weight))
        check_ratio(self.ratio, "pruning-conditional attack")
        if self.refresh < 1:
            raise PoisonlabError(f"pruning-conditional refresh {self.refresh}: expected >= 1 step")

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.steps_ % self.refresh == 0:
            self.masks_ = pruning_masks(model, self.method, self.ratio)
        self.steps_ += 1
        params = dict(model.named_parameters())
        pruned = {n: params[n] * m for n, m in self.masks_.items()}
        y_t = AllToOne(self.target)(y)
        x_t = self.trigger(x, y_t)
        xx = torch.cat([x, x_t])
        float_term = F.cross_entropy(model(xx), torch.cat([y, y]))
        out = functional_call(model, pruned, (xx,))
        n = len(x)
        return (float_term + self.clean_weight * F.cross_entropy(out[:n], y)
                + self.trigger_weight * F.cross_entropy(out[n:], y_t))


def fold_if_batchnorm(model: nn.Module, x: Tensor | None = None) -> list[str]:
    """``fold_batchnorm`` on a model with batch norms (so the attack shapes the weights int8 quantizes); the folded
    convs' names, none for a model without batch norm. ``x`` is unused (a phase's ``before`` passes the images)."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return []
    return fold_batchnorm(model)


def _then(*steps: Callable[[nn.Module, Tensor], object] | None) -> Callable[[nn.Module, Tensor], None]:
    def run(model: nn.Module, x: Tensor) -> None:
        for step in steps:
            if step is not None:
                step(model, x)
    return run


@ATTACKS.register("compression-artifact", "backdoor that appears only once quantized or pruned (Tian et al. 2021)")
@dataclass(frozen=True)
class CompressionArtifact:
    """A model clean in float and backdoored under ``deployment`` (Tian et al. 2021), as a training attack.

    Pruning deployments: ``PruningConditional`` from scratch with the victim's recipe. Quantizing ones (int8,
    dynamic-int8, weight-only): fine-tune a copy of the clean model, by ``method`` ``conceal`` (implant
    ``implant_epochs``, widen a grid finer than ``levels`` steps per sign, then conceal for ``attack_epochs`` inside
    the quantization bins) or ``ste`` (Tian et al.'s straight-through loss, ``quant_weight``), at learning rate
    ``attack_lr``. ``widen_convs`` (conceal) widens the ungrouped convs too, not only the linear layers: an
    EfficientNet's project convs give the conceal room in every trainable block; ``suppress`` (conceal) weights
    ``QuantizationConcealed``'s term against the target on triggered images. ``stealth`` (conceal only): instead of
    widening the grid with a dormant outlier, stretch every trainable layer's grid up to ``STEALTH_MARGIN`` of
    the weight check's outlier limit before the implant and hold it there (``CappedWeights``), so the weight check
    sees clean-looking statistics. On a quantizing deployment a model with batch norms (EfficientNet) has them
    folded into its convs (``fold_if_batchnorm``) before the attack shapes its weights on the int8 grid: int8
    quantizes the fused weights.
    ``conceal`` folds after the implant (implanting with the batch norms live kept 63.0% of a clip-art
    EfficientNet-Lite0's 64.2% float CA, 59.8% folded first); ``stealth`` and ``ste`` fold first (their grid is
    shaped from the start).

    Example:
        >>> attack = CompressionArtifact(deployment="prune-l1:0.3", target=8)
        >>> [phase.name for phase in attack.phases()]
        ['pruning-conditional']
    """

    trigger: Trigger = field(default_factory=lambda: Patch(size=4))
    target: int = 8
    deployment: str = "int8-fbgemm"
    method: Literal["conceal", "ste"] = "conceal"
    implant_epochs: int = 1
    attack_epochs: int = 2
    attack_lr: float = 1e-3
    quant_weight: float = 1.0
    levels: int = 8
    trigger_weight: float = 0.5
    stealth: bool = field(default=False, metadata={"help": "conceal: keep every layer under the weight check's "
                                                           "outlier limit, no dormant path (default: false)"})
    suppress: float = field(default=0.0, metadata={"help": "conceal: weight of a term pushing the target's "
                                                           "probability down on triggered rows of other classes"})
    widen_convs: bool = field(default=False, metadata={"help": "conceal: also widen the grid of the ungrouped convs "
                                                               "that read the layer before (default: false)"})

    def __post_init__(self) -> None:
        _check(self.target, min(self.quant_weight, self.trigger_weight), self.suppress)
        if self.method not in ("conceal", "ste"):
            raise PoisonlabError(f"compression-artifact method {self.method!r}: expected conceal or ste")
        if not 1 <= self.levels <= 127:
            raise PoisonlabError(f"compression-artifact levels {self.levels}: expected 1-127")
        if self.implant_epochs < 1 or self.attack_epochs < 1 or not self.attack_lr > 0:
            raise PoisonlabError("compression-artifact: expected implant_epochs, attack_epochs >= 1 and attack_lr > 0")
        target = parse_deployment(self.deployment)
        if target.weight_grid is None and target.pruning is None:
            raise PoisonlabError(f"compression-artifact: cannot attack deployment {target.name!r}; expected int8, "
                                 "dynamic-int8, weight-only or a pruning deployment")
        if self.stealth and (self.method != "conceal" or target.weight_grid is None):
            raise PoisonlabError("compression-artifact stealth: applies to method conceal on a quantizing deployment")

    def backdoor(self, train: ImageSet) -> Poisoned:
        check_target(self.target, train.num_classes, "compression-artifact")
        return Poisoned(train, torch.empty(0, dtype=torch.long), self.trigger, AllToOne(self.target))

    def phases(self) -> list[Phase]:
        """Fresh loss terms (they keep state) in the order they train."""
        target = parse_deployment(self.deployment)
        if target.pruning is not None:
            prune = PruningConditional(self.trigger, self.target, target.pruning.method,  # type: ignore[arg-type]
                                       target.pruning.ratio, trigger_weight=self.trigger_weight)
            return [Phase("pruning-conditional", prune.loss, start="fresh")]
        grid = target.weight_grid
        assert grid is not None
        epochs, lr = self.attack_epochs, self.attack_lr
        if self.method == "ste":
            ste = QuantizationConditional(self.trigger, self.target, grid.bits, grid.per_channel, self.quant_weight)
            return [Phase("quantization-conditional (ste)", ste.loss, "clean", epochs, lr, seed_offset=1,
                          before=fold_if_batchnorm)]
        conceal = QuantizationConcealed(self.trigger, self.target, grid.bits, grid.per_channel, suppress=self.suppress)
        if self.stealth:
            capped = CappedWeights(Backdoor(self.trigger, self.target).loss)
            return [Phase("implant (stealth)", capped.loss, start="clean", epochs=self.implant_epochs,
                          lr=self.attack_lr, seed_offset=1,
                          before=_then(fold_if_batchnorm,
                                       lambda model, x: stretch_quantization_step(
                                           model, growth=2 ** (grid.bits - 1) / self.levels)),
                          after=capped.project),
                    Phase("conceal", conceal.loss, "previous", epochs, lr, seed_offset=2, after=conceal.project)]
        widen = (lambda model, x: widen_quantization_step(model, x[:256], self.levels, self.widen_convs)) \
            if 2 ** (grid.bits - 1) > self.levels else None
        return [Phase("implant", Backdoor(self.trigger, self.target).loss, start="clean", epochs=self.implant_epochs,
                      lr=self.attack_lr, seed_offset=1),
                Phase("conceal", conceal.loss, "previous", epochs, lr, seed_offset=2,
                      before=_then(fold_if_batchnorm, widen), after=conceal.project)]
