"""The attack pipeline of DESIGN.md, one runner over in-memory state, and its presets.

source -> poison -> preprocess -> train (a clean reference and the attacked model, with the same recipe
and seed) -> deploy -> evaluate -> defend -> report. The data are poisoned once, each model is trained
once, each deployed variant is built and evaluated once. A data attack poisons the training set; a
training attack (compression artifacts) trains the attacked model through its declared phases.

Presets: ``badnets`` (BadNets on MNIST, the README's main job) and ``compression-artifact`` (a model
clean in float and backdoored once deployed, measured under every deployment).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from poisonlab.compress import CALIBRATION_IMAGES, DEFAULT_DEPLOYMENTS, calibration_images, parse_deployment
from poisonlab.core import DataAttack, ImageSet, Poisoned, PoisonlabError, TrainingAttack, require
from poisonlab.defenses.apply import apply_defenses, check_defenses, check_scheme, defender_data
from poisonlab.experiment.config import AttackConfig, helped
from poisonlab.experiment.run import PIPELINE, Experiment, Result, Run, Timer, register
from poisonlab.experiment.victim import Rows, Victim, fit, fit_phases, load_rows
from poisonlab.metrics import ASR_DEFINITION, evaluate
from poisonlab.models import load_run_model, read_models, save_models
from poisonlab.report.figures import backdoor_examples, save_figure
from poisonlab.report.store import atomic_write_tensors
from poisonlab.report.tables import pipeline_tables
from poisonlab.scaling.preprocess import Resize, preprocess


@dataclass(frozen=True)
class PipelineConfig(Victim):
    """A victim, an attack, and the stages after training: preprocessing, deployments, defenses."""

    attack: AttackConfig = helped(AttackConfig(), "the attack: [attack] name = ... and its parameters")
    preprocessing: tuple[str, ...] = helped((), "resizes before the model, RESIZER:WIDTHxHEIGHT "
                                                "(opencv-linear:28x28); repeatable")
    deployments: tuple[str, ...] = helped((), "deployed variants measured too: int8-fbgemm, fp16, prune-l1:0.3, ...; "
                                              "repeatable")
    calibration: int = helped(CALIBRATION_IMAGES, "training images that calibrate static int8")
    defenses: tuple[str, ...] = helped((), "defenses applied to the attacked model: spectral, strip, neural-cleanse, "
                                           "fine-pruning, retrain, ...; repeatable")
    defender: str = helped("test-half", "the defender's clean data: test-half, or reserve:N clean training images")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, parse in (("preprocessing", Resize.parse), ("deployments", parse_deployment)):
            for i, spec in enumerate(getattr(self, key)):
                try:
                    parse(spec)
                except PoisonlabError as e:
                    raise PoisonlabError(f"{key}[{i}]: {e}") from None
        require(self.calibration >= 1, "calibration", self.calibration, "at least 1 image")
        check_defenses(self.defenses)
        check_scheme(self.defender)
        attack = self.attack.build()
        if not isinstance(attack, DataAttack | TrainingAttack):
            raise PoisonlabError(f"attack.name: {self.attack.name!r} neither poisons data nor shapes training")

    def deployment_specs(self, attack: object) -> list[str]:
        """The deployments to measure; a training attack's own target first."""
        aimed = attack.deployment if isinstance(attack, TrainingAttack) else None
        return [aimed] + [s for s in self.deployments if s != aimed] if aimed else list(self.deployments)


@dataclass(frozen=True)
class Prepared:
    """The data stages' output: the attack, its poison, and every set as the model sees it (preprocessed)."""

    attack: DataAttack | TrainingAttack
    poisoned: Poisoned
    rows: Rows[ImageSet]
    clean_train: ImageSet
    train: ImageSet
    test: ImageSet
    triggered: ImageSet


def prepare(cfg: PipelineConfig) -> Prepared:
    """source -> poison -> preprocess: the training sets (clean and attacked), the test set and its triggered copy."""
    rows = load_rows(cfg)
    raw_train, raw_test = rows.train, rows.test
    attack = cfg.attack.build()
    if isinstance(attack, TrainingAttack):
        poisoned = attack.backdoor(raw_train)
    else:
        poisoned = attack.poison(raw_train, torch.Generator().manual_seed(cfg.seed))
    return Prepared(attack, poisoned, rows, preprocess(cfg.preprocessing, raw_train),
                    preprocess(cfg.preprocessing, poisoned.data), preprocess(cfg.preprocessing, raw_test),
                    preprocess(cfg.preprocessing, poisoned.triggered(raw_test)))


def run_pipeline(cfg: PipelineConfig, run: Run) -> Result:
    """Every stage of the module docstring into ``run.out``."""
    timer = Timer()
    with timer("data"):
        data = prepare(cfg)
    attack, poisoned, clean_train, train, test, triggered = (data.attack, data.poisoned, data.clean_train, data.train,
                                                             data.test, data.triggered)
    with timer("train_clean"):
        clean = fit(cfg, clean_train, "clean model", run.progress)
    with timer("train_backdoored"):
        if isinstance(attack, TrainingAttack):
            backdoored = fit_phases(cfg, train, attack.phases(), clean, run.progress)
        else:
            backdoored = fit(cfg, train, "backdoored model", run.progress)
    models = {"clean": clean, "backdoored": backdoored}
    with timer("evaluate"):
        metrics: dict[str, Any] = {name: evaluate(m, test, triggered) for name, m in models.items()}
    metrics.update(poisoned_samples=len(poisoned.indices), poisoned_fraction=len(poisoned.indices) / len(clean_train),
                   train_size=len(clean_train), test_size=len(test), asr_definition=ASR_DEFINITION)
    specs = cfg.deployment_specs(attack)
    if specs:
        calibration = calibration_images(clean_train, cfg.seed, cfg.calibration)
        metrics["deployments"] = {}
        for spec in specs:
            with timer(f"deploy_{spec}"):
                deployment = parse_deployment(spec)
                metrics["deployments"][spec] = {name: evaluate(deployment(m, calibration), test, triggered)
                                                for name, m in models.items()}
    if cfg.defenses:
        with timer("defenses"):
            defender = defender_data(cfg.defender, train, poisoned.indices, test, triggered, cfg.seed)
            metrics["defenses"] = apply_defenses(cfg.defenses, backdoored, train, poisoned.indices, defender,
                                                 refit=lambda d: fit(cfg, d, "retraining", run.progress),
                                                 target=poisoned.target, seed=cfg.seed)
    files = save_models(run.out, cfg.model, clean_train, models)
    atomic_write_tensors(run.out / "poisoned_indices.safetensors", {"indices": poisoned.indices})
    title = f"{cfg.attack.name} on {cfg.dataset}: predictions of the clean and the backdoored model"
    save_figure(backdoor_examples(test, triggered, models, title), run.out / "examples.png")
    return Result(metrics, [*files, "poisoned_indices.safetensors", "examples.png"], dict(timer))


PIPELINE_EXPERIMENT = Experiment(PipelineConfig, run_pipeline, pipeline_tables, required=("dataset", "attack"))
register(PIPELINE, "the attack pipeline: any attack, preprocessing, deployments and defenses from a config file",
         PIPELINE_EXPERIMENT)
register("badnets", "BadNets on MNIST: clean vs backdoored model, one recipe and seed (Gu et al. 2017)",
         Experiment(PipelineConfig, run_pipeline, pipeline_tables, {"attack": {"name": "badnets"}}))
register("compression-artifact", "backdoor that appears once quantized or pruned, under every deployment "
         "(Tian et al. 2021)", Experiment(PipelineConfig, run_pipeline, pipeline_tables,
                                          {"attack": {"name": "compression-artifact"},
                                           "deployments": list(DEFAULT_DEPLOYMENTS)}))


@dataclass(frozen=True)
class Finished:
    """A finished pipeline run rebuilt from its folder: config, data (poison re-made and checked), models."""

    config: PipelineConfig
    data: Prepared
    models: dict[str, nn.Module]


def open_run(run_dir: Path, model: str | None = None) -> Finished:
    """Rebuild a pipeline run folder's data (poisoning is deterministic for a seed) and load its models.

    One-line errors for a folder that is not a pipeline run or whose rebuilt poison differs from its
    ``poisoned_indices.safetensors``; ``model`` as in ``subject.run_config``.
    """
    from poisonlab.experiment.subject import run_config  # deferred: subject opens pipeline runs through here

    resolved = run_config(run_dir, model)
    if not isinstance(resolved.config, PipelineConfig):
        raise PoisonlabError(f"{run_dir}: a {resolved.experiment} run; expected a pipeline run folder (run badnets, "
                             "compression-artifact or a config without experiment), whose poisoned data is rebuilt, "
                             "or for scan and deploy-check a `poisonlab train` run")
    data = prepare(resolved.config)
    try:
        saved = load_file(str(run_dir / "poisoned_indices.safetensors"))["indices"]
    except (OSError, SafetensorError, KeyError):
        raise PoisonlabError(f"{run_dir}: no readable poisoned_indices.safetensors") from None
    if not torch.equal(saved, data.poisoned.indices):
        raise PoisonlabError(f"{run_dir}: the rebuilt poison differs from poisoned_indices.safetensors")
    models = {name: load_run_model(run_dir, name, model)[0] for name in read_models(run_dir)["models"]}
    return Finished(resolved.config, data, models)
