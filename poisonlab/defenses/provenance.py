"""Where flagged samples come from: do they look like another class in the model's early features?

A class can be genuinely bimodal (MNIST's 5s are, in whitened penultimate features: a split as
wide as the poison's). What sets a dirty-label poison apart is provenance: its samples are
images of other classes, so in the convolutional features, before the layers that learned the
trigger shortcut, most of them lie nearer another class's mean than their own label's. A natural
sub-population stays nearest its own class (``foreign_share``). A deep net read at its middle
(``features.reads_middle``) needs another test: its pooled head features already carry the learned trigger and
its middle features do not sort images by nearest class means, so there the model itself is asked what the far
side is without what sets it apart from its class (``counterfactual_share``).

Which of a widely split class's two groups is the poison is read in the input itself (``InputStats``,
``poison_group``): a dirty-label poison is an image of another class with a small trigger, so its pixels lie
about one class radius from another class's mean, while the class's own images are atypical of every other
class. This holds when the poison outnumbers the class's own rows (10% blend poison in a 10-class set is half
of its target class), where the rule of the more spread-out group picks the class's own rows; the input is read
rather than a convolutional layer, because a trigger the model has learned can dominate its early features.
Where the two groups do not differ clearly (natural photographs are far from every class mean), it says nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poisonlab.core import Images, Samples, batches, inference_batch
from poisonlab.defenses.features import ClassPass, iter_features, layer_tap, reads_middle
from poisonlab.defenses.split import Gate
from poisonlab.training.trainer import predict

THUMBNAIL = 32
"""Images are compared as average-pooled thumbnails of at most this many pixels a side."""

DECISIVE = 0.9
"""Largest ratio of two groups' median distances to other classes at which the nearer group is the poison.
Measured medians (poison, class's own rows): 10% blend on MNIST 0.85 and 1.19; 10% BadNets (3 x 3 patch) 1.04 and
1.19 (ratio 0.88); 5% checkerboard 1.00 and 1.20; a 20% patch on the synthetic shapes 1.58 and 1.54 (no call: the
spread rule decides, rightly)."""


def foreign_share(model: nn.Module, x: Images, label: int, means: Tensor, count: int, layer: str | int,
                  batch_size: int | None = None) -> float:
    """Share of images ``x`` (all labelled ``label``) whose ``layer`` features are nearest another class's mean.

    ``means`` are the (C, D) class means of ``layer`` and ``count`` the number of ``label`` images its
    mean was taken over. The images judged are taken out of their own class's mean first: a tight group
    of poison far from its class (20% of the class, 20 standard deviations out, in the mid-level
    features of a fine-tuned EfficientNet) otherwise drags that mean to itself and looks native. That
    takes a first pass for their sum, so no (N, D) feature matrix is ever held.
    """
    if len(x) == 0:
        return 0.0
    means = means.clone()
    if count > len(x):
        total = torch.zeros(means.shape[1], dtype=torch.float64)
        for f in iter_features(model, x, layer, batch_size):
            total += f.double().sum(0)
        means[label] = (means[label] * count - total) / (count - len(x))
    nearest = torch.cat([torch.cdist(f.double(), means).argmin(1) for f in iter_features(model, x, layer, batch_size)])
    return float((nearest != label).double().mean())


def counterfactual_share(model: nn.Module, seen: ClassPass, label: int, side: Tensor) -> float:
    """Share of the rows ``side`` of class ``label`` that the model assigns to another class once what sets them
    apart from the rest of their class is taken out of their features at the scanned layer.

    Each side row's feature is moved onto the rest of its class along the line between the two groups' means
    (its offset along that line is removed; every other direction is kept), and the model runs on from there.
    A dirty-label poison is labelled ``label`` by its trigger alone, so without that offset the model reads the
    image's own class; a natural sub-population of the class keeps the features that make it ``label``. Nearest
    class means cannot tell these apart in a deep net: on the clip-art set (EfficientNet-Lite0, BadNets 1%, seed 0)
    the poison's pooled head features lie nearest its target class (0% foreign) while, at the middle of the net, a
    clean class's far side lies nearest other classes (99%); this edit moves 93% of the poison to other classes and
    0% of the natural sub-population (recreation, 173 of 320 images).
    """
    idx = seen.indices(label)
    inside = torch.isin(idx, side)
    if not bool(inside.any()) or bool(inside.all()):
        return 0.0
    f = seen.features(label).double()
    rest = f[~inside].mean(0)
    gap = f[inside].mean(0) - rest
    if float(gap.norm()) == 0.0:
        return 0.0
    unit, origin = (gap / gap.norm()).float(), rest.float()

    def edit(value: Tensor) -> Tensor:
        flat = value.flatten(1)
        u, o = unit.to(value.device), origin.to(value.device)
        return (flat - ((flat - o) @ u)[:, None] * u).reshape(value.shape)

    tap = layer_tap(model, seen.layer)
    hook = (tap.module.register_forward_pre_hook(lambda _m, args: (edit(args[0]), *args[1:])) if tap.reads_input
            else tap.module.register_forward_hook(lambda _m, _args, output: edit(output)))
    try:
        predicted = predict(model, seen.data.x[side], seen.batch_size)
    finally:
        hook.remove()
    return float((predicted != label).double().mean())


MIN_FOREIGN = {"nearest-mean": 0.5, "counterfactual": 0.8}
"""Default share of a class's far side that must look like other classes for the class to be flagged, per
provenance test. The counterfactual asks about training images the model fits, so a dirty-label poison without
its offset is read as its source class almost always (clip-art EfficientNet-Lite0, BadNets 1%: 93% and 88% in two
seeds), while a clean class's small far side near another class flips in part (60-75% on the clean models of
the same seeds)."""


@dataclass(frozen=True)
class Origin:
    """How a data scanner asks where a class's far side comes from, settled once per scan.

    ``counterfactual``: by ``counterfactual_share`` at the scanned layer ``layer``; else by ``foreign_share`` on the
    class means of ``layer`` (which ``ClassPass.run`` computes on its way). ``min_foreign`` is the share of the far
    side that must look like other classes for the class to be flagged.
    """

    layer: str | int
    counterfactual: bool
    min_foreign: float

    @staticmethod
    def of(model: nn.Module, layer: str | int, provenance_layer: str | int, min_foreign: float | None) -> Origin:
        """``provenance_layer`` ``auto``: the counterfactual on a deep net read at its middle, else the nearest means
        of ``conv``; ``counterfactual`` asks for it on any model; any other value is a layer for nearest means.
        ``min_foreign`` None takes the test's default (``MIN_FOREIGN``)."""
        counterfactual = provenance_layer == "counterfactual" or (provenance_layer == "auto"
                                                                  and reads_middle(model, layer))
        means = layer if counterfactual else "conv" if provenance_layer == "auto" else provenance_layer
        bar = MIN_FOREIGN["counterfactual" if counterfactual else "nearest-mean"] if min_foreign is None \
            else min_foreign
        return Origin(means, counterfactual, bar)

    def gate(self, class_threshold: float, min_separation: float) -> Gate:
        """The class gate with this test's bar; the counterfactual judges every widely split class by origin."""
        return Gate(class_threshold, min_separation, self.min_foreign, by_origin=self.counterfactual)

    def share(self, model: nn.Module, seen: ClassPass, label: int, side: Tensor) -> float:
        """Share of the rows ``side`` of class ``label`` that look like another class."""
        if self.counterfactual:
            return counterfactual_share(model, seen, label, side)
        return foreign_share(model, seen.data.x[side], label, seen.means, seen.stats.counts[label], self.layer,
                             seen.batch_size)


def thumbnails(x: Tensor) -> Tensor:
    """Images (N, C, H, W) average-pooled to at most ``THUMBNAIL`` pixels a side, flattened, as float64."""
    h, w = x.shape[-2:]
    if h > THUMBNAIL or w > THUMBNAIL:
        x = F.adaptive_avg_pool2d(x.float(), (min(h, THUMBNAIL), min(w, THUMBNAIL)))
    return x.flatten(1).double()


@dataclass(frozen=True)
class InputStats:
    """Every class's mean thumbnail and its root-mean-square distance to it (the class radius)."""

    means: Tensor
    radii: Tensor
    counts: Tensor

    @staticmethod
    def of(data: Samples, batch_size: int | None = None) -> InputStats:
        """One pass over ``data``, ``batch_size`` images at a time (default ``core.inference_batch``)."""
        size = batch_size or inference_batch(data.shape)
        sums: Tensor | None = None
        squares = torch.zeros(data.num_classes, dtype=torch.float64)
        start = 0
        for batch in batches(data.x, size):
            t = thumbnails(batch)
            y = data.y[start : start + len(batch)]
            start += len(batch)
            if sums is None:
                sums = torch.zeros(data.num_classes, t.shape[1], dtype=torch.float64)
            sums.index_add_(0, y, t)
            squares.index_add_(0, y, t.square().sum(1))
        counts = torch.bincount(data.y, minlength=data.num_classes)
        assert sums is not None, "a data scanner scans at least one sample"
        means = sums / counts.clamp_min(1).double()[:, None]
        radii = (squares / counts.clamp_min(1).double() - means.square().sum(1)).clamp_min(0).sqrt()
        return InputStats(means, radii, counts)

    def other_class_distance(self, x: Images, k: int, batch_size: int | None = None) -> Tensor:
        """Each image's distance to the nearest mean of a class other than ``k``, in that class's radii."""
        others = [j for j in range(len(self.means)) if j != k and int(self.counts[j]) > 0]
        if not others:
            return torch.full((len(x),), float("inf"), dtype=torch.float64)
        means, radii = self.means[others], self.radii[others].clamp_min(1e-12)
        return torch.cat([(torch.cdist(thumbnails(b), means) / radii).min(1).values
                          for b in batches(x, batch_size or inference_batch(x.shape[1:]))])


def poison_group(stats: InputStats, x: Images, k: int, labels: Tensor, batch_size: int | None = None) -> int | None:
    """Which group (label 0 or 1) of class ``k``'s images ``x`` lies nearer other classes in the input: the group
    whose median ``other_class_distance`` is at most ``DECISIVE`` times the other's; None when neither is."""
    distance = stats.other_class_distance(x, k, batch_size)
    medians = [float(distance[labels == j].median()) if bool((labels == j).any()) else float("inf") for j in (0, 1)]
    if medians[1] <= DECISIVE * medians[0]:
        return 1
    if medians[0] <= DECISIVE * medians[1]:
        return 0
    return None


@dataclass
class InputSides:
    """``poison_group`` on the classes of one data set; the class statistics are computed at the first question
    (a scan whose classes all split narrowly asks none)."""

    data: Samples
    batch_size: int | None = None

    @cached_property
    def stats(self) -> InputStats:
        return InputStats.of(self.data, self.batch_size)

    def poison_group(self, idx: Tensor, k: int, labels: Tensor) -> int | None:
        """Which group (0 or 1 in ``labels``) of the rows ``idx`` of class ``k`` lies nearer other classes."""
        return poison_group(self.stats, self.data.x[idx], k, labels, self.batch_size)
