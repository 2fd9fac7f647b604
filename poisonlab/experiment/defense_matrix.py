"""Every defense against every attack: detection P/R/F1/AUROC, CA/ASR after mitigation, run time.

For each attack a model is trained on the poisoned set and every defense is applied to it: the data
scanners (scored against the attack's ground truth, then ``retrain`` without what they flagged), STRIP
(detection of triggered test inputs at a false-rejection rate fixed on clean data), Neural Cleanse
(flagged classes, anomaly index) and the mitigations fine-pruning and unlearning (CA and ASR after).
A clean reference model gets the same scanners, so their false alarms sit beside their detections.
An attack that cannot poison this dataset is reported with its reason, not hidden.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poisonlab.core import ImageSet, Poisoned, PoisonlabError
from poisonlab.data import DATASETS, load_dataset
from poisonlab.defenses import DATA_SCANNERS, DEFENSES, FinePruning, NeuralCleanse, Retrain, Strip, Unlearning
from poisonlab.defenses.scoring import detection_metrics
from poisonlab.defenses.subjects import clean_reserve
from poisonlab.experiment.config import resolve_attack
from poisonlab.experiment.rundir import finish_run
from poisonlab.metrics import ASR_DEFINITION, accuracy, evaluate
from poisonlab.models import MODELS, build_model
from poisonlab.training import Recipe, predict, train

DEFAULT_ATTACKS: tuple[dict[str, Any], ...] = (
    {"name": "badnets", "rate": 0.01},
    {"name": "badnets", "rate": 0.1},
    {"name": "badnets", "mode": "all-to-all", "rate": 0.1},
)
"""BadNets all-to-one at 1% and 10% (the issue's setting) and all-to-all; configs name any registered attack."""


@dataclass(frozen=True)
class MatrixConfig:
    """The data, the victim recipe, the attacks (tables like a config's [attack]) and the defender's budget."""

    dataset: str = "mnist"
    attacks: tuple[dict[str, Any], ...] = DEFAULT_ATTACKS
    model: str = "badnets-cnn"
    epochs: int = 2
    batch_size: int = 128
    lr: float = 3e-3
    train_size: int | None = None
    reserve: int = 3000
    strip_frr: float = 0.01
    clean_reference: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Fail on an unknown dataset, model or attack, or a bad value, before anything is trained."""
        DATASETS.get(self.dataset.partition(":")[0])
        MODELS.get(self.model)
        if not self.attacks:
            raise PoisonlabError("attacks: expected at least one attack table (name = ..., its parameters)")
        for i, raw in enumerate(self.attacks):
            try:
                resolve_attack(dict(raw))
            except PoisonlabError as e:
                raise PoisonlabError(f"attacks[{i}]: {e}") from None
        if self.train_size is not None and self.train_size < 1:
            raise PoisonlabError(f"train_size {self.train_size}: expected >= 1 (or leave it out for all)")
        if self.reserve < NeuralCleanse().batch_size:
            raise PoisonlabError(f"reserve {self.reserve}: expected at least {NeuralCleanse().batch_size} clean images "
                                 "(Neural Cleanse optimises on batches of that size)")
        if not 0 < self.strip_frr < 1:
            raise PoisonlabError(f"strip_frr {self.strip_frr}: expected a false-rejection rate in (0, 1)")
        self.recipe()

    def recipe(self) -> Recipe:
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)


def attack_label(raw: Mapping[str, Any]) -> str:
    """An attack table as one label: ``badnets mode=all-to-all rate=0.1``."""
    return " ".join([str(raw["name"]), *(f"{k}={v}" for k, v in sorted(raw.items()) if k != "name")])


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _scanner_rows(model: nn.Module, data: ImageSet, truth: torch.Tensor) -> list[dict[str, Any]]:
    rows = []
    for name in DATA_SCANNERS:
        verdict, seconds = _timed(functools.partial(DEFENSES.get(name)().scan, model, data))
        rows.append({"defense": name, "seconds": seconds, "_verdict": verdict,
                     **detection_metrics(verdict, truth, len(data))})
    return rows


def defend_one(poisoned: Poisoned, train_set: ImageSet, test: ImageSet, cfg: MatrixConfig, label: str = "",
               progress: bool = False) -> list[dict[str, Any]]:
    """The matrix rows for one poisoned training set: a model trained on it, then every defense."""
    model = train(build_model(cfg.model, poisoned.data, cfg.seed), poisoned.data, cfg.recipe(), cfg.seed,
                  progress=progress, description=f"model on poisoned data ({label})")
    base = evaluate(model, test, poisoned)
    reserve = clean_reserve(train_set, poisoned.indices, cfg.reserve, cfg.seed)
    rows: list[dict[str, Any]] = [{"defense": "none", "ca": base["clean_accuracy"],
                                   "asr": base["attack_success_rate"]}]
    for row in _scanner_rows(model, poisoned.data, poisoned.indices):
        verdict = row.pop("_verdict")
        repaired, more = _timed(functools.partial(Retrain(cfg.model, cfg.recipe(), cfg.seed).repair, poisoned.data,
                                                  verdict))
        after = evaluate(repaired.model, test, poisoned)
        rows.append({**row, "mitigation": "retrain", "seconds": row["seconds"] + more,
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
    rows.append({"defense": "neural-cleanse", "seconds": seconds, "flagged_classes": scan.flagged.tolist(),
                 "max_anomaly_index": max(scan.details["anomaly_index"])})
    for name, fix in (("fine-pruning", lambda: FinePruning(seed=cfg.seed).repair(model, reserve)),
                      ("unlearning", lambda: Unlearning(seed=cfg.seed).repair(model, reserve, scan))):
        repaired, seconds = _timed(fix)
        after = evaluate(repaired.model, test, poisoned)
        rows.append({"defense": name, "seconds": seconds, "ca": after["clean_accuracy"],
                     "asr": after["attack_success_rate"]})
    return rows


def clean_rows(train_set: ImageSet, test: ImageSet, cfg: MatrixConfig, progress: bool = False) -> list[dict[str, Any]]:
    """False alarms: the data scanners and Neural Cleanse on a model trained on the clean set."""
    model = train(build_model(cfg.model, train_set, cfg.seed), train_set, cfg.recipe(), cfg.seed,
                  progress=progress, description="clean reference model")
    none = torch.empty(0, dtype=torch.long)
    rows: list[dict[str, Any]] = [{"defense": "none", "ca": accuracy(predict(model, test.x), test.y)}]
    for row in _scanner_rows(model, train_set, none):
        row.pop("_verdict")
        rows.append({k: v for k, v in row.items() if k in ("defense", "seconds", "flagged")})
    scan, seconds = _timed(lambda: NeuralCleanse().scan(model, clean_reserve(train_set, none, cfg.reserve, cfg.seed)))
    rows.append({"defense": "neural-cleanse", "seconds": seconds, "flagged_classes": scan.flagged.tolist(),
                 "max_anomaly_index": max(scan.details["anomaly_index"])})
    return rows


def run_defense_matrix(cfg: MatrixConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Every defense against every configured attack (and a clean reference); write report.json to ``out``."""
    cfg.validate()
    t0 = time.perf_counter()
    train_set, test = load_dataset(cfg.dataset, cfg.seed)
    if cfg.train_size is not None and cfg.train_size < len(train_set):
        pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.train_size]
        train_set = train_set.subset(pick.sort().values)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if cfg.clean_reference:
        results["clean (no attack)"] = clean_rows(train_set, test, cfg, progress)
    for raw in cfg.attacks:
        label = attack_label(raw)
        try:
            poisoned = resolve_attack(dict(raw)).build().poison(train_set, torch.Generator().manual_seed(cfg.seed))
            results[label] = defend_one(poisoned, train_set, test, cfg, label, progress)
        except PoisonlabError as e:
            errors[label] = str(e)
    metrics = {"results": results, "errors": errors, "train_size": len(train_set), "reserve": cfg.reserve,
               "asr_definition": ASR_DEFINITION}
    return finish_run(out, "defense-matrix", cfg, metrics, {"total_seconds": time.perf_counter() - t0}, [])

MATRIX_COLUMNS = ("attack", "defense", "P", "R", "F1", "AUROC", "flagged", "CA", "ASR", "other", "seconds")


def matrix_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """The matrix as text cells under ``MATRIX_COLUMNS``, for the terminal table and the HTML report alike."""

    def f(v: Any) -> str:
        return "" if v is None else f"{v:.3f}"

    out = []
    for attack, rows in metrics["results"].items():
        for r in rows:
            other = ""
            if r["defense"] == "strip":
                other = f"detects {r['detection_of_triggered']:.3f} at FRR {r['false_rejection']:.3f}"
            elif r["defense"] == "neural-cleanse":
                other = f"flags {r['flagged_classes']}, anomaly index max {r['max_anomaly_index']:.2f}"
            elif r.get("mitigation"):
                other = f"then {r['mitigation']}"
            out.append([attack, r["defense"], f(r.get("precision")), f(r.get("recall")), f(r.get("f1")),
                        f(r.get("auroc")), str(r.get("flagged", "")), f(r.get("ca")), f(r.get("asr")), other,
                        f"{r['seconds']:.1f}" if "seconds" in r else ""])
    for attack, err in metrics["errors"].items():
        out.append([attack, "-", "", "", "", "", "", "", "", f"not run: {err}", ""])
    return out
