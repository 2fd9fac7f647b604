"""Every defense against every available attack: detection P/R/F1/AUROC, CA/ASR after mitigation, run time.

Attacks are taken from the ``ATTACKS`` registry (each one built with its defaults unless the
caller passes ready ones); for each, a model is trained on the poisoned set and every defense is
applied to it. Attacks that fail to build or poison on the dataset are reported, not hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from poisonlab.attacks import ATTACKS
from poisonlab.core import DataAttack, ImageSet, PoisonlabError
from poisonlab.defenses import DATA_SCANNERS, DEFENSES, FinePruning, NeuralCleanse, Retrain, Strip, Unlearning
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.defenses.subjects import clean_reserve
from poisonlab.metrics import evaluate
from poisonlab.models import build_model
from poisonlab.training import Recipe, train


@dataclass(frozen=True)
class MatrixConfig:
    """The shared setting of the matrix."""

    model: str = "badnets-cnn"
    recipe: Recipe = Recipe()
    reserve: int = 3000
    strip_frr: float = 0.01
    seed: int = 0


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def defend_one(train_set: ImageSet, test: ImageSet, attack: DataAttack, cfg: MatrixConfig,
               progress: bool = False) -> list[dict[str, Any]]:
    """Rows of the matrix for one attack: one per defense."""
    poisoned = attack.poison(train_set, torch.Generator().manual_seed(cfg.seed))
    model = train(build_model(cfg.model, poisoned.data, cfg.seed), poisoned.data, cfg.recipe, cfg.seed,
                  progress=progress, description="model on poisoned data")
    base = evaluate(model, test, poisoned)
    reserve = clean_reserve(train_set, poisoned.indices, cfg.reserve, cfg.seed)
    rows: list[dict[str, Any]] = [{"defense": "none", "ca": base["clean_accuracy"], "asr": base["attack_success_rate"]}]
    n = len(poisoned.data)
    for name in DATA_SCANNERS:
        verdict, seconds = _timed(lambda name=name: DEFENSES.get(name)().scan(model, poisoned.data))
        row = {"defense": name, "seconds": seconds, **detection_metrics(verdict, poisoned.indices, n)}
        repaired, more = _timed(lambda verdict=verdict: Retrain(cfg.model, cfg.recipe, cfg.seed)
                                .repair(poisoned.data, verdict))
        after = evaluate(repaired.model, test, poisoned)
        rows.append({**row, "mitigation": "retrain", "mitigation_seconds": more,
                     "ca": after["clean_accuracy"], "asr": after["attack_success_rate"]})
    triggered = poisoned.triggered(test)
    eligible = triggered.y != test.y
    strip, seconds = _timed(lambda: Strip(frr=cfg.strip_frr).fit(model, reserve))
    bad, more = _timed(lambda: strip.detect(model, triggered.x[eligible]))
    good = strip.detect(model, test.x)
    rows.append({"defense": "strip", "seconds": seconds + more,
                 "detection_of_triggered": len(bad.flagged) / max(int(eligible.sum()), 1),
                 "false_rejection": len(good.flagged) / len(test)})
    scan, seconds = _timed(lambda: NeuralCleanse().scan(model, reserve))
    rows.append({"defense": "neural-cleanse", "seconds": seconds,
                 "flagged_classes": scan.flagged.tolist(),
                 "anomaly_index": [round(a, 2) for a in scan.details["anomaly_index"]]})
    for name, fix in (("fine-pruning", lambda: FinePruning(seed=cfg.seed).repair(model, reserve)),
                      ("unlearning", lambda: Unlearning(seed=cfg.seed).repair(model, reserve, scan))):
        repaired, seconds = _timed(fix)
        after = evaluate(repaired.model, test, poisoned)
        rows.append({"defense": name, "seconds": seconds, "ca": after["clean_accuracy"],
                     "asr": after["attack_success_rate"]})
    return rows


def defense_matrix(train_set: ImageSet, test: ImageSet, attacks: dict[str, DataAttack] | None = None,
                   cfg: MatrixConfig = MatrixConfig(), progress: bool = True) -> dict[str, Any]:
    """The full matrix: {attack: rows} plus {attack: error} for attacks that could not run on this data."""
    if attacks is None:
        attacks = {}
        for name in ATTACKS.names():
            try:
                attacks[name] = ATTACKS.get(name)()
            except (PoisonlabError, TypeError) as e:
                attacks[name] = e  # type: ignore[assignment]
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, attack in attacks.items():
        if isinstance(attack, Exception):
            errors[name] = f"cannot build with defaults: {attack}"
            continue
        try:
            results[name] = defend_one(train_set, test, attack, cfg, progress)
        except PoisonlabError as e:
            errors[name] = str(e)
    return {"results": results, "errors": errors}


def matrix_table(matrix: dict[str, Any]) -> Table:
    """One row per (attack, defense)."""
    table = Table(title="defense matrix")
    for col in ("attack", "defense", "P", "R", "F1", "AUROC", "CA after", "ASR after", "other", "seconds"):
        table.add_column(col, justify="left" if col in ("attack", "defense", "other") else "right")

    def f(v: Any) -> str:
        return "" if v is None else f"{v:.3f}"

    for attack, rows in matrix["results"].items():
        for r in rows:
            other = ""
            if r["defense"] == "strip":
                other = f"detects {r['detection_of_triggered']:.3f} at FRR {r['false_rejection']:.3f}"
            elif r["defense"] == "neural-cleanse":
                other = f"flags {r['flagged_classes']}, AI max {max(r['anomaly_index']):.1f}"
            table.add_row(attack, r["defense"], f(r.get("precision")), f(r.get("recall")), f(r.get("f1")),
                          f(r.get("auroc")), f(r.get("ca")), f(r.get("asr")), other, f(r.get("seconds")))
    for attack, err in matrix["errors"].items():
        table.add_row(attack, "-", "", "", "", "", "", "", f"not run: {err}", "")
    return table


def print_matrix(matrix: dict[str, Any]) -> None:
    Console().print(matrix_table(matrix))
