"""Run one resolved experiment config end to end and write its run folder.

The pipeline follows DESIGN.md: load -> poison -> train a clean and a backdoored model -> deploy ->
evaluate -> report. BadNets runs through ``poisonlab.experiment.badnets.run_badnets`` itself, so a
config and ``poisonlab run badnets`` with the same values give the same weights and metrics; any
other registered data attack runs through the same stages here. Deployments and defenses are
looked up by name in their registries and applied to the trained models when their modules exist.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from poisonlab.core import ImageSet, Poisoned, PoisonlabError
from poisonlab.data import load_dataset
from poisonlab.experiment.badnets import BadnetsConfig, run_badnets
from poisonlab.experiment.config import ExperimentConfig, attack_parameters, registry
from poisonlab.experiment.rundir import atomic_write_bytes, atomic_write_json, report
from poisonlab.metrics import ASR_DEFINITION, evaluate
from poisonlab.models import build_model, load_model, save_model
from poisonlab.report.figures import image_grid, save_figure
from poisonlab.training import predict, train

CONFIG_FILE = "config.toml"
REPORT_FILE = "report.json"
REPORT_KIND = "experiment"
CALIBRATION_IMAGES = 256


def check_runnable(cfg: ExperimentConfig) -> None:
    """Fail before any data is loaded if this runner cannot execute ``cfg``."""
    attack = cfg.attack.build()
    if not callable(getattr(attack, "poison", None)):
        raise PoisonlabError(
            f"attack.name: {cfg.attack.name!r} is not a data attack (no poison method); config runs take data attacks"
        )
    if "resizer" in attack_parameters(type(attack)):
        raise PoisonlabError(f"attack.name: {cfg.attack.name!r} hides its poison in the pipeline's downscale, which "
                             "this pipeline does not model; run it as experiment = \"scaling-camouflage\" "
                             "(or `poisonlab run scaling-camouflage`)")
    if cfg.preprocessing:
        raise PoisonlabError("preprocessing: the config runner does not apply preprocessing stages yet; leave it empty")
    for key in ("deployments", "defenses"):
        if getattr(cfg, key) and _stage(key) is None:
            raise PoisonlabError(f"{key}: the config runner cannot apply {key} in this version; leave the list empty")
    for i, spec in enumerate(cfg.defenses):
        defense = _defense(spec)
        if not any(callable(getattr(defense, m, None)) for m in ("scan", "fit", "repair")):
            raise PoisonlabError(f"defenses[{i}]: {spec!r} offers none of scan, fit or repair")
        if spec == "retrain" and not any(_is_data_scanner(d) for d in cfg.defenses[:i]):
            raise PoisonlabError(f"defenses[{i}]: retrain removes what a data scanner flagged; list one before it")
    if cfg.deployments:
        from poisonlab.compress import parse_deployment

        for i, spec in enumerate(cfg.deployments):
            try:
                parse_deployment(spec, torch.zeros(1, 1, 1, 1))
            except PoisonlabError as e:
                raise PoisonlabError(f"deployments[{i}]: {e}") from None


def _stage(kind: str) -> Callable[..., dict[str, Any]] | None:
    return {"deployments": _deploy, "defenses": _defend}[kind] if registry(kind) is not None else None


def _badnets_config(cfg: ExperimentConfig) -> BadnetsConfig:
    params = {k: v for k, v in cfg.attack.params.items() if k in BadnetsConfig.__dataclass_fields__}
    return BadnetsConfig(dataset=cfg.dataset, model=cfg.model, seed=cfg.seed, epochs=cfg.training.epochs,
                         batch_size=cfg.training.batch_size, lr=cfg.training.lr, **params)


def _examples_figure(test: ImageSet, triggered: ImageSet, models: dict[str, nn.Module], title: str) -> Any:
    """One test image per class whose trigger changes its label: clean and triggered, with both models' predictions."""
    eligible = triggered.y != test.y
    picks = [int(torch.nonzero((test.y == k) & eligible)[0]) for k in range(test.num_classes)
             if ((test.y == k) & eligible).any()][:10]
    names = test.classes
    rows = []
    for label, images in (("clean", test.x[picks]), ("triggered", triggered.x[picks])):
        preds = {n: predict(m, images) for n, m in models.items()}
        captions = [f"clean:{names[preds['clean'][i]]} bd:{names[preds['backdoored'][i]]}" for i in range(len(picks))]
        rows.append((label, images, captions))
    return image_grid(rows, title=title)


def _train_pair(cfg: ExperimentConfig, out: Path, progress: bool, timings: dict[str, float]) -> dict[str, Any]:
    """Poison, train the clean and the backdoored model, evaluate both, save weights and examples; return metrics."""
    t0 = time.perf_counter()
    train_set, test = load_dataset(cfg.dataset, cfg.seed)
    poisoned: Poisoned = cfg.attack.build().poison(train_set, torch.Generator().manual_seed(cfg.seed))
    timings["data_seconds"] = time.perf_counter() - t0
    models = {}
    for name, data in (("clean", train_set), ("backdoored", poisoned.data)):
        t = time.perf_counter()
        model = build_model(cfg.model, data, cfg.seed)
        models[name] = train(model, data, cfg.training, cfg.seed, progress=progress, description=f"{name} model")
        timings[f"train_{name}_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics: dict[str, Any] = {name: evaluate(m, test, poisoned) for name, m in models.items()}
    timings["evaluate_seconds"] = time.perf_counter() - t
    metrics.update(poisoned_samples=len(poisoned.indices), poisoned_fraction=len(poisoned.indices) / len(train_set),
                   train_size=len(train_set), test_size=len(test), asr_definition=ASR_DEFINITION)
    for name, m in models.items():
        save_model(m, out / f"{name}.safetensors")
    save_file({"indices": poisoned.indices}, str(out / "poisoned_indices.safetensors"))
    title = f"{cfg.attack.name} on {cfg.dataset}: predictions of the clean and the backdoored model"
    save_figure(_examples_figure(test, poisoned.triggered(test), models, title), out / "examples.png")
    return metrics


def _reload(cfg: ExperimentConfig, out: Path) -> tuple[ImageSet, ImageSet, Poisoned, dict[str, nn.Module]]:
    """The data, poison and trained models of a finished pair stage, rebuilt from the seed and the saved weights."""
    train_set, test = load_dataset(cfg.dataset, cfg.seed)
    poisoned = cfg.attack.build().poison(train_set, torch.Generator().manual_seed(cfg.seed))
    models = {n: load_model(cfg.model, train_set.shape, train_set.num_classes, out / f"{n}.safetensors")
              for n in ("clean", "backdoored")}
    return train_set, test, poisoned, models


def calibration_images(train_set: ImageSet, seed: int) -> torch.Tensor:
    """The training images a static-quantization deployment calibrates on: a seeded sample."""
    pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:CALIBRATION_IMAGES]
    return train_set.x[pick.sort().values]


def _deploy(cfg: ExperimentConfig, out: Path, timings: dict[str, float]) -> dict[str, Any]:
    """CA and ASR of every deployed variant of both models (``deployments`` in the config)."""
    from poisonlab.compress import parse_deployment

    train_set, test, poisoned, models = _reload(cfg, out)
    calibration = calibration_images(train_set, cfg.seed)
    results: dict[str, Any] = {}
    for spec in cfg.deployments:
        t = time.perf_counter()
        deployment = parse_deployment(spec, calibration)
        results[spec] = {name: evaluate(deployment(copy.deepcopy(m)), test, poisoned) for name, m in models.items()}
        timings[f"deploy_{spec}_seconds"] = time.perf_counter() - t
    return results


def _defense(spec: str, cfg: ExperimentConfig | None = None) -> Any:
    """The defense named ``spec`` with its defaults, retraining (if it does) with the experiment's model and recipe."""
    reg = registry("defenses")
    assert reg is not None
    name, _, arg = spec.partition(":")
    if arg:
        raise PoisonlabError(f"defense {spec!r}: takes no ':' argument in a config; defaults are used")
    factory = reg.get(name)
    shared = {} if cfg is None else {"model_name": cfg.model, "recipe": cfg.training, "seed": cfg.seed}
    accepted = attack_parameters(factory)
    return factory(**{k: v for k, v in shared.items() if k in accepted})


def _is_data_scanner(spec: str) -> bool:
    from poisonlab.defenses import DATA_SCANNERS

    return spec in DATA_SCANNERS


def _defend(cfg: ExperimentConfig, out: Path, timings: dict[str, float]) -> dict[str, Any]:
    """Every defense in the config applied to the backdoored model, scored against the attack's ground truth.

    The defender's clean data is the first half of the test set; before/after CA and ASR of a
    mitigation are measured on the second half, so no image is both used to repair and to score.
    """
    from poisonlab.defenses.scoring import as_mask, detection_metrics

    _, test, poisoned, models = _reload(cfg, out)
    model = models["backdoored"]
    half = len(test) // 2
    clean, held = test.subset(slice(0, half)), test.subset(slice(half, None))
    before = evaluate(model, held, poisoned)
    scans: list[Any] = []
    results: dict[str, Any] = {}
    for spec in cfg.defenses:
        t = time.perf_counter()
        defense = _defense(spec, cfg)
        result: dict[str, Any]
        if _is_data_scanner(spec):
            verdict = defense.scan(model, poisoned.data)
            scans.append(verdict)
            result = dict(detection_metrics(verdict, poisoned.indices, len(poisoned.data)))
        elif callable(getattr(defense, "detect", None)):
            fitted = defense.fit(model, clean)
            triggered = poisoned.triggered(held)
            eligible = triggered.y != held.y
            on_triggered = as_mask(fitted.detect(model, triggered.x[eligible]).flagged, int(eligible.sum()))
            on_clean = as_mask(fitted.detect(model, held.x).flagged, len(held))
            result = {"detection_rate": float(on_triggered.float().mean()),
                      "false_rejection_rate": float(on_clean.float().mean())}
        elif callable(getattr(defense, "scan", None)):
            verdict = defense.scan(model, clean)
            flagged = [] if verdict.flagged is None else [int(c) for c in verdict.flagged]
            result = {"flagged_classes": flagged, "flagged_count": len(flagged)}
            target = cfg.attack.params.get("target")
            if isinstance(target, int):
                result["target_flagged"] = float(target in flagged)
        else:
            if spec == "retrain":
                verdict = defense.repair(poisoned.data, scans[0])
            elif "scan" in inspect.signature(defense.repair).parameters:
                verdict = defense.repair(copy.deepcopy(model), clean, None)
            else:
                verdict = defense.repair(copy.deepcopy(model), clean)
            after = evaluate(verdict.model, held, poisoned)
            result = {"ca_before": before["clean_accuracy"], "asr_before": before["attack_success_rate"],
                      "ca_after": after["clean_accuracy"], "asr_after": after["attack_success_rate"]}
        result["seconds"] = time.perf_counter() - t
        timings[f"defense_{spec}_seconds"] = result["seconds"]
        results[spec] = result
    return results


def _run_badnets_staged(cfg: ExperimentConfig, out: Path, progress: bool) -> dict[str, Any]:
    """``run_badnets`` in a hidden staging folder, its files then moved into ``out``.

    run_badnets writes its own report.json; staged, it never appears in ``out``, so a report.json
    there is always this runner's final one (sweeps and the run index rely on that).
    """
    stage = out / ".badnets-stage"
    stage.mkdir(exist_ok=True)
    inner = run_badnets(_badnets_config(cfg), stage, progress=progress)
    for name in inner["files"]:
        os.replace(stage / name, out / name)
    (stage / REPORT_FILE).unlink()
    stage.rmdir()
    return inner


def run_experiment(cfg: ExperimentConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run ``cfg`` into the run folder ``out`` and return its report; ``report.json`` is written last, atomically."""
    check_runnable(cfg)
    atomic_write_bytes(out / CONFIG_FILE, cfg.to_toml().encode())
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    files = [CONFIG_FILE, "clean.safetensors", "backdoored.safetensors", "poisoned_indices.safetensors", "examples.png"]
    if cfg.attack.name == "badnets" and cfg.training.weight_decay == 0:  # BadnetsConfig has no weight decay
        inner = _run_badnets_staged(cfg, out, progress)
        metrics, timings = inner["metrics"], dict(inner["timings"])
        files.append("config.json")
    else:
        metrics = _train_pair(cfg, out, progress, timings)
    for key in ("deployments", "defenses"):
        stage = _stage(key)
        if getattr(cfg, key) and stage is not None:
            metrics[key] = stage(cfg, out, timings)
    timings["total_seconds"] = time.perf_counter() - t0
    body = report(REPORT_KIND, cfg.as_dict(), metrics, timings=timings, files=files)
    atomic_write_json(out / REPORT_FILE, body)
    return body


def is_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished config run (its report.json is written last)."""
    path = run_dir / REPORT_FILE
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("kind") == REPORT_KIND
    except (OSError, ValueError):
        return False
