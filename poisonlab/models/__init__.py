"""Small image classifiers: the BadNets MNIST CNN (Gu et al. 2017) and a faster small CNN; saved as safetensors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.registry import Registry
from poisonlab.report.store import atomic_write_json, atomic_write_tensors

Shape = tuple[int, int, int]
MODELS: Registry[Callable[[Shape, int], nn.Module]] = Registry("model")


class Normalize(nn.Module):
    """Per-channel standardisation inside the model, so the model itself takes images in [0, 1]."""

    mean: Tensor
    std: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _flat_size(features: nn.Module, shape: Shape) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *shape)).numel())


@MODELS.register("badnets-cnn", "BadNets MNIST CNN: 2 conv (16, 32 5x5) + 2 FC (512, C)")
def badnets_cnn(shape: Shape, num_classes: int) -> nn.Module:
    """The network of Gu et al.'s MNIST experiments; 'same' padding for images under 16 px."""
    pad = 0 if min(shape[1:]) >= 16 else 2
    features = nn.Sequential(
        Normalize(shape[0]),
        nn.Conv2d(shape[0], 16, 5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return nn.Sequential(*features, nn.Linear(_flat_size(features, shape), 512), nn.ReLU(), nn.Linear(512, num_classes))


@MODELS.register("small-cnn", "fast small CNN: 2 conv (16, 32 3x3) + 2 FC (128, C)")
def small_cnn(shape: Shape, num_classes: int) -> nn.Module:
    """A smaller, faster net for tests and many-class sweeps."""
    features = nn.Sequential(
        Normalize(shape[0]),
        nn.Conv2d(shape[0], 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return nn.Sequential(*features, nn.Linear(_flat_size(features, shape), 128), nn.ReLU(), nn.Linear(128, num_classes))


def build_model(name: str, data: ImageSet, seed: int) -> nn.Module:
    """A freshly initialised ``name`` for ``data``'s image shape and classes, its normaliser fitted to ``data``.

    Initialisation depends only on ``seed``, so two models built with one seed start identical.
    """
    factory = MODELS.get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(data.shape, data.num_classes)
    for module in model.modules():
        if isinstance(module, Normalize):
            module.mean.copy_(data.x.mean(dim=(0, 2, 3)).view_as(module.mean))
            module.std.copy_(data.x.std(dim=(0, 2, 3)).clamp_min(1e-3).view_as(module.std))
    return model


def save_model(model: nn.Module, path: Path) -> None:
    """Write the weights as safetensors, atomically (a crash leaves the old file or none)."""
    atomic_write_tensors(path, model.state_dict())


def load_model(name: str, shape: Shape, num_classes: int, path: Path) -> nn.Module:
    """Rebuild ``name`` and load its weights from a safetensors file; one-line errors on mismatch."""
    model = MODELS.get(name)(shape, num_classes)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise PoisonlabError(f"{path}: no such weights file") from None
    except (SafetensorError, OSError) as e:
        raise PoisonlabError(f"{path}: not a readable safetensors file ({e})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}"
        )
        raise PoisonlabError(
            f"{path}: weights do not fit {name} for input {shape} and {num_classes} classes ({detail})"
        )
    model.load_state_dict(state)
    # the trainer leaves models channels-last; loaded ones match, so a model computes the same in memory and from disk
    return model.to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload,no-any-return]


MODELS_FILE = "models.json"


def save_models(out: Path, architecture: str, data: ImageSet, models: dict[str, nn.Module]) -> list[str]:
    """Write each model as ``NAME.safetensors`` and ``models.json`` (architecture, input, classes); the file names.

    ``models.json`` is the architecture spec that lets ``defend``, ``scan --run`` and ``deploy-check``
    rebuild a run folder's models without guessing.
    """
    files = []
    for name, model in models.items():
        save_model(model, out / f"{name}.safetensors")
        files.append(f"{name}.safetensors")
    atomic_write_json(out / MODELS_FILE, {"architecture": architecture, "input_shape": list(data.shape),
                                          "classes": list(data.classes),
                                          "models": {n: f"{n}.safetensors" for n in models}})
    return [*files, MODELS_FILE]


def read_models(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``models.json``; one line when it has none (the run saved no model)."""
    path = run_dir / MODELS_FILE
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise PoisonlabError(f"{run_dir}: holds no {MODELS_FILE}, so no model to load (this run saved none)") from None
    except (OSError, ValueError) as e:
        raise PoisonlabError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(spec, dict) or not {"architecture", "input_shape", "classes", "models"} <= set(spec):
        raise PoisonlabError(f"{path}: expected architecture, input_shape, classes and models")
    return spec


def load_run_model(run_dir: Path, which: str | None = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """(model, its name, models.json) of a run folder; ``which`` names one (default: the backdoored one)."""
    spec = read_models(run_dir)
    names = list(spec["models"])
    name = which or ("backdoored" if "backdoored" in names else names[-1])
    if name not in spec["models"]:
        raise PoisonlabError(f"{run_dir}: no model {name!r}; it holds {', '.join(names)}")
    shape = tuple(spec["input_shape"])
    model = load_model(spec["architecture"], shape, len(spec["classes"]), run_dir / spec["models"][name])  # type: ignore[arg-type]
    return model, name, spec
