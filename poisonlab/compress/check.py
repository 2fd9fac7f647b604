"""Test a model as it will be deployed: evaluate the float model and each deployed variant side by side.

Tian et al. 2021 (arXiv 2104.15129) show a model can be clean in float and backdoored once
quantized or pruned; their advice is to test the deployed model. For each variant this measures
clean accuracy, ASR for a known trigger (when one is given), agreement with the float model on
clean images, and a trigger-agnostic divergence test: a small universal mask-and-pattern stamp
(Neural-Cleanse style) optimised on a differentiable stand-in of the variant so that the variant
changes its answer while the float model keeps its own; the divergence is the share of held-out
images on which the stamp makes the REAL variant and the float model disagree. Both are judged on the images
the float model answers with confidence (top softmax >= ``confident``): rounding moves the answers a float
model was unsure of, a backdoor moves confident ones too. On a clip-art EfficientNet-Lite0 (61% CA) clean
int8-fbgemm disagreed with float on 12.2% of all test images but on 1.4% of the confident half (stamp: 18.8% and
3.1%), while a compression-artifact model disagreed on 45% of its confident images (stamp: 59%). Optionally the model
scanner (Neural Cleanse) runs on the float model and on every variant: a scan of the float model alone
misses a backdoor that only the deployed variant carries. The weight check (``poisonlab.compress.weights``)
reads the float model's weights and its activations on the clean test images for the outliers and dormant
paths that a quantization-conditional backdoor leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poisonlab.compress.weights import DEFAULT_LIMITS, WeightCheckSettings, weight_check
from poisonlab.core import AllToOne, Deployment, ImageSet, PoisonlabError, Trigger, check_target, stamped
from poisonlab.defenses.neural_cleanse import NeuralCleanse
from poisonlab.metrics import accuracy, evaluate
from poisonlab.training import predict, predict_confident


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds and search budget of a deploy check."""

    max_disagreement: float = 0.02
    max_divergence: float = 0.15
    max_asr_gain: float = 0.10
    confident: float = 0.8
    search_steps: int = 150
    search_images: int = 512
    mask_cost: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_disagreement", "max_divergence", "max_asr_gain", "confident"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PoisonlabError(f"deploy-check {name}: expected a fraction in [0, 1], got {getattr(self, name)}")
        if self.search_steps < 0 or self.search_images < 1:
            raise PoisonlabError("deploy-check search: expected steps >= 0 and at least 1 image")


def _stamp(x: Tensor, mask_logit: Tensor, pattern_logit: Tensor) -> Tensor:
    mask = torch.sigmoid(mask_logit)
    return (1 - mask) * x + mask * torch.sigmoid(pattern_logit)


def divergence_stamp(model: nn.Module, variant: nn.Module, x: Tensor, settings: CheckSettings) -> tuple[Tensor, Tensor]:
    """(mask logits, pattern logits) of a universal stamp that makes ``variant`` leave the float model's answer."""
    gen = torch.Generator().manual_seed(settings.seed)
    _, c, h, w = x.shape
    mask_logit = torch.full((1, 1, h, w), -3.0).requires_grad_()
    pattern_logit = (torch.randn(1, c, h, w, generator=gen) * 0.1).requires_grad_()
    opt = torch.optim.Adam([mask_logit, pattern_logit], lr=0.1)
    model, variant = model.eval(), variant.eval()
    params = list(model.parameters()) + list(variant.parameters())
    wanted = [p.requires_grad for p in params]
    for p in params:  # only the stamp learns; the flags are restored after, so the caller's model stays trainable
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            labels = predict(model, x)
        for _ in range(settings.search_steps):
            idx = torch.randint(len(x), (min(128, len(x)),), generator=gen)
            stamped = _stamp(x[idx], mask_logit, pattern_logit)
            keep = F.cross_entropy(model(stamped), labels[idx])
            p_same = F.softmax(variant(stamped), 1).gather(1, labels[idx, None]).squeeze(1)
            leave = -torch.log1p(-p_same.clamp(max=1 - 1e-6)).mean()
            loss = keep + leave + settings.mask_cost * torch.sigmoid(mask_logit).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p, flag in zip(params, wanted, strict=True):
            p.requires_grad_(flag)
    return mask_logit.detach(), pattern_logit.detach()


def _confident(model: nn.Module, x: Tensor, settings: CheckSettings) -> tuple[Tensor, Tensor]:
    """(float predictions, mask of the images whose top softmax reaches ``settings.confident``; all if none do)."""
    labels, top = predict_confident(model, x)
    sure = top >= settings.confident
    return labels, sure if bool(sure.any()) else torch.ones_like(sure)


def _behaviour(model: nn.Module, name: str, test: ImageSet, float_clean: Tensor, triggered: ImageSet | None,
               predictions: Tensor | None = None) -> dict[str, Any]:
    row = evaluate(model, test, triggered, reference=float_clean, predictions=predictions)
    row.pop("per_class_asr", None)
    row.pop("asr_images", None)
    return {"deployment": name, **row}


def check_variant(
    model: nn.Module, deployment: Deployment, test: ImageSet, search: ImageSet, float_row: dict[str, Any],
    settings: CheckSettings = CheckSettings(), triggered: ImageSet | None = None, calibration: Tensor | None = None,
    float_confident: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    """One row of the deploy-check table: ``deployment`` applied to ``model``, measured against the float model.

    ``float_confident`` is ``_confident`` of the float model on ``test`` when the caller has it (``deploy_check``
    computes it once for every deployment)."""
    deployed = deployment(model, calibration)
    float_clean, sure = _confident(model, test.x, settings) if float_confident is None else float_confident
    deployed_clean = predict(deployed, test.x)
    row = _behaviour(deployed, deployment.name, test, float_clean, triggered, deployed_clean)
    row["confident_share"] = float(sure.float().mean())
    row["confident_disagreement"] = 1.0 - accuracy(deployed_clean[sure], float_clean[sure])
    surrogate = deployment.stand_in(model, deployed)
    row["divergence"] = row["confident_divergence"] = 0.0
    if surrogate is not None and settings.search_steps > 0:
        mask, pattern = divergence_stamp(model, surrogate, search.x, settings)
        with torch.no_grad():
            stamped = _stamp(test.x, mask, pattern)
        float_stamped, sure_stamped = _confident(model, stamped, settings)
        deployed_stamped = predict(deployed, stamped)
        row["divergence"] = 1.0 - accuracy(deployed_stamped, float_stamped)
        row["confident_divergence"] = 1.0 - accuracy(deployed_stamped[sure_stamped], float_stamped[sure_stamped])
        row["stamp_mask_area"] = float(torch.sigmoid(mask).sum())
    reasons = []
    if row["confident_disagreement"] > settings.max_disagreement:
        reasons.append(f"disagrees with float on {100 * row['confident_disagreement']:.1f}% of the clean images "
                       "float is confident on")
    if row["confident_divergence"] > settings.max_divergence:
        reasons.append(f"a universal stamp splits it from float on {100 * row['confident_divergence']:.1f}% of the "
                       "stamped images float is confident on")
    asr, float_asr = row.get("attack_success_rate"), float_row.get("attack_success_rate")
    if asr is not None and float_asr is not None and asr - float_asr > settings.max_asr_gain:
        reasons.append(f"ASR {100 * asr:.1f}% vs float {100 * float_asr:.1f}%")
    row["flagged"] = bool(reasons)
    row["reasons"] = reasons
    return row


def model_scan(model: nn.Module, clean: ImageSet, scanner: NeuralCleanse) -> dict[str, Any]:
    """Neural Cleanse on one model: flagged classes, anomaly indices and reversed-trigger sizes per class."""
    verdict = scanner.scan(model, clean)
    flagged = [] if verdict.flagged is None else [int(c) for c in verdict.flagged]
    return {"flagged_classes": flagged, "anomaly_index": verdict.details["anomaly_index"],
            "mask_l1": verdict.details["mask_l1"], "classes": verdict.details["classes"]}


def scan_variant(model: nn.Module, deployment: Deployment, row: dict[str, Any], clean: ImageSet,
                 scanner: NeuralCleanse, float_scan: dict[str, Any], calibration: Tensor | None = None) -> None:
    """Add the model scanner's verdict on ``deployment``'s variant to ``row``; flag classes float's scan did not.

    Int8 kernels have no gradient, so the scan runs on the variant's differentiable stand-in; a variant whose
    stand-in is the float model itself (fp16) shares float's scan.
    """
    surrogate = deployment.stand_in(model, deployment(model, calibration))
    row["scan"] = float_scan if surrogate is None else model_scan(surrogate, clean, scanner)
    new = sorted(set(row["scan"]["flagged_classes"]) - set(float_scan["flagged_classes"]))
    if new:
        row["reasons"].append(f"model scanner flags class(es) {new} that the float model's scan does not")
        row["flagged"] = True


def deploy_check(
    model: nn.Module, deployments: list[Deployment], test: ImageSet, search: ImageSet,
    settings: CheckSettings = CheckSettings(), trigger: Trigger | None = None, target: int | None = None,
    scanner: NeuralCleanse | None = None, calibration: Tensor | None = None,
    weights: WeightCheckSettings | None = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """The float row and one row per deployment; ``flagged`` lists the variants that depart from the float model.

    With ``weights`` (the default) ``weights`` in the result is the weight check of the float model on ``test``'s
    images; its own ``flagged`` is separate from the variants'.

    ``search`` holds the images the divergence stamp is optimised on (keep them apart from ``test``); with a
    ``scanner`` the float model and every variant are also scanned on them (Neural Cleanse), so a backdoor that
    only the deployed model carries shows up as a class flagged on the variant and not on the float model.
    """
    triggered = None
    if trigger is not None and target is not None:
        check_target(target, test.num_classes, "deploy-check")
        triggered = stamped(test, trigger, AllToOne(target))
    model = model.eval()
    float_confident = _confident(model, test.x, settings)
    float_clean = float_confident[0]
    float_row = _behaviour(model, "float", test, float_clean, triggered, float_clean)
    rows = [check_variant(model, d, test, search, float_row, settings, triggered, calibration, float_confident)
            for d in deployments]
    if scanner is not None:
        float_row["scan"] = model_scan(model, search, scanner)
        for deployment, row in zip(deployments, rows, strict=True):
            scan_variant(model, deployment, row, search, scanner, float_row["scan"], calibration)
    result = {"float": float_row, "variants": rows, "flagged": [r["deployment"] for r in rows if r["flagged"]]}
    if weights is not None:
        result["weights"] = weight_check(model, test.x, weights)
    return result
