"""Batched feature extraction from a chosen layer of any classifier, read by forward hooks.

Scanners look at one class at a time; features are computed ``batch_size`` images at a time and
only the requested images' features are kept, so a full-dataset activation tensor never exists.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from poisonlab.core import Images, PoisonlabError, Samples, batches, inference_batch
from poisonlab.defenses.whitening import ClassStats, whitener
from poisonlab.training.trainer import device_of

LAYERS = ("auto", "penultimate", "pre-activation", "conv", "middle")
"""Named layers: the input of the last Linear (post-ReLU), the output of the Linear before it (pre-ReLU),
the input of the first Linear (the flattened output of the convolutional stack), ``middle`` (in an
``nn.Sequential``, the output of the child that holds the middle one of its trainable conv layers), and
``auto``: pre-activation where the model has two Linear layers, else middle in a deep ``nn.Sequential``
(at least ``DEEP`` conv layers), else penultimate. On MNIST poisoned at 5% by a 3x3 stamp poisonlab did not
draw, whitened Spectral Signatures ranked the poison at AUROC 0.79 in penultimate features and flagged none,
and at AUROC 1.000 (P 0.999, R 1.000) in pre-activation features; on poisonlab's own BadNets at 1% both
layers give P >= 0.99 at R 1.0. A deep net's pooled features hide a small trigger: on the clip-art set
(EfficientNet-Lite0 fine-tuned, BadNets 1%, a 12-px checkerboard, seed 0) the poison's class splits 4.7 clean
standard deviations in them and 32.6 at the middle (the output of block 8 of 16)."""

SCATTER_BYTES = 4 * 2**30
"""Most memory the per-class float64 scatter matrices of a scanned layer may take (beyond it: a clear error, not an
out-of-memory kill). EfficientNet-Lite0's middle at 64 px (1,792 features) takes 0.24 GiB for 10 classes; at 224 px
(21,952 features) it would take 36 GiB."""

DEEP = 8
"""Conv layers from which a single-Linear ``nn.Sequential`` is read at its middle by ``auto``."""


def _middle(model: nn.Sequential) -> int:
    """Index k of ``middle``: the output of ``model[k - 1]``, the child holding the middle trainable conv layer
    (the middle conv layer when none trains)."""
    owners = [i for i, child in enumerate(model) for m in child.modules() if isinstance(m, nn.Conv2d)]
    trainable = [i for i, child in enumerate(model) for m in child.modules()
                 if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    chosen = trainable or owners
    return chosen[len(chosen) // 2] + 1


def reads_middle(model: nn.Module, layer: str | int) -> bool:
    """Whether ``layer`` is ``middle``, or ``auto`` on a deep single-Linear ``nn.Sequential`` (read at its middle)."""
    return layer == "middle" or (layer == "auto" and isinstance(model, nn.Sequential)
                                 and sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= DEEP
                                 and sum(isinstance(m, nn.Linear) for m in model.modules()) == 1)


@dataclass(frozen=True)
class Tap:
    """Where a layer's features are read: the input or the output of one module of the model."""

    module: nn.Module
    reads_input: bool


def layer_tap(model: nn.Module, layer: str | int) -> Tap:
    """The module whose input or output holds the features of ``layer``, in any ``nn.Module``.

    ``layer`` is a name from LAYERS, a module's qualified name in ``model.named_modules()`` (its
    output), or, for an ``nn.Sequential``, an integer k (the output of ``model[:k]``).
    """
    if isinstance(layer, int):
        if not isinstance(model, nn.Sequential):
            raise PoisonlabError(f"feature layer {layer}: an index needs an nn.Sequential; name a module instead")
        if not 0 < layer < len(model):
            raise PoisonlabError(f"feature layer {layer}: expected an index in [1, {len(model) - 1}]")
        return Tap(model[layer - 1], reads_input=False)
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return Tap(modules[layer], reads_input=False)
    if reads_middle(model, layer):
        if not isinstance(model, nn.Sequential) or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            raise PoisonlabError(f"feature layer 'middle': expected an nn.Sequential with conv layers, got "
                                 f"{type(model).__name__}; name a module instead")
        return Tap(model[_middle(model) - 1], reads_input=False)
    if layer not in LAYERS:
        names = [n for n in modules if n][:6]
        raise PoisonlabError(f"feature layer {layer!r}: expected one of {', '.join(LAYERS)} or a module name "
                             f"of the model (e.g. {', '.join(names)})")
    linear = [m for m in modules.values() if isinstance(m, nn.Linear)]
    if not linear:
        raise PoisonlabError(f"model {type(model).__name__}: expected at least one nn.Linear to locate layer {layer!r}")
    if layer == "auto":
        layer = "pre-activation" if len(linear) >= 2 else "penultimate"
    if layer == "penultimate":
        return Tap(linear[-1], reads_input=True)
    if layer == "pre-activation":
        if len(linear) < 2:
            raise PoisonlabError("feature layer 'pre-activation': the model has a single Linear layer")
        return Tap(linear[-2], reads_input=False)
    return Tap(linear[0], reads_input=True)


class _Reached(Exception):
    """Raised by a forward hook once every tapped layer has run, so the rest of the model is skipped."""


def iter_taps(model: nn.Module, x: Images, taps: Sequence[Tap], batch_size: int | None = None
              ) -> Iterator[list[Tensor]]:
    """Yield, ``batch_size`` images at a time, what every tap reads (detached copies, in the taps' order).

    Forward hooks (pre-hooks for a module's input) read the tensors and stop the pass once the last
    of them is read, so only the layers before the deepest tap run, in any ``nn.Module``. Inputs go in
    channels-last, where CPU convolution and pooling are several times faster than on the layout a
    one-channel input leaves. Batches go to the model's device; what the taps read comes back to the CPU.
    """
    if batch_size is None:
        batch_size = inference_batch(x.shape[1:])
    if batch_size < 1:
        raise PoisonlabError(f"batch size {batch_size}: expected at least 1")
    got: dict[int, Tensor] = {}

    def keep(slot: int, value: Tensor) -> None:
        got.setdefault(slot, value.detach().cpu().clone())
        if len(got) == len(taps):
            raise _Reached

    hooks = [tap.module.register_forward_pre_hook(lambda _m, inputs, i=i: keep(i, inputs[0])) if tap.reads_input
             else tap.module.register_forward_hook(lambda _m, _inputs, output, i=i: keep(i, output))
             for i, tap in enumerate(taps)]
    was_training = model.training
    model.eval()
    device = device_of(model)
    try:
        with torch.no_grad():
            for batch in batches(x, batch_size):
                got.clear()
                batch = batch.to(device)
                try:
                    model(batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch)
                except _Reached:
                    pass
                if len(got) < len(taps):
                    raise PoisonlabError(f"model {type(model).__name__}: a tapped layer did not run in forward()")
                yield [got[k] for k in range(len(taps))]
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def iter_layers(
    model: nn.Module, x: Images, layers: Sequence[str | int], batch_size: int | None = None
) -> Iterator[list[Tensor]]:
    """Yield, ``batch_size`` images at a time, the flattened float features of every layer in ``layers``.

    The model runs once per batch: every layer's features come from the same forward pass.
    """
    for parts in iter_taps(model, x, [layer_tap(model, layer) for layer in layers], batch_size):
        yield [f.flatten(1).float() for f in parts]


def iter_features(
    model: nn.Module, x: Images, layer: str | int = "penultimate", batch_size: int | None = None
) -> Iterator[Tensor]:
    """Yield the flattened ``layer`` features of ``x``, ``batch_size`` images at a time."""
    for (f,) in iter_layers(model, x, [layer], batch_size):
        yield f


def features(model: nn.Module, x: Images, layer: str | int = "penultimate", batch_size: int | None = None
             ) -> Tensor:
    """The ``layer`` features of ``x`` as one (N, D) tensor; call it per class, not on a whole dataset."""
    parts = list(iter_features(model, x, layer, batch_size))
    return torch.cat(parts) if parts else torch.empty(0, 0)


@dataclass
class ClassPass:
    """What the data scanners learn from one batched pass over a dataset, class by class.

    ``stats`` are the per-class statistics of the scanned layer, ``means`` the (C, D') class means
    of the provenance layer (computed on the way, as it lies before the scanned layer), and
    ``kept`` the scanned features of each class while their total fits in the ``keep_mb`` budget.
    A class not kept is recomputed batch by batch when asked for, so memory stays within the
    budget plus one class's features however large the dataset, and a dataset that fits is read
    through the model once instead of twice.
    """

    model: nn.Module
    data: Samples
    layer: str | int
    batch_size: int | None
    stats: ClassStats
    means: Tensor
    kept: dict[int, Tensor]

    @staticmethod
    def run(model: nn.Module, data: Samples, layer: str | int, provenance_layer: str | int, batch_size: int | None,
            keep_mb: float) -> ClassPass:
        stats, kept, budget = ClassStats(), {}, keep_mb * 2**20
        sums: Tensor | None = None
        for k in range(data.num_classes):
            idx = torch.nonzero(data.y == k).flatten()
            parts: list[Tensor] = []
            for f, early in iter_layers(model, data.x[idx], [layer, provenance_layer], batch_size):
                if sums is None:
                    need = f.shape[1] ** 2 * 8 * data.num_classes
                    if need > SCATTER_BYTES:
                        raise PoisonlabError(
                            f"feature layer {layer!r}: {f.shape[1]} features an image, and a data scanner keeps a "
                            f"{f.shape[1]}x{f.shape[1]} scatter per class ({need / 2**30:.1f} GiB for "
                            f"{data.num_classes} classes); expected at most {SCATTER_BYTES / 2**30:.0f} GiB: scan a "
                            "later layer (layer=...) or smaller images")
                    sums = torch.zeros(data.num_classes, early.shape[1], dtype=torch.float64)
                stats.add(k, f)
                sums[k] += early.double().sum(0)
                parts.append(f)
            size = sum(f.numel() * f.element_size() for f in parts)
            if parts and size <= budget:
                kept[k], budget = torch.cat(parts), budget - size
        if sums is None:
            raise PoisonlabError("data scanner: expected at least one sample")
        means = sums / torch.bincount(data.y, minlength=data.num_classes).clamp_min(1).double()[:, None]
        return ClassPass(model, data, layer, batch_size, stats, means, kept)

    def whitening(self, whiten: bool) -> Tensor:
        """The (D, d) whitener of the pooled within-class covariance, or the identity when ``whiten`` is off."""
        if not whiten:
            return torch.eye(next(iter(self.stats.sums.values())).shape[0], dtype=torch.float64)
        return whitener(self.stats.pooled_covariance())

    def whitened(self, k: int, w: Tensor) -> tuple[Tensor, Tensor]:
        """Class ``k``'s features centred and whitened by ``w`` (n, d), and their covariance (d, d).

        The covariance comes from the pass's statistics (it equals z.T z / n) without the (n, d) product.
        """
        z = ((self.features(k) - self.stats.mean(k).float()) @ w.float()).double()
        return z, w.T @ self.stats.covariance(k) @ w

    def indices(self, k: int) -> Tensor:
        """Positions in the dataset of class ``k``'s samples, in the order of its features."""
        return torch.nonzero(self.data.y == k).flatten()

    def features(self, k: int) -> Tensor:
        """Class ``k``'s scanned features: kept from the pass, or recomputed batch by batch."""
        if k in self.kept:
            return self.kept[k]
        return features(self.model, self.data.x[self.indices(k)], self.layer, self.batch_size)
