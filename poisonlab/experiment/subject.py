"""What a user points a scanner or deploy-check at: a run folder, or their own dataset plus their own model.

Either way the result is the model, every training row it was trained on (with the dataset's own row
number and, for a folder, file of each), the held-out rows, and the known poison when the run planted it.
A run folder never imports code by itself: a model built by ``package.module:factory`` needs the same
``--model`` from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from poisonlab.core import PoisonlabError, Samples
from poisonlab.experiment.config import read_toml
from poisonlab.experiment.run import CONFIG_FILE, Resolved, load
from poisonlab.experiment.victim import Rows, Victim, load_rows
from poisonlab.models import load_model, load_run_model, read_weights, trusted_architecture


@dataclass(frozen=True)
class Subject:
    """A model and its training data, ready to vet."""

    model: nn.Module
    architecture: str
    dataset: str
    data: Rows[Samples]
    truth: Tensor | None
    loaded: str

    @property
    def train(self) -> Samples:
        return self.data.train

    @property
    def test(self) -> Samples:
        return self.data.test

    def held_out(self, what: str) -> Samples:
        """The test part, or a one-line error naming ``what`` needs it and how to get one."""
        if not len(self.test):
            raise PoisonlabError(f"{what} needs held-out clean images, and {self.dataset} has no test part; pass "
                                 "--holdout 0.2 (or train with holdout)")
        return self.test


def run_config(run_dir: Path, model: str | None = None) -> Resolved:
    """A run folder's resolved config, refused before anything is imported when it names code ``model`` does not."""
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise PoisonlabError(f"{run_dir}: no such run folder")
    raw = read_toml(path)
    if isinstance(raw.get("model"), str):
        trusted_architecture(run_dir, raw["model"], model)
    return load(path, raw)


def open_subject(run: Path | None, dataset: str | None, weights: Path | None, model: str | None,
                 which: str | None = None, holdout: float | None = None) -> Subject:
    """The subject of ``--run RUN_DIR``, or of ``--dataset SPEC --model SPEC [--weights FILE] [--holdout F]``."""
    if run is not None:
        if holdout is not None:
            raise PoisonlabError(f"--holdout {holdout}: applies to --dataset; the run folder {run} brings its own "
                                 "test images")
        resolved = run_config(run, model)
        if resolved.experiment == "train":
            cfg = resolved.config
            net, name, _ = load_run_model(run, which or "model", model)
            return Subject(net, cfg.model, cfg.dataset, load_rows(cfg, need_test=False, lazy=True), None,
                           str(run / name))
        from poisonlab.experiment.pipeline import open_run  # deferred: the pipeline's stages load only for its runs

        s = open_run(run, model)
        name = which or "backdoored"
        if name not in s.models:
            raise PoisonlabError(f"{run}: no model {name!r}; it holds {', '.join(s.models)}")
        rows = Rows[Samples](s.data.train, s.data.test, s.data.rows.rows, s.data.rows.files, s.data.rows.total)
        return Subject(s.models[name], s.config.model, s.config.dataset, rows, s.data.poisoned.indices,
                       str(run / name))
    if dataset is None or model is None:
        raise PoisonlabError("expected --run RUN_DIR, or --dataset SPEC with --model SPEC (and --weights FILE)")
    state = read_weights(weights) if weights is not None else None  # a bad weights file fails before the data loads
    victim = Victim(dataset=dataset, model=model, holdout=holdout)
    data = load_rows(victim, need_test=False, lazy=True)
    net = load_model(model, data.train.shape, data.train.num_classes, weights, state)
    return Subject(net, model, dataset, data, None, str(weights or model))
