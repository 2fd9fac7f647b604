"""Apply defenses to a model and score them, one way for every caller, with one set of metric names.

The defender holds a small set of clean images (``DefenderData.clean``) and results are scored on
images it never saw (``held``, and ``held_triggered``, the same images stamped with the attack's trigger):

- ``test-half``: the defender holds the first half of the test set; scored on the second half;
- ``reserve:N``: the defender holds N unpoisoned training images (``reserve``: 3,000, or all when fewer); scored on
  the whole test set.

Results per defense kind: data scanners precision / recall / F1 / AUROC / flagged against the
attack's ground truth; input filters ``detection_rate`` (triggered inputs rejected) and
``false_rejection_rate`` (clean inputs rejected); model scanners the flagged classes, the largest
anomaly index and whether the attack's target was flagged; mitigations CA and ASR before and after.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from poisonlab.core import Evidence, ImageSet, PoisonlabError, Verdict
from poisonlab.defenses.scoring import as_mask, detection_metrics
from poisonlab.metrics import evaluate
from poisonlab.registry import DEFENSES, parse_spec

DEFAULT_RESERVE = 3000


@dataclass(frozen=True)
class DefenderData:
    """The defender's clean images, the images results are scored on, and those stamped with the trigger."""

    clean: ImageSet
    held: ImageSet
    held_triggered: ImageSet | None
    scheme: str


def clean_reserve(train: ImageSet, poisoned_indices: Tensor, size: int | None, seed: int) -> ImageSet:
    """``size`` unpoisoned training images: the small clean set that fine-pruning, unlearning and NC assume.

    ``None`` takes ``DEFAULT_RESERVE`` of them, or all when fewer; an explicit size beyond them is refused.
    """
    ok = torch.ones(len(train), dtype=torch.bool)
    ok[poisoned_indices] = False
    pool = torch.nonzero(ok).flatten()
    if size is None:
        size = min(DEFAULT_RESERVE, len(pool))
    if size > len(pool):
        raise PoisonlabError(f"defender reserve {size}: more than the {len(pool)} unpoisoned training images; "
                             "expected at most that many")
    pick = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 7))[:size]]
    return train.subset(pick)


def check_scheme(scheme: str) -> None:
    """Refuse a defender scheme other than ``test-half``, ``reserve`` or ``reserve:N`` in one line."""
    if scheme == "test-half":
        return
    name, _, size = scheme.partition(":")
    if name == "reserve" and (not size or (size.isdigit() and int(size) >= 1)):
        return
    raise PoisonlabError(f"defender data {scheme!r}: expected test-half or reserve:N (N clean training images)")


def defender_data(scheme: str, train: ImageSet, poisoned_indices: Tensor, test: ImageSet,
                  triggered: ImageSet | None, seed: int) -> DefenderData:
    """The defender's clean images and the scoring images under ``scheme`` (see the module docstring)."""
    check_scheme(scheme)
    if scheme != "test-half":
        size = scheme.partition(":")[2]
        return DefenderData(clean_reserve(train, poisoned_indices, int(size) if size else None, seed), test,
                            triggered, scheme)
    half = len(test) // 2
    later = None if triggered is None else triggered.subset(slice(half, None))
    return DefenderData(test.subset(slice(0, half)), test.subset(slice(half, None)), later, scheme)


def check_defenses(specs: Sequence[str]) -> None:
    """Refuse, before any work, an unknown defense, a bad parameter, a repeat, or a retrain with no scanner first."""
    earlier: set[str] = set()
    for i, spec in enumerate(specs):
        try:
            defense = DEFENSES.build(spec)
        except PoisonlabError as e:
            raise PoisonlabError(f"defenses[{i}]: {e}") from None
        if spec in specs[:i]:
            raise PoisonlabError(f"defenses[{i}]: {spec!r} is listed twice")
        name = parse_spec(spec, "defense")[0]
        need = defense.requires() if defense.kind == "mitigation" else None
        if need is not None and need not in earlier:
            raise PoisonlabError(f"defenses[{i}]: {name} works on what {need} found; list one before it")
        earlier |= {name, defense.kind}


def _scores(result: dict[str, Any]) -> dict[str, Any]:
    return {"ca": result["clean_accuracy"], "asr": result.get("attack_success_rate")}


def apply_defenses(specs: Sequence[str], model: nn.Module, data: ImageSet, truth: Tensor | None,
                   defender: DefenderData | None, refit: Callable[[ImageSet], nn.Module] | None = None,
                   target: int | None = None, seed: int = 0, repaired: dict[str, nn.Module] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """Every defense in ``specs`` applied to ``model`` (trained on ``data``), in order; results by spec.

    ``truth`` holds the indices of the poisoned samples in ``data`` (None: unknown). Defenses are built
    with ``seed`` where they take one; a mitigation sees the verdicts of the scanners before it. Data
    scanners need no ``defender`` data; every other kind does. ``repaired`` (when given) receives each
    mitigation's repaired model by spec.
    """
    check_defenses(specs)
    data_scans: dict[str, Verdict] = {}
    model_scans: dict[str, Verdict] = {}
    before: dict[str, Any] | None = None
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        defense = DEFENSES.build(spec, seed=seed)
        name = parse_spec(spec, "defense")[0]
        t = time.perf_counter()
        result: dict[str, Any]
        if defense.kind == "data-scanner":
            verdict = data_scans[name] = defense.scan(model, data)
            truth_index = truth if truth is not None else torch.empty(0, dtype=torch.long)
            result = dict(detection_metrics(verdict, truth_index, len(data)))
        elif defender is None:
            raise PoisonlabError(f"defense {spec!r}: needs the defender's clean data")
        elif defense.kind == "input-filter":
            fitted = defense.fit(model, defender.clean)
            result = {}
            if defender.held_triggered is not None:
                eligible = defender.held_triggered.y != defender.held.y
                rejected = as_mask(fitted.detect(model, defender.held_triggered.x[eligible]).flagged,
                                   int(eligible.sum()))
                result["detection_rate"] = int(rejected.sum()) / max(len(rejected), 1)
            clean = as_mask(fitted.detect(model, defender.held.x).flagged, len(defender.held))
            result["false_rejection_rate"] = int(clean.sum()) / max(len(clean), 1)
        elif defense.kind == "model-scanner":
            verdict = model_scans[name] = defense.scan(model, defender.clean)
            flagged = [] if verdict.flagged is None else [int(c) for c in verdict.flagged]
            result = {"flagged_classes": flagged, "flagged_count": len(flagged)}
            if "anomaly_index" in verdict.details:
                result["max_anomaly_index"] = max(verdict.details["anomaly_index"])
            if target is not None:
                result["target_flagged"] = float(target in flagged)
        else:
            evidence = Evidence(defender.clean, data, dict(data_scans), dict(model_scans), refit)
            fixed = defense.repair(model, evidence)
            assert fixed.model is not None
            if repaired is not None:
                repaired[spec] = fixed.model
            if before is None:
                before = _scores(evaluate(model, defender.held, defender.held_triggered))
            after = _scores(evaluate(fixed.model, defender.held, defender.held_triggered))
            result = {"ca_before": before["ca"], "asr_before": before["asr"], "ca_after": after["ca"],
                      "asr_after": after["asr"],
                      **{k: v for k, v in fixed.details.items() if isinstance(v, int | float | str)}}
        result["seconds"] = time.perf_counter() - t
        results[spec] = result
    return results
