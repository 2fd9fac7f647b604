"""Contract tests over every registry: each registered component runs on a tiny synthetic case.

Every kind has a table of cases keyed by registered name; a name registered without a case (or a
case for a name no longer registered) fails ``test_every_registered_name_has_a_contract_case``.
Checks: shapes, value range, the poisoning budget, ground-truth indices, determinism under a seed,
and a ``poisonlab list`` entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from poisonlab.attacks import BadNets
from poisonlab.cli.app import app
from poisonlab.compress import calibration_images, parse_deployment
from poisonlab.core import ImageSet, Phase, Poisoned, PoisonlabError, TrainingAttack, poison_count
from poisonlab.data import load_dataset, make_synthetic
from poisonlab.data.openclipart import CATEGORIES as CLIPART_CATEGORIES
from poisonlab.defenses.apply import apply_defenses, defender_data
from poisonlab.experiment.config import read_toml
from poisonlab.experiment.run import execute, load, resolve
from poisonlab.models import build_model, efficientnet
from poisonlab.registry import ATTACKS, DEFENSES, registries
from poisonlab.scaling.resize import RESIZERS
from poisonlab.training import Recipe, train
from poisonlab.triggers import Patch, parse_trigger

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _folder(tmp: Path) -> str:
    rng = np.random.default_rng(0)
    for k in range(2):
        (tmp / f"class{k}").mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(tmp / f"class{k}" / f"{i}.png")
    return f"folder:{tmp}"


def _clipart(tmp: Path) -> str:
    rng = np.random.default_rng(0)
    for category in CLIPART_CATEGORIES:
        (tmp / category).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (6, 9, 4), dtype=np.uint8), "RGBA").save(tmp / category / f"{i}.png")
    return f"openclipart:path={tmp},size=32"


def _npz(tmp: Path) -> str:
    rng = np.random.default_rng(0)
    np.savez(tmp / "d.npz", x=rng.integers(0, 256, (20, 6, 6), dtype=np.uint8), y=np.arange(20) % 3)
    return f"npz:{tmp / 'd.npz'}"


DATASETS: dict[str, Callable[[Path], str]] = {
    "breast-cancer": lambda tmp: "breast-cancer",
    "digits": lambda tmp: "digits",
    "fashion-mnist": lambda tmp: "fashion-mnist",
    "folder": _folder,
    "mnist": lambda tmp: "mnist",
    "mnist-numbers": lambda tmp: "mnist-numbers:2,train=3,test=2",
    "npz": _npz,
    "openclipart": _clipart,
    "synthetic": lambda tmp: "synthetic",
}

# attack name -> keyword arguments for a tiny case on 12x12 synthetic images of 4 classes
ATTACK_CASES: dict[str, dict[str, Any]] = {
    "adaptive-blend": {"target": 1, "rate": 0.05, "cover_rate": 0.05},
    "adaptive-patch": {"target": 1, "rate": 0.05, "cover_rate": 0.05},
    "backgradient": {"rate": 0.02, "steps": 3, "iterations": 1, "val_size": 40},
    "badnets": {"target": 1, "rate": 0.05, "trigger": Patch(size=3)},
    "blend": {"target": 1, "rate": 0.05},
    "compression-artifact": {"target": 1, "deployment": "prune-l1:0.5", "trigger": Patch(size=3)},
    "label-consistent": {"target": 1, "rate": 0.05, "steps": 2, "samples_per_class": 10, "surrogate_epochs": 1},
    "multi-target-badnets": {"bits": 4, "rate": 0.05},
    "scaling-camouflage": {"size": (6, 6), "target": 1, "count": 6, "trigger": Patch(size=2)},
    "sig": {"target": 1, "rate": 0.05, "frequency": 3.0},
    "universal": {"bits": 2, "rate": 0.05, "samples_per_class": 10},
    "wanet": {"target": 1, "rate": 0.05, "cross_ratio": 2.0},
}

TRIGGER_CASES = {
    "blend": "blend:alpha=0.3,seed=1",
    "checkerboard": "checkerboard:size=4",
    "patch": "patch:size=3,position=top-left",
    "pixel": "pixel:position=bottom-right",
    "sinusoid": "sinusoid:delta=0.1,frequency=3",
    "warp": "warp:k=4,strength=0.5",
}

MODEL_CASES = {"badnets-cnn": (1, 28, 28), "efficientnet-lite0": (3, 32, 32), "efficientnet-lite0-frozen": (1, 32, 32),
               "efficientnet-lite0-full": (3, 32, 32),
               "resnet-small": (3, 16, 16), "small-cnn": (3, 12, 12)}

DEPLOYMENT_CASES = {
    "dynamic-int8": "dynamic-int8",
    "fp16": "fp16",
    "int8-fbgemm": "int8-fbgemm",
    "int8-qnnpack": "int8-qnnpack",
    "int8-x86": "int8-x86",
    "prune-filters": "prune-filters:0.5",
    "prune-l1": "prune-l1:0.5",
    "prune-layer": "prune-layer:0.3",
    "weight-only": "weight-only:4",
}

# defense name -> the specs applied in order (a mitigation after what it works on); the last is checked
DEFENSE_CASES = {
    "abl": ["abl"],
    "activation-clustering": ["activation-clustering"],
    "confusion-training": ["confusion-training:rounds=2,epochs=2,steps=100"],
    "fine-pruning": ["fine-pruning"],
    "ibd-psc": ["ibd-psc"],
    "label-consistency": ["label-consistency"],
    "neural-cleanse": ["neural-cleanse:steps=40"],
    "out-of-fold": ["out-of-fold:steps=20"],
    "retrain": ["spectral", "retrain:scanner=spectral"],
    "scale-up": ["scale-up"],
    "spectral": ["spectral"],
    "spectre": ["spectre"],
    "strip": ["strip:n_overlays=8"],
    "unlearning": ["neural-cleanse:steps=40", "unlearning"],
}

RESIZER_CASES = sorted(f"{lib}-{alg}" for lib, algs in {
    "opencv": ("area", "cubic", "lanczos4", "linear", "nearest"),
    "pillow": ("bicubic", "bilinear", "box", "lanczos", "nearest"),
    "tensorflow": ("area", "bicubic", "bicubic-aa", "bilinear", "bilinear-aa", "lanczos3", "nearest"),
    "torch": ("area", "bicubic", "bicubic-aa", "bilinear", "bilinear-aa", "nearest"),
}.items() for alg in algs)

_TRAINING = "[training]\nepochs = 2\n"
EXPERIMENT_CASES = {
    "backgradient": ('experiment = "backgradient"\ndataset = "synthetic"\ntrain_size = 60\nval_size = 30\n'
                     'test_size = 60\nrates = [0.05]\nsteps = 3\nwarm_start = 3\niterations = 1\ntransfer = []\n'),
    "badnets": 'experiment = "badnets"\ndataset = "synthetic"\nmodel = "small-cnn"\n' + _TRAINING
               + '[attack]\ntarget = 1\nrate = 0.05\n',
    "compression-artifact": ('experiment = "compression-artifact"\ndataset = "synthetic"\nmodel = "small-cnn"\n'
                             'train_size = 400\ndeployments = []\n' + _TRAINING + '[attack]\n'
                             'name = "compression-artifact"\ndeployment = "prune-l1:0.5"\ntarget = 1\n'
                             'trigger = "patch:size=3"\nimplant_epochs = 1\nattack_epochs = 1\n'),
    "defense-matrix": ('experiment = "defense-matrix"\ndataset = "synthetic"\nmodel = "small-cnn"\nreserve = 200\n'
                       'clean_reference = false\n' + _TRAINING
                       + '[[attacks]]\nname = "badnets"\ntarget = 1\nrate = 0.05\n'),
    "detection-matrix": ('experiment = "detection-matrix"\ndataset = "synthetic"\nmodel = "small-cnn"\n'
                         'rates = [0.1]\ndetectors = ["spectral"]\n' + _TRAINING
                         + '[[attacks]]\nname = "badnets"\ntarget = 1\n'),
    "pipeline": ('dataset = "synthetic"\nmodel = "small-cnn"\ndeployments = ["fp16"]\ndefenses = ["spectral"]\n'
                 + _TRAINING + '[attack]\nname = "badnets"\ntarget = 1\nrate = 0.05\n'),
    "scaling-audit": ('experiment = "scaling-audit"\nresizers = ["opencv-linear"]\nratios = [2]\nsize = 32\n'),
    "scaling-camouflage": ('experiment = "scaling-camouflage"\ndataset = "digits"\ntrain_size = 300\n'
                           'test_size = 100\ncount = 10\n[training]\nepochs = 1\n'),
    "train": 'experiment = "train"\ndataset = "synthetic"\nmodel = "small-cnn"\n' + _TRAINING,
    "universal": ('experiment = "universal"\ndataset = "synthetic"\nbits = 2\nrates = [0.02]\n'
                  'transfer_rate = 0\n[training]\nepochs = 1\n'),
}

CASES: dict[str, Any] = {
    "datasets": DATASETS, "attacks": ATTACK_CASES, "triggers": TRIGGER_CASES, "models": MODEL_CASES,
    "deployments": DEPLOYMENT_CASES, "defenses": DEFENSE_CASES, "resizers": RESIZER_CASES,
    "experiments": EXPERIMENT_CASES,
}


def uncovered() -> dict[str, set[str]]:
    """Per kind, the registered names without a contract case and the cases without a registered name."""
    regs = registries()
    assert sorted(CASES) == sorted(regs)
    return {kind: diff for kind, reg in regs.items() if (diff := set(reg.names()) ^ set(CASES[kind]))}


def test_every_registered_name_has_a_contract_case() -> None:
    assert uncovered() == {}


def test_a_name_registered_without_a_case_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    ATTACKS.names()
    monkeypatch.setattr(ATTACKS, "_items", dict(ATTACKS._items))
    ATTACKS.register("new-attack", "an attack nobody wrote a contract case for")(BadNets)
    assert uncovered() == {"attacks": {"new-attack"}}


@pytest.fixture(scope="module")
def listing() -> dict[str, dict[str, str]]:
    result = CliRunner().invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, cases in CASES.items() for n in cases])
def test_every_case_is_listed_with_a_description(listing: dict[str, dict[str, str]], kind: str, name: str) -> None:
    assert len(listing[kind][name]) > 10


def check_images(data: ImageSet) -> None:
    assert data.x.dtype == torch.float32 and data.x.ndim == 4
    assert torch.isfinite(data.x).all() and 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0
    assert data.y.dtype == torch.int64 and 0 <= int(data.y.min()) and int(data.y.max()) < data.num_classes


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a dataset that caches writes there
    if name == "fashion-mnist" and not FASHION.is_dir():
        pytest.skip("Debian dataset-fashion-mnist absent")
    spec = DATASETS[name](tmp_path)
    train, test = load_dataset(spec, seed=3)
    assert len(train) > 0 and (len(test) > 0 or name in ("folder", "npz"))  # a user's data may have no test part
    for part in (train, test):
        if len(part):
            check_images(part)
        assert part.x.shape[1:] == train.x.shape[1:] and part.classes == train.classes
    again, _ = load_dataset(spec, seed=3)
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)


@pytest.fixture(scope="module")
def tiny() -> tuple[ImageSet, ImageSet]:
    data = make_synthetic(500, num_classes=4, size=12, seed=0)
    return data.subset(slice(0, 400)), data.subset(slice(400, None))


DATA_ATTACKS = sorted(n for n in ATTACK_CASES if not isinstance(ATTACKS.get(n)(**ATTACK_CASES[n]), TrainingAttack))


def poison(name: str, train: ImageSet, seed: int = 0, **extra: Any) -> Poisoned:
    attack = ATTACKS.get(name)(**{**ATTACK_CASES[name], **extra})
    return attack.poison(train, torch.Generator().manual_seed(seed))


def check_data_attack(factory: Callable[..., Any], kwargs: dict[str, Any], train: ImageSet, test: ImageSet) -> None:
    """The data-attack contract: images and budget, indices that name exactly the touched rows, determinism."""
    attack = factory(**kwargs)
    poisoned = attack.poison(train, torch.Generator().manual_seed(0))
    data, idx = poisoned.data, poisoned.indices
    check_images(data)
    assert data.shape == train.shape and data.classes == train.classes
    assert len(idx) == poison_count(len(train), attack.rate, attack.count)
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.unique()) and int(idx.max()) < len(data)
    kept = torch.ones(len(data), dtype=torch.bool)
    kept[poisoned.touched] = False
    kept_rows = torch.nonzero(kept).flatten()
    assert int(kept_rows.max()) < len(train), "rows the attack says it did not touch must be training rows"
    assert torch.equal(data.x[kept_rows], train.x[kept_rows]) and torch.equal(data.y[kept_rows], train.y[kept_rows])
    inside = idx[idx < len(train)]
    changed = (data.x[inside] != train.x[inside]).flatten(1).any(1) | (data.y[inside] != train.y[inside])
    assert bool(changed.all()), "every row the attack names as poisoned differs from the clean row"
    triggered = poisoned.triggered(test)
    check_images(triggered)
    assert triggered.x.shape == test.x.shape
    again = factory(**kwargs).poison(train, torch.Generator().manual_seed(0))
    assert torch.equal(again.data.x, data.x) and torch.equal(again.indices, idx)
    assert torch.equal(again.triggered(test).x, triggered.x)
    with pytest.raises(PoisonlabError, match="poison rate 1.5: expected a fraction"):
        factory(**{**kwargs, "rate": 1.5, "count": None}).poison(train, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", DATA_ATTACKS)
def test_data_attack_contract(tiny: tuple[ImageSet, ImageSet], name: str) -> None:
    check_data_attack(ATTACKS.get(name), ATTACK_CASES[name], *tiny)


@dataclass(frozen=True)
class MislabelledTruth(BadNets):
    """A broken attack: it reports the rows next to the ones it poisoned."""

    def poison(self, train: ImageSet, rng: torch.Generator) -> Poisoned:
        p = super().poison(train, rng)
        return Poisoned(p.data, (p.indices + 1) % len(train), p.trigger, p.target_map)


def test_the_attack_contract_catches_wrong_ground_truth(tiny: tuple[ImageSet, ImageSet]) -> None:
    with pytest.raises(AssertionError):
        check_data_attack(MislabelledTruth, ATTACK_CASES["badnets"], *tiny)


def test_training_attack_contract(tiny: tuple[ImageSet, ImageSet]) -> None:
    train, _ = tiny
    names = sorted(set(ATTACK_CASES) - set(DATA_ATTACKS))
    assert names, "the training-attack contract checks no attack"
    for name in names:
        attack = ATTACKS.get(name)(**ATTACK_CASES[name])
        phases = attack.phases()
        assert phases and all(isinstance(p, Phase) for p in phases)
        assert len({p.name for p in phases}) == len(phases)
        assert attack.deployment is None or parse_deployment(attack.deployment).name
        backdoor = attack.backdoor(train)
        check_images(backdoor.triggered(train))
        assert torch.equal(backdoor.data.x, train.x) and len(backdoor.indices) == 0


@pytest.mark.parametrize("name", sorted(TRIGGER_CASES))
def test_trigger_contract(tiny: tuple[ImageSet, ImageSet], name: str) -> None:
    x = tiny[1].x[:20]
    before = x.clone()
    trigger = parse_trigger(TRIGGER_CASES[name])
    out = trigger(x, torch.zeros(20, dtype=torch.long))
    assert torch.equal(x, before), "a trigger never stamps its input in place"
    assert out.shape == x.shape and out.dtype == x.dtype and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert (out != x).flatten(1).any(1).float().mean() > 0.9
    assert torch.equal(parse_trigger(TRIGGER_CASES[name])(x, None), out)


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_model_contract(name: str) -> None:
    if name.startswith("efficientnet") and not efficientnet.available():
        pytest.skip("needs the optional extra poisonlab[surrogate]")
    shape = MODEL_CASES[name]
    data = ImageSet(torch.rand(8, *shape), torch.arange(8) % 5, tuple("abcde"))
    model, same, other = (build_model(name, data, seed).eval() for seed in (0, 0, 1))
    logits = model(data.x)
    assert logits.shape == (8, 5) and torch.isfinite(logits).all()
    assert torch.equal(same(data.x), logits) and not torch.equal(other(data.x), logits)


@pytest.fixture(scope="module")
def backdoored(tiny: tuple[ImageSet, ImageSet]) -> tuple[torch.nn.Module, Poisoned]:
    poisoned = poison("badnets", tiny[0], rate=0.1)
    model = build_model("small-cnn", poisoned.data, seed=0)
    return train(model, poisoned.data, Recipe(epochs=4), seed=0, progress=False), poisoned


@pytest.mark.parametrize("name", sorted(DEPLOYMENT_CASES))
def test_deployment_contract(tiny: tuple[ImageSet, ImageSet], backdoored: tuple[torch.nn.Module, Poisoned],
                             name: str) -> None:
    model, poisoned = backdoored
    state = {k: v.clone() for k, v in model.state_dict().items()}
    deployment = parse_deployment(DEPLOYMENT_CASES[name])
    assert deployment.name.startswith(name)
    calibration = calibration_images(poisoned.data, seed=0, n=64)
    deployed = deployment(model, calibration)
    x = tiny[1].x
    logits = deployed(x.half() if name == "fp16" else x).float()
    assert logits.shape == (len(x), 4) and torch.isfinite(logits).all()
    assert (logits.argmax(1) == model(x).argmax(1)).float().mean() > 0.8, "a deployment keeps most predictions"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()), "the float model is unchanged"
    assert torch.equal(deployment(model, calibration)(x.half() if name == "fp16" else x).float(), logits)
    stand_in = deployment.stand_in(model, deployed)
    if deployment.weight_grid is not None:
        assert stand_in is not None
        layers = [m for m in stand_in.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
        weight = layers[-1].weight.detach()
        levels = weight.flatten(1).unique(dim=None).numel() if not deployment.weight_grid.per_channel else max(
            row.unique().numel() for row in weight.flatten(1))
        assert levels <= 2 ** deployment.weight_grid.bits
    if deployment.pruning is not None:
        zeros = sum(int((m.weight == 0).sum()) for m in deployed.modules()
                    if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
        assert zeros > 0


@pytest.mark.parametrize("name", sorted(DEFENSE_CASES))
def test_defense_contract(tiny: tuple[ImageSet, ImageSet], backdoored: tuple[torch.nn.Module, Poisoned],
                          name: str) -> None:
    model, poisoned = backdoored
    specs = DEFENSE_CASES[name]
    defense = DEFENSES.build(specs[-1])
    test = tiny[1]
    defender = defender_data("reserve:200", poisoned.data, poisoned.indices, test, poisoned.triggered(test), seed=0)

    def run() -> dict[str, Any]:
        refit = lambda data: train(build_model("small-cnn", data, 0), data, Recipe(epochs=2), 0, progress=False)  # noqa: E731
        out = apply_defenses(specs, model, poisoned.data, poisoned.indices, defender, refit, target=1, seed=0)
        return {k: v for k, v in out[specs[-1]].items() if k != "seconds"}

    result = run()
    expected = {
        "data-scanner": {"precision", "recall", "f1", "auroc", "flagged"},
        "input-filter": {"detection_rate", "false_rejection_rate"},
        "model-scanner": {"flagged_classes", "flagged_count", "target_flagged"},
        "mitigation": {"ca_before", "asr_before", "ca_after", "asr_after"},
    }[defense.kind]
    assert expected <= set(result)
    rates = {k: v for k, v in result.items() if k in expected and isinstance(v, float)}
    assert all(0.0 <= v <= 1.0 for v in rates.values()), rates
    if defense.kind == "data-scanner":
        verdict = defense.scan(model, poisoned.data)
        assert verdict.scores is not None and verdict.scores.shape == (len(poisoned.data),)
        assert result["auroc"] > 0.5, "a data scanner ranks planted poison above chance"
    assert run() == result, "the same seed gives the same result"


@pytest.mark.parametrize("name", RESIZER_CASES)
def test_resizer_contract(name: str) -> None:
    resizer = RESIZERS.get(name)
    if not resizer.available():
        pytest.skip("tensorflow extra absent")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)
    out = resizer(image, (8, 6))
    assert out.shape == (8, 6, 3) and out.dtype == np.uint8
    assert np.array_equal(resizer(image, (8, 6)), out)
    flat = np.full((32, 24), 77, dtype=np.uint8)
    assert np.abs(resizer(flat, (8, 6)).astype(int) - 77).max() <= 1
    with pytest.raises(PoisonlabError, match="resize size"):
        resizer(image, (0, 6))


@pytest.mark.parametrize("name", sorted(EXPERIMENT_CASES))
def test_experiment_contract(tmp_path: Path, name: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(EXPERIMENT_CASES[name])
    resolved = load(path)
    assert resolved.experiment == name
    (tmp_path / "run").mkdir()
    body = execute(resolved, tmp_path / "run", progress=False)
    assert body["metrics"] and (tmp_path / "run" / "report.json").is_file()
    saved = tmp_path / "run" / "config.toml"
    assert resolve(read_toml(saved)).as_dict() == resolved.as_dict()
    mode = (tmp_path / "run" / "report.json").stat().st_mode
    for file in body["files"]:
        assert (tmp_path / "run" / file).stat().st_mode == mode, f"{file}: written unlike report.json"
