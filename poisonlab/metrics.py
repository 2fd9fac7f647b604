"""Clean accuracy and attack success rate, defined once for every experiment."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from poisonlab.core import ImageSet, Poisoned
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


def evaluate(model: nn.Module, test: ImageSet, poisoned: Poisoned) -> dict[str, Any]:
    """CA on ``test`` and ASR (overall and per source class) on its triggered copy."""
    triggered = poisoned.triggered(test)
    clean_pred = predict(model, test.x)
    bd_pred = predict(model, triggered.x)
    return {
        "clean_accuracy": accuracy(clean_pred, test.y),
        "attack_success_rate": attack_success_rate(bd_pred, triggered.y, test.y),
        "per_class_asr": per_class_asr(bd_pred, triggered.y, test.y, test.num_classes),
        "asr_images": int((triggered.y != test.y).sum()),
    }
