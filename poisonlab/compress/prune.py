"""Real pruning through ``torch.nn.utils.prune``, and the masks it would pick, for an attacker to train against.

Three pruners, each by the share of weights (or filters) removed:
- ``global``: unstructured magnitude pruning over all conv and linear weights together
  (``prune.global_unstructured`` with ``L1Unstructured``);
- ``layer``: unstructured magnitude pruning of each conv and linear layer separately (``prune.l1_unstructured``);
- ``filters``: structured pruning of each conv layer's output filters with the smallest L1 norm
  (``prune.ln_structured(n=1, dim=0)``).
The masks are made by the same ``torch.nn.utils.prune`` classes the deployment applies, so a mask
computed on a model equals the one its deployment removes.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from poisonlab.core import PoisonlabError

Method = Literal["global", "layer", "filters"]
METHODS = ("global", "layer", "filters")


def check_ratio(ratio: float, what: str) -> None:
    if not 0.0 <= ratio < 1.0:
        raise PoisonlabError(f"{what}: pruning ratio {ratio}: expected a fraction in [0, 1)")


def prunable(model: nn.Module, method: Method) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers ``method`` prunes: conv and linear layers, or conv layers only for ``filters``."""
    layers: list[tuple[str, nn.Module]] = [
        (n, m) for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and method != "filters")
    ]
    if not layers:
        what = "conv" if method == "filters" else "conv or linear"
        raise PoisonlabError(f"pruning ({method}): the model has no {what} layer")
    return layers


def _weight(layer: nn.Module) -> Tensor:
    weight = layer.weight
    assert isinstance(weight, Tensor)
    return weight


@torch.no_grad()
def pruning_masks(model: nn.Module, method: Method, ratio: float) -> dict[str, Tensor]:
    """``{weight parameter name: 0/1 mask}`` that pruning ``model`` by ``method`` at ``ratio`` would apply now."""
    if method not in METHODS:
        raise PoisonlabError(f"pruning method {method!r}: expected one of {', '.join(METHODS)}")
    check_ratio(ratio, f"prune ({method})")
    layers = prunable(model, method)
    names = [f"{n}.weight" if n else "weight" for n, _ in layers]
    weights = [_weight(m).detach().contiguous() for _, m in layers]  # torch's masks assume a flat view
    if method == "global":
        flat = torch.cat([w.flatten() for w in weights])
        mask = prune.L1Unstructured(ratio).compute_mask(flat, torch.ones_like(flat))
        out, start = {}, 0
        for name, w in zip(names, weights, strict=True):
            out[name] = mask[start : start + w.numel()].view_as(w)
            start += w.numel()
        return out
    pruner = prune.L1Unstructured(ratio) if method == "layer" else prune.LnStructured(ratio, n=1, dim=0)
    return {n: pruner.compute_mask(w, torch.ones_like(w)) for n, w in zip(names, weights, strict=True)}


def prune_model(model: nn.Module, method: Method, ratio: float) -> nn.Module:
    """A copy of ``model`` pruned by ``method`` at ``ratio`` with ``torch.nn.utils.prune``, made permanent."""
    check_ratio(ratio, f"prune ({method})")
    pruned = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    layers = prunable(pruned, method)
    if method == "global":
        prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=ratio)
    elif method == "layer":
        for _, m in layers:
            prune.l1_unstructured(m, "weight", amount=ratio)
    elif method == "filters":
        for _, m in layers:
            prune.ln_structured(m, "weight", amount=ratio, n=1, dim=0)
    else:
        raise PoisonlabError(f"pruning method {method!r}: expected one of {', '.join(METHODS)}")
    for _, m in layers:
        prune.remove(m, "weight")
    return pruned


def sparsity(model: nn.Module) -> float:
    """Share of conv and linear weights that are exactly zero."""
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in ws)
    return float(sum(int((w == 0).sum()) for w in ws) / total) if total else 0.0
