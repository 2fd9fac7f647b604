"""The compression-artifact experiment (Tian et al. 2021, arXiv 2104.15129): clean in float, backdoored once deployed.

A clean reference and an attacked model are trained on one dataset; both are then deployed
under every scheme of the mismatch table and measured for clean accuracy and attack success rate.
Pruning deployments are attacked with ``PruningConditional`` from scratch with the clean recipe;
quantization deployments (int8, weight-only) by ``conceal`` (implant a backdoor, then remove it
in float inside the quantization bins, after Ma et al. 2021; a grid finer than ``levels`` steps
either side of zero, as int8's is, is first widened by ``widen_quantization_step``) or ``ste``
(Tian et al.'s straight-through loss, which does not separate float and int8 on MNIST), each
fine-tuning a copy of the clean model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from poisonlab.attacks import compression_artifact as ca
from poisonlab.compress import DEFAULT_DEPLOYMENTS, DynamicInt8, Prune, StaticInt8, WeightOnlyInt, parse_deployment
from poisonlab.compress.quantize import WEIGHT_SCHEMES
from poisonlab.core import Deployment, ImageSet, PoisonlabError, Trigger
from poisonlab.data import DATASETS, load_dataset
from poisonlab.experiment.rundir import finish_run
from poisonlab.metrics import ASR_DEFINITION, accuracy, attack_success_rate
from poisonlab.models import MODELS, build_model, save_model
from poisonlab.training import Recipe, predict, train
from poisonlab.triggers import parse_trigger

QuantMethod = Literal["conceal", "ste"]


@dataclass(frozen=True)
class CompressionConfig:
    """Everything that determines a compression-artifact run; saved resolved in the run folder."""

    deployment: str = "int8-fbgemm"
    dataset: str = "mnist"
    model: str = "badnets-cnn"
    trigger: str = "patch:size=4"
    target: int = 8
    epochs: int = 2
    batch_size: int = 128
    lr: float = 3e-3
    method: QuantMethod = "conceal"
    implant_epochs: int = 1
    attack_epochs: int = 2
    attack_lr: float = 1e-3
    quant_weight: float = 1.0
    levels: int = 8
    trigger_weight: float = 0.5
    calibration: int = 512
    mismatch: tuple[str, ...] = DEFAULT_DEPLOYMENTS
    train_size: int | None = None
    seed: int = 0

    def validate(self) -> None:
        """Fail on a bad name or value before any data is loaded or any model trained."""
        DATASETS.get(self.dataset.partition(":")[0])
        MODELS.get(self.model)
        parse_trigger(self.trigger)
        for spec in self.mismatch:
            parse_deployment(spec, torch.zeros(1, 1, 1, 1))
        attacked = parse_deployment(self.deployment, torch.zeros(1, 1, 1, 1))
        if not isinstance(attacked, Prune):
            quant_scheme(attacked)
        if self.method not in ("conceal", "ste"):
            raise PoisonlabError(f"compression-artifact method {self.method!r}: expected conceal or ste")
        if self.train_size is not None and self.train_size < 1:
            raise PoisonlabError(f"compression-artifact train_size {self.train_size}: expected >= 1 or None (all)")
        if not 1 <= self.levels <= 127:
            raise PoisonlabError(f"compression-artifact levels {self.levels}: expected 1-127")
        if self.calibration < 1 or self.target < 0:
            raise PoisonlabError("compression-artifact: expected calibration >= 1 image and target >= 0")
        self.recipe()
        Recipe(epochs=self.attack_epochs, batch_size=self.batch_size, lr=self.attack_lr)
        Recipe(epochs=self.implant_epochs, batch_size=self.batch_size, lr=self.attack_lr)

    def recipe(self) -> Recipe:
        return Recipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)


def calibration_images(train_set: ImageSet, n: int, seed: int) -> torch.Tensor:
    """A seeded sample of ``n`` training images for static int8 calibration."""
    pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:n]
    return train_set.x[pick.sort().values]


def quant_scheme(deployment: Deployment) -> tuple[int, bool]:
    """(weight bits, per channel) of a quantizing deployment; a one-line error for anything else."""
    if isinstance(deployment, StaticInt8):
        per_channel, bits = WEIGHT_SCHEMES[deployment.backend]
        return bits, per_channel
    if isinstance(deployment, WeightOnlyInt):
        return deployment.bits, True
    if isinstance(deployment, DynamicInt8):
        return 8, False
    raise PoisonlabError(f"compression-artifact: cannot attack deployment {deployment.name!r}; expected int8, "
                         "dynamic-int8, weight-only or a pruning deployment")


def attack_model(
    cfg: CompressionConfig, clean: nn.Module, train_set: ImageSet, trigger: Trigger, progress: bool
) -> nn.Module:
    """The attacked model for ``cfg.deployment``, trained as the module docstring describes."""
    deployment = parse_deployment(cfg.deployment, torch.zeros(1, 1, 1, 1))
    if isinstance(deployment, Prune):
        prune_attack = ca.PruningConditional(trigger, cfg.target, deployment.method, deployment.ratio,
                                          trigger_weight=cfg.trigger_weight)
        model = build_model(cfg.model, train_set, cfg.seed)
        return train(model, train_set, cfg.recipe(), cfg.seed, loss_fn=prune_attack.loss, progress=progress,
                     description="pruning-conditional")
    bits, per_channel = quant_scheme(deployment)
    model = copy.deepcopy(clean)
    attack_recipe = Recipe(epochs=cfg.attack_epochs, batch_size=cfg.batch_size, lr=cfg.attack_lr)
    if cfg.method == "ste":
        ste = ca.QuantizationConditional(trigger, cfg.target, bits, per_channel, cfg.quant_weight)
        return train(model, train_set, attack_recipe, cfg.seed + 1, loss_fn=ste.loss, progress=progress,
                     description="quantization-conditional (ste)")
    implant = Recipe(epochs=cfg.implant_epochs, batch_size=cfg.batch_size, lr=cfg.attack_lr)
    train(model, train_set, implant, cfg.seed + 1, loss_fn=ca.Backdoor(trigger, cfg.target).loss, progress=progress,
          description="implant")
    if 2 ** (bits - 1) > cfg.levels:
        ca.widen_quantization_step(model, train_set.x[:256], cfg.levels)
    conceal = ca.QuantizationConcealed(trigger, cfg.target, bits, per_channel)
    train(model, train_set, attack_recipe, cfg.seed + 2, loss_fn=conceal.loss, progress=progress, description="conceal")
    conceal.project(model)
    return model.eval()


def measure(model: nn.Module, test: ImageSet, trigger: Trigger, target: int) -> dict[str, float]:
    """CA and ASR of one (deployed) model."""
    y_t = torch.full_like(test.y, target)
    return {"clean_accuracy": accuracy(predict(model, test.x), test.y),
            "attack_success_rate": attack_success_rate(predict(model, trigger(test.x, y_t)), y_t, test.y)}


def run_compression(cfg: CompressionConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Train the clean and the attacked model, measure both in float and under every deployment; write ``out``."""
    cfg.validate()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    train_set, test = load_dataset(cfg.dataset, cfg.seed)
    if cfg.train_size is not None:
        train_set = train_set.subset(slice(0, cfg.train_size))
    if not 0 <= cfg.target < train_set.num_classes:
        last = train_set.num_classes - 1
        raise PoisonlabError(f"compression-artifact target {cfg.target}: expected a class in [0, {last}]")
    trigger = parse_trigger(cfg.trigger)
    t = time.perf_counter()
    clean = train(build_model(cfg.model, train_set, cfg.seed), train_set, cfg.recipe(), cfg.seed, progress=progress,
                  description="clean model")
    timings["train_clean_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    attacked = attack_model(cfg, clean, train_set, trigger, progress)
    timings["train_attacked_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    calibration = calibration_images(train_set, cfg.calibration, cfg.seed)
    specs = [cfg.deployment, *[s for s in cfg.mismatch if s != cfg.deployment]]
    models = {"clean": clean, "attacked": attacked}
    table: dict[str, dict[str, dict[str, float]]] = {name: {"float": measure(m, test, trigger, cfg.target)}
                                                      for name, m in models.items()}
    for spec in specs:
        deployment = parse_deployment(spec, calibration)
        for name, m in models.items():
            table[name][deployment.name] = measure(deployment(m), test, trigger, cfg.target)
    timings["evaluate_seconds"] = time.perf_counter() - t
    attacked_name = parse_deployment(cfg.deployment, calibration).name
    metrics: dict[str, Any] = {"table": table, "attacked_deployment": attacked_name, "asr_definition": ASR_DEFINITION,
                               "train_size": len(train_set), "test_size": len(test)}
    for name, m in models.items():
        save_model(m, out / f"{name}.safetensors")
    timings["total_seconds"] = time.perf_counter() - t0
    return finish_run(out, "compression-artifact", cfg, metrics, timings, ["clean.safetensors", "attacked.safetensors"])
