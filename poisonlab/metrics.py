"""Clean accuracy and attack success rate, defined once for every experiment, deploy-check and defense."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from poisonlab.core import ImageSet, Poisoned, Samples
from poisonlab.training import predict

ASR_DEFINITION = (
    "ASR = share of triggered test images, among those whose true class differs from the attacker's target, "
    "that the model assigns to the target"
)


def accuracy(pred: Tensor, y: Tensor) -> float:
    """Share of predictions equal to the labels."""
    return int((pred == y).sum()) / len(y) if len(y) else float("nan")


def attack_success_rate(pred: Tensor, target: Tensor, true: Tensor) -> float:
    """Share of triggered images with ``true != target`` predicted as ``target`` (see ASR_DEFINITION)."""
    eligible = true != target
    return accuracy(pred[eligible], target[eligible])


def per_class_asr(pred: Tensor, target: Tensor, true: Tensor, num_classes: int) -> list[float | None]:
    """ASR per true (source) class; None for a class with no eligible image."""
    out: list[float | None] = []
    for k in range(num_classes):
        sel = (true == k) & (true != target)
        out.append(accuracy(pred[sel], target[sel]) if sel.any() else None)
    return out


def per_target_asr(pred: Tensor, target: Tensor, true: Tensor, num_classes: int) -> Tensor:
    """ASR per target class (NaN for a target no eligible image drew)."""
    eligible = (true != target).float()
    hits = torch.zeros(num_classes).index_add_(0, target, ((pred == target).float() * eligible))
    total = torch.zeros(num_classes).index_add_(0, target, eligible)
    return torch.where(total > 0, hits / total.clamp_min(1), torch.full_like(total, float("nan")))


def _multi_target(pred: Tensor, triggered: ImageSet, test: Samples, poisoned_targets: Tensor | None
                  ) -> dict[str, Any]:
    asr = per_target_asr(pred, triggered.y, test.y, test.num_classes)
    seen = asr[~asr.isnan()]
    q = torch.quantile(seen, torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])).tolist()
    quantiles = dict(zip(("min", "p10", "median", "p90", "max"), q, strict=True))
    out: dict[str, Any] = {"mean_asr": float(seen.mean()), "per_target_asr_quantiles": quantiles,
                           "targets_evaluated": len(seen)}
    if poisoned_targets is not None:
        unreached = asr[~asr.isnan() & ~torch.isin(torch.arange(test.num_classes), poisoned_targets)]
        out.update(never_poisoned_targets=len(unreached),
                   mean_asr_never_poisoned_targets=float(unreached.mean()) if len(unreached) else None)
    return out


def evaluate(model: nn.Module, test: Samples, triggered: ImageSet | None = None, *, multi_target: bool = False,
             poisoned_targets: Tensor | None = None, reference: Tensor | None = None,
             predictions: Tensor | None = None) -> dict[str, Any]:
    """CA on ``test``; with ``triggered`` (``test`` stamped, labelled with the targets) also ASR.

    All-to-one / all-to-all: ASR overall and per source class. ``multi_target`` (every class a target,
    universal backdoors): the mean of the per-target ASRs and their quantiles, and with
    ``poisoned_targets`` the mean over the targets that received no poison. ``reference`` (another
    model's predictions on ``test``) adds the share of images on which the two agree. ``predictions`` are the
    model's own on ``test`` when the caller has them already (they are not computed again).
    """
    clean_pred = predict(model, test.x) if predictions is None else predictions
    out: dict[str, Any] = {"clean_accuracy": accuracy(clean_pred, test.y)}
    if reference is not None:
        out["agreement"] = accuracy(clean_pred, reference)
    if triggered is None:
        return out
    pred = predict(model, triggered.x)
    if multi_target:
        out.update(_multi_target(pred, triggered, test, poisoned_targets))
    else:
        out["attack_success_rate"] = attack_success_rate(pred, triggered.y, test.y)
        out["per_class_asr"] = per_class_asr(pred, triggered.y, test.y, test.num_classes)
    out["asr_images"] = int((triggered.y != test.y).sum())
    return out


def _retargeted(test: ImageSet, poisoned: Poisoned, choices: Tensor | None, seed: int) -> ImageSet:
    """``test`` stamped for one seeded target per image, drawn from ``choices`` (default: every class)."""
    from poisonlab.attacks.universal import SampledTargets  # deferred: it loads scikit-learn

    target_map = SampledTargets(test.num_classes, seed, None if choices is None else tuple(choices.tolist()))
    return dataclasses.replace(poisoned, target_map=target_map).triggered(test)


def universal_metrics(model: nn.Module, test: ImageSet, poisoned: Poisoned, choices: Tensor | None = None,
                      seed: int = 0, poisoned_targets: Tensor | None = None) -> dict[str, Any]:
    """``evaluate``'s multi-target figures, one seeded target per test image drawn from ``choices`` (default all)."""
    triggered = _retargeted(test, poisoned, choices, seed)
    return evaluate(model, test, triggered, multi_target=True, poisoned_targets=poisoned_targets)


def where_triggers_go(model: nn.Module, test: ImageSet, poisoned: Poisoned, choices: Tensor, poisoned_classes: Tensor,
                      seed: int = 0) -> dict[str, float]:
    """Where images triggered for targets in ``choices`` end up: the target, their own class, a poisoned class.

    Also the mean Hamming distance between the target's code and the predicted class's code, over
    misses that land on a poisoned class: small means the model snaps to the nearest poisoned code.
    """
    triggered = _retargeted(test, poisoned, choices, seed)
    keep = triggered.y != test.y
    pred, target, true = predict(model, triggered.x)[keep], triggered.y[keep], test.y[keep]
    codes = poisoned.trigger.codes  # type: ignore[attr-defined]
    to_poisoned = torch.isin(pred, poisoned_classes) & (pred != target)
    distance = (codes[pred[to_poisoned]] != codes[target[to_poisoned]]).sum(1).float()
    return {
        "to_target": float((pred == target).float().mean()),
        "to_own_class": float((pred == true).float().mean()),
        "to_a_poisoned_class": float(to_poisoned.float().mean()),
        "hamming_to_predicted_poisoned_class": float(distance.mean()) if len(distance) else float("nan"),
    }
