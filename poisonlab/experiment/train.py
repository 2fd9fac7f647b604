"""``train``: a model trained on a dataset as it is, so the scanners and deploy-check can vet the user's own data.

No attack and no reference model: every training row of the dataset (a holdout only when asked) trains
one model with the victim's recipe and seed; the run folder holds it as ``model.safetensors`` beside
``models.json``, and ``scan data --run`` reads the same rows back, reporting the dataset's own row numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from poisonlab.experiment.run import Experiment, Result, Run, Timer, register
from poisonlab.experiment.victim import Victim, fit, load_rows
from poisonlab.metrics import evaluate
from poisonlab.models import save_models
from poisonlab.report.tables import train_tables


@dataclass(frozen=True)
class TrainConfig(Victim):
    """A victim alone: what to train, on which data, with which recipe and seed."""


def run_train(cfg: TrainConfig, run: Run) -> Result:
    """Train on every training row; accuracy on the training rows and, when there is one, the test part."""
    timer = Timer()
    with timer("data"):
        data = load_rows(cfg, need_test=False, lazy=True)
    with timer("train"):
        model = fit(cfg, data.train, "model", run.progress)
    with timer("evaluate"):
        metrics = {"train_size": len(data.train), "test_size": len(data.test),
                   "train_accuracy": evaluate(model, data.train)["clean_accuracy"],
                   "test_accuracy": evaluate(model, data.test)["clean_accuracy"] if len(data.test) else None}
    return Result(metrics, save_models(run.out, cfg.model, data.train, {"model": model}), dict(timer))


register("train", "train a model on a dataset as it is (your npz or folder), for scan and deploy-check to vet",
         Experiment(TrainConfig, run_train, train_tables))
