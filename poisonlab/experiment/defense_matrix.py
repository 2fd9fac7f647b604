"""Every defense against every attack: detection P/R/F1/AUROC, CA/ASR after mitigation, run time.

For each attack the shared victim is trained on the poisoned set and every defense is applied to it
(``poisonlab.defenses.apply``, the defender holding ``reserve`` clean training images): the data scanners
(scored against the attack's ground truth, each followed by retraining without what it flagged), STRIP
(detection of triggered test inputs at a false-rejection rate fixed on clean data), Neural Cleanse (flagged
classes, anomaly index) and the mitigations fine-pruning and unlearning (CA and ASR after). A clean reference
model gets the scanners too, so their false alarms sit beside their detections. An attack that cannot run on
this dataset is reported with its reason, not hidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from poisonlab.core import PoisonlabError, require
from poisonlab.defenses.apply import apply_defenses, defender_data
from poisonlab.defenses.neural_cleanse import NeuralCleanse
from poisonlab.experiment.config import AttackConfig, helped
from poisonlab.experiment.run import Experiment, Result, Run, register
from poisonlab.experiment.victim import Victim, fit, load_data
from poisonlab.metrics import ASR_DEFINITION, evaluate
from poisonlab.report.tables import matrix_tables

DEFAULT_ATTACKS: tuple[dict[str, Any], ...] = (
    {"name": "badnets", "rate": 0.01},
    {"name": "badnets", "rate": 0.1},
    {"name": "badnets", "mode": "all-to-all", "rate": 0.1},
)
"""BadNets all-to-one at 1% and 10% and all-to-all at 10%; configs name any registered data attack."""


def defense_list(strip_frr: float) -> list[str]:
    return ["spectral", "retrain:scanner=spectral", "activation-clustering", "retrain:scanner=activation-clustering",
            f"strip:frr={strip_frr}", "neural-cleanse", "fine-pruning", "unlearning"]


@dataclass(frozen=True)
class MatrixConfig(Victim):
    """The victim, the attacks (tables like a config's [attack]) and the defender's budget."""

    attacks: tuple[dict[str, Any], ...] = helped(DEFAULT_ATTACKS, "attack tables, like a config's [attack]")
    reserve: int = helped(3000, "clean training images the defender holds")
    strip_frr: float = helped(0.01, "STRIP's false-rejection rate on clean inputs")
    clean_reference: bool = helped(True, "also scan a clean model (false alarms)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.attacks) > 0, "attacks", [], "at least one attack table (name = ..., its parameters)")
        for i, raw in enumerate(self.attacks):
            AttackConfig.resolve(dict(raw), f"attacks[{i}]")
        batch = NeuralCleanse().batch_size
        require(self.reserve >= batch, "reserve", self.reserve,
                f"at least {batch} clean images (Neural Cleanse optimises on batches of that size)")
        require(0 < self.strip_frr < 1, "strip_frr", self.strip_frr, "a false-rejection rate in (0, 1)")


def attack_label(raw: Mapping[str, Any]) -> str:
    """An attack table as one label: ``badnets mode=all-to-all rate=0.1``."""
    return " ".join([str(raw["name"]), *(f"{k}={v}" for k, v in sorted(raw.items()) if k != "name")])


def run_defense_matrix(cfg: MatrixConfig, run: Run) -> Result:
    """Every defense against every configured attack (and a clean reference)."""
    train_set, test = load_data(cfg)
    scheme = f"reserve:{cfg.reserve}"
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if cfg.clean_reference:
        clean = fit(cfg, train_set, "clean reference model", run.progress)
        none = torch.empty(0, dtype=torch.long)
        defender = defender_data(scheme, train_set, none, test, None, cfg.seed)
        results["clean (no attack)"] = {
            "none": {"ca": evaluate(clean, test)["clean_accuracy"]},
            **apply_defenses(["spectral", "activation-clustering", "neural-cleanse"], clean, train_set, none,
                             defender, seed=cfg.seed)}
    for raw in cfg.attacks:
        label = attack_label(raw)
        try:
            attack = AttackConfig.resolve(dict(raw)).build()
            poisoned = attack.poison(train_set, torch.Generator().manual_seed(cfg.seed))
            model = fit(cfg, poisoned.data, f"model on poisoned data ({label})", run.progress)
            triggered = poisoned.triggered(test)
            base = evaluate(model, test, triggered)
            defender = defender_data(scheme, poisoned.data, poisoned.indices, test, triggered, cfg.seed)
            results[label] = {
                "none": {"ca": base["clean_accuracy"], "asr": base["attack_success_rate"]},
                **apply_defenses(defense_list(cfg.strip_frr), model, poisoned.data, poisoned.indices, defender,
                                 refit=lambda data: fit(cfg, data, "retraining", run.progress), target=poisoned.target,
                                 seed=cfg.seed)}
        except PoisonlabError as e:
            errors[label] = str(e)
    metrics = {"results": results, "errors": errors, "train_size": len(train_set), "reserve": cfg.reserve,
               "asr_definition": ASR_DEFINITION}
    return Result(metrics)


register("defense-matrix", "every defense against every configured attack, with false alarms",
         Experiment(MatrixConfig, run_defense_matrix, matrix_tables))
