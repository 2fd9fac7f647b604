"""Weight and activation statistics of a float model that give away a compression-artifact backdoor.

A model that is clean in float and backdoored once quantized needs a coarse quantization grid, and the
cheap way to get one (``widen_quantization_step``) parks an outlier weight on an input that is never
active, so the float model never sees it. Three trigger-agnostic scores per conv/linear layer, from the
weights and the layer's inputs on clean images:

- ``outlier``: the largest |w| over the median of the layer's nonzero |w| (the median survives pruning
  and a few outliers; a per-channel int8 scale is the channel's largest weight).
- ``dormant``: the largest |w| reading an input that is active (> 0) on under ``dormant_below`` of the clean
  images, over the largest |w| reading the other inputs: a path the float model never uses, yet one
  that carries the layer's largest weights and can be woken by quantization. 0 when no input is dormant.
- ``range``: the largest per-input activation range (max |a| on clean images) over the median range of
  the active inputs: one channel far from its peers sets the per-tensor int8 activation scale.

Calibration: the limits are twice the largest clean score, rounded up. Five clean BadNets CNNs trained on
MNIST with the default recipe (seeds 0-4), scored on the 10,000 test images, gave as their largest score
over the layers: outlier 12.30, 12.96, 10.80, 11.30, 10.78 (limit 26); dormant 0.466, 0.821, 0.509, 0.570,
0.501 (limit 1.7); range 2.449, 2.533, 2.037, 2.300, 2.154 (limit 5.1). Re-measure with
``bench/compression_stealth.py --clean-only``.

Grouped (depthwise) convs have their own outlier limit, 85: a depthwise filter has 9 weights per channel and a
pretrained one is far spikier than a dense layer. A clean EfficientNet-Lite0 fine-tuned on clip art
(``openclipart:size=32``, 5 epochs, lr 3e-3, batch 64, seed 0), scored on the 592 test images: largest depthwise
outlier 42.18 (five depthwise layers over 26, the dense limit: a false alarm before this limit), dense convs 19.14,
linear 7.31, dormant 1.21, range 3.02, all under the MNIST limits. One seed: the limit is twice its score, rounded
up; re-measure with ``bench/clipart_compression.py`` (its clean rows). The MNIST CNNs have no grouped conv, so
their scores and verdicts are untouched by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn

from poisonlab.core import PoisonlabError

STATISTICS = ("outlier", "dormant", "range")


@dataclass(frozen=True)
class WeightCheckSettings:
    """Per-statistic limits of the weight check; a layer over any limit is flagged."""

    max_outlier: float = 26.0
    max_outlier_grouped: float = 85.0
    max_dormant: float = 1.7
    max_range: float = 5.1
    dormant_below: float = 0.01
    images: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_outlier", "max_outlier_grouped", "max_dormant", "max_range"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise PoisonlabError(f"weight check {name}: expected a finite number > 0, got {value}")
        if not 0.0 <= self.dormant_below < 1.0:
            raise PoisonlabError(f"weight check dormant_below: expected a share in [0, 1), got {self.dormant_below}")
        if self.images < 1:
            raise PoisonlabError(f"weight check images: expected at least 1, got {self.images}")

    def limit(self, statistic: str, grouped: bool = False) -> float:
        """The limit of one of ``STATISTICS``; ``grouped``: for a grouped (depthwise) conv's outlier score."""
        if grouped and statistic == "outlier":
            return self.max_outlier_grouped
        return float(getattr(self, f"max_{statistic}"))


DEFAULT_LIMITS = WeightCheckSettings()
"""The calibrated limits of the module docstring."""


def checked_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """The conv and linear layers of ``model`` in module order, with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def is_grouped(layer: nn.Module) -> TypeGuard[nn.Conv2d]:
    """Whether ``layer`` is a grouped (depthwise) conv: its outlier score has its own limit."""
    return isinstance(layer, nn.Conv2d) and layer.groups > 1


def outlier_ratio(weight: Tensor) -> float:
    """max |w| over the median of the nonzero |w| (0 for an all-zero tensor)."""
    mags = weight.detach().abs().flatten()
    nonzero = mags[mags > 0]
    return 0.0 if not len(nonzero) else float(mags.max() / nonzero.median())


def _input_weights(layer: nn.Conv2d | nn.Linear) -> Tensor:
    """Per input (channel or feature) the largest |w| reading it; a grouped (depthwise) conv's group g reads inputs
    g * k .. g * k + k - 1 through its weight's k = in_channels / groups columns."""
    w = layer.weight.detach().abs()
    if is_grouped(layer):
        per_group = w.flatten(2).amax(2).view(layer.groups, -1, w.shape[1])
        return per_group.amax(1).flatten()
    return w.transpose(0, 1).flatten(1).amax(1)


@torch.no_grad()
def input_activity(model: nn.Module, x: Tensor, batch_size: int = 256) -> dict[str, tuple[Tensor, Tensor]]:
    """Per conv/linear layer: (share of images on which each input is active, max |a| of each input) on ``x``.

    An input is a channel of a conv layer (active when any position is > 0) or a feature of a linear layer.
    """
    layers = checked_layers(model)
    active: dict[str, Tensor] = {}
    peak: dict[str, Tensor] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            a = args[0].detach().float()
            a = a.flatten(2) if a.ndim > 2 else a.unsqueeze(2)
            on = (a > 0).any(2).sum(0).float()
            top = a.abs().amax(2).amax(0)
            active[name] = active[name] + on if name in active else on
            peak[name] = torch.maximum(peak[name], top) if name in peak else top
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    except RuntimeError as e:
        raise PoisonlabError(f"weight check: the model cannot run on images of shape {tuple(x.shape[1:])} "
                             f"({str(e).splitlines()[0]})") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (active[n] / len(x), peak[n]) for n, _ in layers if n in active}


def layer_scores(name: str, layer: nn.Conv2d | nn.Linear, share: Tensor, peak: Tensor, dormant_below: float
                 ) -> dict[str, Any]:
    """The three scores of one layer from its weights and its inputs' activity, with the input each points at."""
    row: dict[str, Any] = {"layer": name, "kind": type(layer).__name__, "outlier": outlier_ratio(layer.weight),
                           "grouped": is_grouped(layer)}
    reads = _input_weights(layer)
    dormant = share < dormant_below
    row["dormant_inputs"] = int(dormant.sum())
    row["dormant"] = 0.0
    if dormant.any() and (~dormant).any() and reads[~dormant].max() > 0:
        idx = int(torch.where(dormant, reads, torch.zeros_like(reads)).argmax())
        row["dormant"] = float(reads[idx] / reads[~dormant].max())
        row["dormant_input"] = idx
    active_peak = peak[~dormant]
    row["range"] = None
    if len(active_peak) >= 2 and active_peak.median() > 0:
        idx = int(torch.where(~dormant, peak, torch.zeros_like(peak)).argmax())
        row["range"] = float(peak[idx] / active_peak.median())
        row["range_input"] = idx
    return row


def _reason(row: dict[str, Any], statistic: str, limit: float) -> str:
    value = row[statistic]
    what = {"outlier": "largest weight is {v:.1f}x the median weight",
            "dormant": f"input {row.get('dormant_input')}, active on under the dormant share of clean images, "
                       "is read by weights {v:.2f}x the largest on active inputs",
            "range": f"input {row.get('range_input')}'s activation range is {{v:.1f}}x the median input's"}[statistic]
    return f"{row['layer']}: {what.format(v=value)} (limit {limit:g}, {value / limit:.1f}x the limit)"


def weight_check(model: nn.Module, x: Tensor, settings: WeightCheckSettings = DEFAULT_LIMITS) -> dict[str, Any]:
    """Per-layer outlier, dormant-path and activation-range scores of ``model`` on clean images ``x``, and a verdict.

    ``flagged`` is true when any layer exceeds a limit of ``settings``; ``reasons`` name the layer, the
    statistic and how far over the limit it is; ``worst`` gives each statistic's largest score over the layers
    (``outlier`` over the dense layers; ``outlier_grouped``, in ``worst`` and ``limits`` only for a model with grouped
    convs, over those).
    """
    if x.ndim < 2 or len(x) == 0 or not x.is_floating_point():
        raise PoisonlabError(f"weight check: expected a non-empty float batch of images, got shape {tuple(x.shape)}")
    x = x[: settings.images]
    activity = input_activity(model, x)
    rows = [layer_scores(n, m, *activity[n], settings.dormant_below) for n, m in checked_layers(model)
            if n in activity]
    reasons = [_reason(r, s, settings.limit(s, r["grouped"])) for r in rows for s in STATISTICS
               if r[s] is not None and r[s] > settings.limit(s, r["grouped"])]
    worst = {s: max((r[s] for r in rows if r[s] is not None and not (s == "outlier" and r["grouped"])), default=None)
             for s in STATISTICS}
    limits = {s: settings.limit(s) for s in STATISTICS}
    if any(r["grouped"] for r in rows):
        worst["outlier_grouped"] = max(r["outlier"] for r in rows if r["grouped"])
        limits["outlier_grouped"] = settings.max_outlier_grouped
    return {"layers": rows, "images": len(x), "limits": limits, "worst": worst, "flagged": bool(reasons),
            "reasons": reasons}
