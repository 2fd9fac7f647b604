"""The few types every stage of the pipeline shares (see DESIGN.md)."""

from __future__ import annotations

import math
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


class PoisonlabError(ValueError):
    """A user-facing error: one line that names the thing and what was expected."""


def check_regular(path: Path | str, what: str = "image file") -> None:
    """Refuse anything but an existing regular file (missing, folder, FIFO, device, dangling or looping link).

    Reading a FIFO would block forever and a device could stream without end, so only plain files are opened.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PoisonlabError(f"{path}: no such {what}") from None
    except OSError as e:
        raise PoisonlabError(f"{path}: cannot read this {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise PoisonlabError(f"{path}: expected {article} {what}, found {kind}")


class Labelled:
    """What ImageSet and LazyImageSet share: int64 labels beside the images, class names, the image shape."""

    x: Any
    y: Tensor
    classes: tuple[str, ...]

    def check_labels(self) -> None:
        if self.y.ndim != 1 or self.y.dtype != torch.int64:
            raise PoisonlabError(f"labels: expected a 1-D int64 tensor, got {self.y.dtype} {tuple(self.y.shape)}")
        if len(self.x) != len(self.y):
            raise PoisonlabError(f"images and labels differ in length: {len(self.x)} vs {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True)
class ImageSet(Labelled):
    """Images in memory: ``x`` float32 in [0, 1] shaped (N, C, H, W), ``y`` int64 labels, class names."""

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise PoisonlabError(f"images: expected shape (N, C, H, W), got {tuple(self.x.shape)}")
        if self.x.dtype != torch.float32:
            raise PoisonlabError(f"images: expected float32, got {self.x.dtype}")
        self.check_labels()

    def subset(self, index: Tensor | slice) -> ImageSet:
        """The images at ``index`` (a long index, a boolean mask or a slice)."""
        return ImageSet(self.x[index], self.y[index], self.classes)


class ImageSource(Protocol):
    """Images kept outside memory (files on disk) and decoded a batch at a time.

    Indexing selects rows without decoding anything; ``batches`` decodes them in order (or in
    ``order``, positions into this source), ``batch_size`` float32 images in [0, 1] at a time.
    """

    @property
    def shape(self) -> torch.Size: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Tensor | slice) -> ImageSource: ...

    def batches(self, batch_size: int, order: Tensor | None = None) -> Iterator[Tensor]: ...


Images = Tensor | ImageSource
"""Images in memory, or kept in their files and decoded a batch at a time."""


BATCH_VALUES = 2**21
"""Most input values one inference batch holds (8 MB as float32): ``inference_batch``'s budget."""


def inference_batch(image_shape: Sequence[int]) -> int:
    """Images per batch for prediction and feature reads: 512 up to 4,096 values an image, fewer above.

    512 is the fastest batch measured for MNIST (``predict``'s docstring); larger images get the largest
    power of two whose batch holds at most ``BATCH_VALUES`` input values, at least 16, because activations
    grow with the batch: a 10,100-image scan of 64 x 64 RGB images with small-cnn peaked at 798 MB RSS at
    batch 512 and 500 MB at 128, and ran faster (12.0 s vs 8.8 s).
    """
    values = max(1, math.prod(int(v) for v in image_shape))
    fits = max(16, min(512, BATCH_VALUES // values))
    return 1 << (fits.bit_length() - 1)


def batches(x: Images, batch_size: int, order: Tensor | None = None) -> Iterator[Tensor]:
    """``x``, ``batch_size`` images at a time, in row order or in ``order`` (positions into ``x``)."""
    if not isinstance(x, Tensor):
        yield from x.batches(batch_size, order)
        return
    for start in range(0, len(x) if order is None else len(order), batch_size):
        yield x[start : start + batch_size] if order is None else x[order[start : start + batch_size]]


@dataclass(frozen=True)
class LazyImageSet(Labelled):
    """An ImageSet whose images stay in their files (``x`` an ImageSource) until a batch of them is needed.

    A folder of 100,000 RGB images of 64 x 64 pixels is 4.9 GB as float32; training, prediction and the
    data scanners read such a set batch by batch, so their memory follows the batch, not the dataset.
    """

    x: ImageSource
    y: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        self.check_labels()

    def subset(self, index: Tensor | slice) -> LazyImageSet:
        """The rows at ``index``, still undecoded."""
        return LazyImageSet(self.x[index], self.y[index], self.classes)

    def load(self) -> ImageSet:
        """Every image decoded into memory."""
        parts = list(batches(self.x, inference_batch(self.shape)))
        c, h, w = self.shape
        return ImageSet(torch.cat(parts) if parts else torch.empty(0, c, h, w), self.y, self.classes)


Samples = ImageSet | LazyImageSet
"""A labelled image set, in memory or decoded a batch at a time."""


def in_memory(data: Samples) -> ImageSet:
    """``data`` with every image decoded into memory, for the stages that change or mix images."""
    return data if isinstance(data, ImageSet) else data.load()


Trigger = Callable[[Tensor, Tensor | None], Tensor]
"""(images, attacker's target classes or None) -> stamped copy of the images."""

TargetMap = Callable[[Tensor], Tensor]
"""True labels -> the classes the attacker wants those images read as."""

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""(model, images, labels) -> the loss the trainer minimises."""


@dataclass(frozen=True)
class AllToOne:
    """Every input to ``target``."""

    target: int

    def __call__(self, y: Tensor) -> Tensor:
        return torch.full_like(y, self.target)


@dataclass(frozen=True)
class AllToAll:
    """Class i to class i + 1 mod ``num_classes``."""

    num_classes: int

    def __call__(self, y: Tensor) -> Tensor:
        return (y + 1) % self.num_classes


def check_target(target: int, num_classes: int, what: str) -> None:
    """Refuse a target class outside the dataset's classes."""
    if not 0 <= target < num_classes:
        raise PoisonlabError(f"{what} target {target}: expected a class in [0, {num_classes - 1}]")


SEED_LIMIT = 2**63
"""Seeds are 0 <= seed < 2**63: torch's generators take a signed 64-bit integer."""


def check_seed(seed: int, name: str = "seed") -> None:
    """Refuse a seed torch's generators cannot take (negative, or 2**63 and above)."""
    require(0 <= seed < SEED_LIMIT, name, seed, "an integer in [0, 2**63)")


def require(ok: bool, name: str, value: Any, expected: str) -> None:
    """A config check: unless ``ok``, the one-line error ``NAME: VALUE; expected EXPECTED``."""
    if not ok:
        raise PoisonlabError(f"{name}: {value!r}; expected {expected}")


def check_budget(rate: float, count: int | None) -> None:
    """Reject a poison rate outside (0, 1) or a count below 1: the one check of a poisoning budget."""
    if count is not None and count < 1:
        raise PoisonlabError(f"poison count {count}: expected at least 1")
    if count is None and not 0.0 < rate < 1.0:
        raise PoisonlabError(f"poison rate {rate}: expected a fraction in (0, 1)")


def poison_count(n: int, rate: float, count: int | None = None) -> int:
    """How many of ``n`` samples to poison: ``count`` when given, else round(rate * n)."""
    check_budget(rate, count)
    if count is not None:
        return count
    k = round(rate * n)
    if k < 1:
        raise PoisonlabError(f"poison rate {rate} of {n} samples poisons no sample; raise the rate")
    return k


def target_class_rows(train: ImageSet, target: int, rate: float, count: int | None, rng: torch.Generator,
                      attack: str) -> Tensor:
    """The sorted rows of class ``target`` a clean-label ``attack`` alters: ``poison_count`` of them, drawn from
    ``rng``; a budget beyond that class's images is refused in one line (such an attack changes no label)."""
    check_target(target, train.num_classes, attack)
    n = poison_count(len(train), rate, count)
    pool = torch.nonzero(train.y == target).flatten()
    if n > len(pool):
        raise PoisonlabError(f"{attack} poison budget {n} exceeds the {len(pool)} images of target class {target}; "
                             "the attack only alters that class's images")
    return pool[torch.randperm(len(pool), generator=rng)[:n]].sort().values


def stamped(test: ImageSet, trigger: Trigger, target_map: TargetMap) -> ImageSet:
    """Every image of ``test`` stamped with ``trigger``, labelled with the attacker's target.

    Aligned with ``test``: image i is test image i stamped, so ``test.y`` gives the true class.
    Attack success rate counts only images whose true class differs from the target.
    """
    target = target_map(test.y)
    return ImageSet(trigger(test.x, target), target, test.classes)


@dataclass(frozen=True)
class Poisoned:
    """A poisoned training set, the ground-truth indices of the samples an attack touched, and how to trigger it."""

    data: ImageSet
    indices: Tensor
    trigger: Trigger
    target_map: TargetMap

    def triggered(self, test: ImageSet) -> ImageSet:
        """``test`` stamped with the trigger and labelled with the attacker's targets (see ``stamped``)."""
        return stamped(test, self.trigger, self.target_map)

    @property
    def touched(self) -> Tensor:
        """Every row the attack changed: ``indices`` plus rows altered without a backdoor (none by default)."""
        return self.indices

    @property
    def target(self) -> int | None:
        """The attacker's one target class (all-to-one), else None."""
        return self.target_map.target if isinstance(self.target_map, AllToOne) else None


@runtime_checkable
class DataAttack(Protocol):
    """Poisons a training set; never trains or writes files."""

    def poison(self, train: ImageSet, rng: torch.Generator) -> Poisoned: ...


Start = Literal["fresh", "clean", "previous"]


@dataclass(frozen=True)
class Phase:
    """One stage of a training-time attack, run by the shared trainer.

    ``start``: a freshly initialised model, a copy of the clean reference model, or the previous
    phase's model. ``epochs`` and ``lr`` override the victim's recipe (None keeps it); the phase
    trains with seed ``victim seed + seed_offset``. ``before`` runs on (model, training images)
    before training, ``after`` on the model after it.
    """

    name: str
    loss: LossFn | None = None
    start: Start = "previous"
    epochs: int | None = None
    lr: float | None = None
    seed_offset: int = 0
    before: Callable[[nn.Module, Tensor], object] | None = None
    after: Callable[[nn.Module], object] | None = None


@runtime_checkable
class TrainingAttack(Protocol):
    """Shapes training itself (compression-artifact backdoors) through loss terms in declared phases.

    ``deployment`` is the deployment spec the attack aims at (measured first); ``backdoor`` gives the
    unchanged training set with the trigger and target map that measure the attack.
    """

    @property
    def deployment(self) -> str | None: ...

    def backdoor(self, train: ImageSet) -> Poisoned: ...

    def phases(self) -> Sequence[Phase]: ...


@dataclass(frozen=True)
class WeightGrid:
    """The integer grid a deployment rounds weights to: ``bits`` symmetric, per output channel or per tensor."""

    bits: int
    per_channel: bool
    linear_only: bool = False


@dataclass(frozen=True)
class Pruning:
    """What a pruning deployment removes: ``method`` (global, layer, filters) at ``ratio``."""

    method: str
    ratio: float


class Deployment(Protocol):
    """A transformation a model undergoes before use (int8, pruning, fp16).

    ``weight_grid`` / ``pruning`` say what it does to the weights (None when it does not quantize /
    prune), so attacks and checks read them instead of inspecting the class. Static int8 needs
    ``calibration`` images. ``stand_in`` is a differentiable model computing (nearly) what the
    deployed one does, or None when that is the float model itself.
    """

    name: str
    weight_grid: WeightGrid | None
    pruning: Pruning | None

    def __call__(self, model: nn.Module, calibration: Tensor | None = None) -> nn.Module: ...

    def stand_in(self, model: nn.Module, deployed: nn.Module) -> nn.Module | None: ...


@dataclass
class Verdict:
    """What a defense returns: per-sample (data) or per-class (model) scores, a flagged set, a repaired model."""

    scores: Tensor | None = None
    flagged: Tensor | None = None
    model: nn.Module | None = None
    details: dict[str, Any] = field(default_factory=dict)


DefenseKind = Literal["data-scanner", "input-filter", "model-scanner", "mitigation"]


@dataclass(frozen=True)
class Evidence:
    """What a mitigation may use: the defender's clean images, the training set, earlier verdicts, a refit.

    ``data_scans`` / ``model_scans`` hold earlier data and model scanners' verdicts by defense name,
    in the order they ran. ``refit`` trains the victim's architecture with its recipe and seed.
    """

    clean: ImageSet
    train: ImageSet | None = None
    data_scans: Mapping[str, Verdict] = field(default_factory=dict)
    model_scans: Mapping[str, Verdict] = field(default_factory=dict)
    refit: Callable[[ImageSet], nn.Module] | None = None


class DataScanner(Protocol):
    """Scores every training sample with a model trained on it; flags the ones judged poisoned."""

    kind: ClassVar[DefenseKind]

    def scan(self, model: nn.Module, data: Samples) -> Verdict: ...


class InputFilter(Protocol):
    """Fitted on clean images, flags incoming inputs judged triggered."""

    kind: ClassVar[DefenseKind]

    def fit(self, model: nn.Module, clean: ImageSet) -> InputFilter: ...

    def detect(self, model: nn.Module, x: Tensor) -> Verdict: ...


class ModelScanner(Protocol):
    """Judges a model from clean images alone: per-class scores, flagged (target) classes."""

    kind: ClassVar[DefenseKind]

    def scan(self, model: nn.Module, data: ImageSet) -> Verdict: ...


class Mitigation(Protocol):
    """Returns a repaired copy of the model (``Verdict.model``); ``requires`` names a defense kind or name
    that must have run before it (None: nothing)."""

    kind: ClassVar[DefenseKind]

    def requires(self) -> str | None: ...

    def repair(self, model: nn.Module, evidence: Evidence) -> Verdict: ...
