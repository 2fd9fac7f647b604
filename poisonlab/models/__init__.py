"""Image classifiers: the built-in CNNs (the BadNets MNIST net of Gu et al. 2017, a faster small one), a user's own
``nn.Module`` named as ``package.module:factory`` or a TorchScript file; weights saved as safetensors."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from poisonlab.core import ImageSet, PoisonlabError, Samples, batches, check_regular, inference_batch
from poisonlab.models.efficientnet import lite0_classifier
from poisonlab.registry import Registry
from poisonlab.report.store import atomic_write_json, atomic_write_tensors

Shape = tuple[int, int, int]
MODELS: Registry[Callable[[Shape, int], nn.Module]] = Registry("model", "poisonlab.models.resnet")
"""Filled here and by ``models/resnet.py``, which the registry imports when first read (resnet.py imports this
module for Normalize, so a plain import at the bottom would be an import circle)."""


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


MODELS.register("efficientnet-lite0", "ImageNet-pretrained EfficientNet-Lite0, fine-tunes its last 5 blocks + head "
                "(extra poisonlab[surrogate])")(partial(lite0_classifier, trainable_blocks=5))
MODELS.register("efficientnet-lite0-full", "ImageNet-pretrained EfficientNet-Lite0, fine-tunes all 16 blocks + head "
                "(extra poisonlab[surrogate])")(partial(lite0_classifier, trainable_blocks=16))
MODELS.register("efficientnet-lite0-frozen", "ImageNet-pretrained EfficientNet-Lite0, backbone frozen, trains head "
                "conv + classifier (extra poisonlab[surrogate])")(partial(lite0_classifier, trainable_blocks=0))


CODE_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
SCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit")


def is_code_spec(spec: str) -> bool:
    """Whether ``spec`` names code to import (``package.module:factory``) rather than a built-in or a file."""
    return bool(CODE_SPEC.fullmatch(spec))


def _imported(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    added = os.getcwd() not in sys.path
    if added:  # a console script's sys.path lacks the current folder that `python -m` would search
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise PoisonlabError(f"model {spec}: cannot import {module_name!r} ({e})") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PoisonlabError(f"model {spec}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PoisonlabError(f"model {spec}: {attr!r} is not callable; expected a function returning an nn.Module")
    return cast(Callable[..., Any], obj)


def _scripted(spec: str) -> nn.Module:
    """A TorchScript file: its code runs TorchScript operators only, never Python, and its weights come with it."""
    try:
        return cast(nn.Module, torch.jit.load(spec, map_location="cpu"))
    except (RuntimeError, ValueError, OSError) as e:
        raise PoisonlabError(f"model {spec}: not a loadable TorchScript file ({str(e).splitlines()[0]})") from None


def model_factory(spec: str) -> Callable[[Shape, int], nn.Module]:
    """The constructor ``spec`` names: a built-in (``badnets-cnn``), ``package.module:factory``, or a TorchScript file.

    A factory is called as ``factory(input_shape, num_classes)`` when it takes two arguments, else as
    ``factory()``; it must return an ``nn.Module`` mapping (N, C, H, W) images in [0, 1] to logits.
    """
    if spec in MODELS:
        return MODELS.get(spec)
    if spec.endswith(SCRIPT_SUFFIXES):
        if not Path(spec).is_file():
            raise PoisonlabError(f"model {spec}: no such TorchScript file")
        return lambda shape, num_classes: _scripted(spec)
    if not is_code_spec(spec):
        raise PoisonlabError(f"unknown model {spec!r}; expected one of: {', '.join(MODELS.names())}, "
                             "package.module:factory, or a TorchScript file (.pt)")
    factory = _imported(spec)
    try:
        takes_shape = len(inspect.signature(factory).parameters) >= 2
    except (TypeError, ValueError):
        takes_shape = True

    def build(shape: Shape, num_classes: int) -> nn.Module:
        model = factory(shape, num_classes) if takes_shape else factory()
        if not isinstance(model, nn.Module):
            raise PoisonlabError(f"model {spec}: returned {type(model).__name__}, expected an nn.Module")
        return model

    return build


def construct(spec: str, shape: Shape, num_classes: int) -> nn.Module:
    """Model ``spec`` built for ``shape`` and ``num_classes`` and checked on one image; one line when it cannot be."""
    factory = model_factory(spec)
    try:
        model = factory(shape, num_classes)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise PoisonlabError(f"model {spec}: cannot be built for {shape} images ({str(e).splitlines()[0]})") from None
    return check_model(spec, model, shape, num_classes)


def check_model(spec: str, model: nn.Module, shape: Shape, num_classes: int) -> nn.Module:
    """``model`` itself, once one image of ``shape`` gives ``num_classes`` logits; a one-line error otherwise."""
    try:
        with torch.no_grad():
            was = model.training
            out = model.eval()(torch.zeros(1, *shape))
            model.train(was)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise PoisonlabError(f"model {spec}: fails on one {shape} image ({str(e).splitlines()[0]})") from None
    if not isinstance(out, Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise PoisonlabError(f"model {spec}: one {shape} image gives {got}; expected (1, {num_classes}) logits")
    return model


def channel_moments(data: Samples) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (unbiased) standard deviation of ``data``'s pixels; a pass over files for a lazy set."""
    if isinstance(data, ImageSet):
        return data.x.mean(dim=(0, 2, 3)), data.x.std(dim=(0, 2, 3))
    total = torch.zeros(data.shape[0], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for batch in batches(data.x, inference_batch(data.shape)):
        total += batch.double().sum(dim=(0, 2, 3))
        squares += batch.double().square().sum(dim=(0, 2, 3))
    n = len(data) * data.shape[1] * data.shape[2]
    mean = total / n
    return mean.float(), ((squares - n * mean**2).clamp_min(0) / max(n - 1, 1)).sqrt().float()


def build_model(name: str, data: Samples, seed: int) -> nn.Module:
    """A freshly initialised model ``name`` (see ``model_factory``) for ``data``'s shape and classes.

    Initialisation depends only on ``seed``, so two models built with one seed start identical;
    the built-ins' normaliser is fitted to ``data``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = construct(name, data.shape, data.num_classes)
    normalizers = [m for m in model.modules() if isinstance(m, Normalize)]
    if normalizers:
        mean, std = channel_moments(data)
        for module in normalizers:
            module.mean.copy_(mean.view_as(module.mean))
            module.std.copy_(std.clamp_min(1e-3).view_as(module.std))
    return model


def save_model(model: nn.Module, path: Path) -> None:
    """Write the weights as safetensors, atomically (a crash leaves the old file or none)."""
    atomic_write_tensors(path, model.state_dict())


def read_weights(path: Path | str) -> dict[str, Tensor]:
    """The tensors of a safetensors weights file, refused in one line when unreadable or not finite.

    Separate from ``load_model`` so that a command checks a user's weights before it loads their data.
    """
    check_regular(path, "weights file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise PoisonlabError(f"{path}: not a readable safetensors file ({e})") from None
    broken = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if broken is not None:
        raise PoisonlabError(f"{path}: tensor {broken} holds NaN or infinity; expected finite weights")
    return state


def load_model(name: str, shape: Shape, num_classes: int, path: Path | str | None,
               state: dict[str, Tensor] | None = None) -> nn.Module:
    """Rebuild ``name`` and load its weights from a safetensors file (a TorchScript file may bring its own).

    ``state``: the file's tensors when ``read_weights`` already read them.
    """
    model = construct(name, shape, num_classes)
    if path is None:
        if name.endswith(SCRIPT_SUFFIXES):
            return model.eval()
        raise PoisonlabError(f"model {name}: expected --weights, a safetensors file of its trained weights")
    if state is None:
        state = read_weights(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    kinds = [k for k in expected if k in state and state[k].is_floating_point() != expected[k].is_floating_point()]
    if kinds:
        k = kinds[0]
        raise PoisonlabError(f"{path}: tensor {k} is {state[k].dtype}, expected {expected[k].dtype}")
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


def save_models(out: Path, architecture: str, data: Samples, models: dict[str, nn.Module]) -> list[str]:
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
    if not path.exists():
        raise PoisonlabError(f"{run_dir}: holds no {MODELS_FILE}, so no model to load (this run saved none)")
    check_regular(path, "models file")
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PoisonlabError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(spec, dict) or not {"architecture", "input_shape", "classes", "models"} <= set(spec):
        raise PoisonlabError(f"{path}: expected architecture, input_shape, classes and models")
    shape, classes, models = spec["input_shape"], spec["classes"], spec["models"]
    if not (isinstance(spec["architecture"], str)
            and isinstance(shape, list) and len(shape) == 3 and all(type(v) is int and v > 0 for v in shape)
            and isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
            and isinstance(models, dict) and models
            and all(isinstance(f, str) and Path(f).name == f and f.endswith(".safetensors") for f in models.values())):
        raise PoisonlabError(f"{path}: expected architecture (text), input_shape [C, H, W], classes (>= 2 names) and "
                             "models (name -> a .safetensors file in this folder)")
    return spec


def trusted_architecture(run_dir: Path, architecture: str, model: str | None) -> str:
    """A run folder's architecture, refused when it names code the caller did not name too (``--model``).

    A run folder may come from anyone; it never makes poisonlab import a module on its own.
    """
    if is_code_spec(architecture) and architecture != model:
        raise PoisonlabError(f"{run_dir}: its model is built by code, {architecture}; pass --model {architecture} "
                             "to import it (a run folder never imports code by itself)")
    return architecture


def load_run_model(run_dir: Path, which: str | None = None, model: str | None = None
                   ) -> tuple[nn.Module, str, dict[str, Any]]:
    """(model, its name, models.json) of a run folder; ``which`` names one (default: the backdoored one).

    ``model`` is the caller's own architecture spec, required when the folder's names code to import.
    """
    spec = read_models(run_dir)
    names = list(spec["models"])
    name = which or ("backdoored" if "backdoored" in names else names[-1])
    if name not in spec["models"]:
        raise PoisonlabError(f"{run_dir}: no model {name!r}; it holds {', '.join(names)}")
    shape = tuple(spec["input_shape"])
    architecture = trusted_architecture(run_dir, spec["architecture"], model)
    net = load_model(architecture, shape, len(spec["classes"]), run_dir / spec["models"][name])  # type: ignore[arg-type]
    return net, name, spec
