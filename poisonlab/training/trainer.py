"""Train a classifier straight from in-memory tensors, deterministically for a seed, with a progress bar."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor, nn

from poisonlab.core import Images, ImageSet, LossFn, Phase, PoisonlabError, Samples, batches, inference_batch, require


def resolve_device(spec: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (a GPU when one is visible) as a device; one line when absent."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise PoisonlabError(f"device {spec!r}: expected cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise PoisonlabError(f"device {spec!r}: expected cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PoisonlabError(f"device {spec!r}: no CUDA GPU is visible to torch on this machine; use cpu or auto")
    return device


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters (or buffers) live; CPU for a model that has none."""
    tensor: Tensor | None = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


MAX_EPOCHS = 10_000
"""More epochs than any recipe in the field uses: a larger value is a typo that would train for ever."""


@dataclass(frozen=True)
class Recipe:
    """How a model is trained; the same recipe and seed give the same weights on the same machine."""

    epochs: int = field(default=2, metadata={"help": "training epochs"})
    batch_size: int = field(default=128, metadata={"help": "minibatch size"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (Adam, one-cycle)"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    device: str = field(default="cpu", metadata={"help": "where to train: cpu, cuda, cuda:N or auto"})

    def __post_init__(self) -> None:
        resolve_device(self.device)
        require(1 <= self.epochs <= MAX_EPOCHS, "epochs", self.epochs, f"an integer in [1, {MAX_EPOCHS}]")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.lr > 0, "lr", self.lr, "a number > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")


def owned_recipe(owner: str, epochs: int, batch_size: int, lr: float, device: str) -> Recipe:
    """A ``Recipe`` built from a defense's or attack's own settings; a bad setting's error is prefixed by ``owner``."""
    try:
        return Recipe(epochs=epochs, batch_size=batch_size, lr=lr, device=device)
    except PoisonlabError as e:
        raise PoisonlabError(f"{owner} {e}") from None


def cross_entropy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The plain training loss."""
    return F.cross_entropy(model(x), y)


def train(
    model: nn.Module,
    data: Samples,
    recipe: Recipe = Recipe(),
    seed: int = 0,
    loss_fn: LossFn = cross_entropy,
    progress: bool = True,
    description: str = "training",
) -> nn.Module:
    """Train ``model`` in place on ``data`` and return it in eval mode.

    Adam with a one-cycle learning-rate schedule over ``recipe.epochs``; batches are drawn by a
    generator seeded with ``seed``. ``loss_fn(model, x, y)`` lets a training-time attack add its
    loss terms without owning the loop. Uses channels-last memory, which mkldnn runs fastest on CPU.
    On ``recipe.device`` each minibatch is copied there; the trained model comes back on the CPU.
    Images kept in their files (a LazyImageSet) are decoded minibatch by minibatch, in the same order.
    """
    gen = torch.Generator().manual_seed(seed)
    device = resolve_device(recipe.device)
    x = data.x.contiguous(memory_format=torch.channels_last) if isinstance(data, ImageSet) else data.x
    model.to(device, memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    trainable = [p for p in model.parameters() if p.requires_grad]  # a fine-tuned model's frozen backbone stays out
    if not trainable:
        raise PoisonlabError(f"{description}: the model has no trainable parameters (all have requires_grad=False)")
    opt = torch.optim.Adam(trainable, lr=recipe.lr, weight_decay=recipe.weight_decay)
    per_epoch = -(-len(data) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.epochs * per_epoch)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with (
        torch.random.fork_rng(devices=[]),
        Progress(*columns, console=Console(stderr=True), disable=not progress, transient=True) as bar,
    ):
        torch.manual_seed(seed)
        task = bar.add_task(description, total=recipe.epochs * per_epoch, loss=float("nan"))
        for _ in range(recipe.epochs):
            order = torch.randperm(len(data), generator=gen)
            for start, batch in zip(range(0, len(data), recipe.batch_size), batches(x, recipe.batch_size, order),
                                    strict=True):
                idx = order[start : start + recipe.batch_size]
                batch = batch.to(device).contiguous(memory_format=torch.channels_last)
                loss = loss_fn(model, batch, data.y[idx].to(device))
                if not torch.isfinite(loss):
                    raise PoisonlabError(f"{description}: loss became {loss.item()}; lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                bar.update(task, advance=1, loss=loss.item())
    return model.cpu().eval()


def _logits_by_batch(model: nn.Module, x: Images, batch_size: int | None) -> Iterator[tuple[int, Tensor]]:
    """(first row, logits) of every batch of ``x``, the model in eval mode (its mode is restored after)."""
    if batch_size is None:
        batch_size = inference_batch(x.shape[1:])
    was_training = model.training
    model.eval()
    device = device_of(model)
    start = 0
    try:
        for batch in batches(x, batch_size):
            yield start, model(batch.to(device).contiguous(memory_format=torch.channels_last))
            start += len(batch)
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(model: nn.Module, x: Images, batch_size: int | None = None) -> Tensor:
    """Predicted classes for images ``x``, computed in batches (default: ``core.inference_batch``).

    512 is the fastest batch measured on 2 CPU cores for MNIST (bench/evaluation.py: the BadNets CNN on
    10,000 MNIST images takes 0.29 s at 512 and 0.61 s at 2048, whose activations outgrow the cache);
    larger images get smaller batches. Batches go to the model's device; the predictions come back to the CPU.
    """
    # filled in place: a small tensor kept per batch pinned freed heap between batches, and predicting 20,000
    # 64 px images from files grew the process by 230 MB
    out = torch.empty(len(x), dtype=torch.int64)
    for start, logits in _logits_by_batch(model, x, batch_size):
        out[start : start + len(logits)] = logits.argmax(1)
    return out


@torch.no_grad()
def predict_confident(model: nn.Module, x: Images, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """(predicted classes, their softmax probabilities) for images ``x``, batched as ``predict``."""
    labels = torch.empty(len(x), dtype=torch.int64)
    confidence = torch.empty(len(x))
    for start, logits in _logits_by_batch(model, x, batch_size):
        top = torch.softmax(logits.float(), 1).max(1)
        labels[start : start + len(logits)] = top.indices
        confidence[start : start + len(logits)] = top.values
    return labels, confidence


def train_phases(new_model: Callable[[], nn.Module], data: ImageSet, phases: Sequence[Phase], clean: nn.Module | None,
                 recipe: Recipe, seed: int, progress: bool = False) -> nn.Module:
    """A training-time attack's model: each phase trained by ``train``, in order (see ``Phase``).

    ``new_model`` builds a freshly initialised model; ``recipe`` and ``seed`` are the victim's, which a
    phase may override (epochs, lr) or offset (seed).
    """
    model: nn.Module | None = None
    for phase in phases:
        if phase.start == "fresh":
            model = new_model()
        elif phase.start == "clean":
            if clean is None:
                raise PoisonlabError(f"training attack phase {phase.name!r}: starts from the clean model, none given")
            model = copy.deepcopy(clean)
        if model is None:
            raise PoisonlabError(f"training attack phase {phase.name!r}: no model to continue from")
        phase_recipe = dataclasses.replace(recipe, epochs=phase.epochs or recipe.epochs, lr=phase.lr or recipe.lr)
        if phase.before is not None:
            phase.before(model, data.x)
        train(model, data, phase_recipe, seed + phase.seed_offset, loss_fn=phase.loss or cross_entropy,
              progress=progress, description=phase.name)
        if phase.after is not None:
            phase.after(model)
    if model is None:
        raise PoisonlabError("training attack: declares no phase")
    return model.eval()
