"""Universal backdoors (Schneider, Lukas, Kerschbaum 2023, arXiv 2312.00157, ICLR 2024).

One small poisoning campaign lets the attacker send any input to any class. Each class k gets an
n-bit code from its position in a surrogate's latent space (LDA on surrogate embeddings, bit j set
where the class centroid lies above the global mean on component j); the trigger for k writes k's
code into the image (``poisonlab.triggers.encoding``). Because neighbouring classes share bits,
poison for one class also teaches the triggers of its neighbours (inter-class transferability).

The baseline, multi-target BadNets, is the same attack with random codes: same budget, same
trigger geometry, no latent structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from poisonlab.attacks.surrogate import (
    EfficientNetLite0,
    Embedder,
    FeatureMaps,
    feature_maps,
    penultimate,
    sample_per_class,
    train_surrogate,
)
from poisonlab.core import ImageSet, Poisoned, PoisonlabError, check_budget, poison_count
from poisonlab.metrics import accuracy
from poisonlab.registry import ATTACKS
from poisonlab.training import Recipe, predict
from poisonlab.triggers.encoding import BlendGrid, PatchGrid

TriggerKind = Literal["blend", "patch"]
Threshold = Literal["mean", "split"]


def check_threshold(threshold: str) -> None:
    """Refuse a bit rule other than ``Threshold``'s, before any surrogate is trained."""
    if threshold not in ("mean", "split"):
        raise PoisonlabError(f"LDA code threshold {threshold!r}: expected mean or split")


def split_point(values: ArrayLike) -> float:
    """The cut between the two groups of ``values`` that best separates them (1-D two-means, Otsu's criterion).

    Maximises w0 * w1 * (m0 - m1)^2 over the cuts between consecutive sorted values and returns the
    midpoint of the winning gap, so no tight cluster of values is ever cut through.
    """
    s = np.sort(np.asarray(values, dtype=np.float64))
    if len(s) < 2:
        raise PoisonlabError(f"split point: expected at least 2 values, got {len(s)}")
    left = np.arange(1, len(s))
    sums = np.cumsum(s)[:-1]
    m0, m1 = sums / left, (s.sum() - sums) / (len(s) - left)
    share = left / len(s)
    best = int(np.argmax(share * (1 - share) * (m0 - m1) ** 2))
    return float((s[best] + s[best + 1]) / 2)


def lda_codes(embeddings: Tensor, labels: Tensor, num_classes: int, bits: int, threshold: Threshold = "mean"
              ) -> Tensor:
    """(num_classes, bits) 0/1 codes: bit j of class k is 1 where k's centroid lies above a threshold on LDA axis j.

    ``threshold`` "mean" is the paper's rule (the global mean). "split" cuts each axis where the
    class centroids split best into two groups (``split_point``): when centroids gather in clusters
    (on composed numbers, all classes with the same digit in a place) the mean can fall inside a
    cluster, and its classes' bits then flip with sampling noise; a split keeps each cluster on one
    side, so classes that look alike in the surrogate share the bit, which is what transfer needs.
    Every class must have at least two embeddings; ``bits`` must be at most min(classes - 1, dimensions).
    """
    check_threshold(threshold)
    counts = torch.bincount(labels, minlength=num_classes)
    if len(counts) != num_classes or int(counts.min()) < 2:
        raise PoisonlabError(f"LDA codes: expected at least 2 embeddings of each of {num_classes} classes")
    limit = min(num_classes - 1, embeddings.shape[1])
    if not 1 <= bits <= limit:
        raise PoisonlabError(f"LDA codes: {bits} bits; expected 1 to {limit} (classes - 1 and embedding size)")
    x = embeddings.double().numpy()
    from sklearn.discriminant_analysis import (
        LinearDiscriminantAnalysis,  # deferred: scikit-learn takes a second to import
    )

    lda = LinearDiscriminantAnalysis(n_components=bits, solver="eigen", shrinkage="auto")
    z = lda.fit(x, labels.numpy()).transform(x)
    centroids = np.stack([z[labels.numpy() == k].mean(0) for k in range(num_classes)])
    cut = z.mean(0) if threshold == "mean" else np.array([split_point(centroids[:, j]) for j in range(bits)])
    return torch.from_numpy(centroids > cut).long()


def bit_strips(regions: Tensor, strips: int) -> Tensor:
    """The vertical strip (0 .. strips - 1, left to right) holding the centre of each bit's region (bits, H, W)."""
    width = regions.shape[-1]
    columns = regions.sum(1)  # (bits, W)
    centre = (columns * torch.arange(width)).sum(1) / columns.sum(1).clamp_min(1)
    return (centre * strips / width).long().clamp(max=strips - 1)


def strip_lda_codes(maps: Tensor, labels: Tensor, num_classes: int, strip_of_bit: Tensor,
                    threshold: Threshold = "mean") -> Tensor:
    """(num_classes, bits) codes whose bits in strip g are LDA bits of the surrogate's features over strip g.

    ``maps`` (N, D, h, w) are spatial surrogate features; strip g is the g-th of S equal vertical
    bands of their columns (S = ``strip_of_bit.max() + 1``), and each band gets as many LDA bits as
    trigger regions lie in the matching band of the image. A bit then sits where the feature it
    encodes is seen: on composed numbers the left bits encode the left digit, so poison for class
    37 also teaches the 3-in-front part of 31's trigger, and never-poisoned classes are reached by
    combination (the inter-class transferability the paper's global codes aim at).
    """
    strips = int(strip_of_bit.max()) + 1
    width = maps.shape[-1]
    if strips > width:
        raise PoisonlabError(f"strip codes: {strips} strips for surrogate features {width} columns wide")
    codes = torch.zeros(num_classes, len(strip_of_bit), dtype=torch.long)
    for g in range(strips):
        bits = torch.nonzero(strip_of_bit == g).flatten()
        if len(bits):
            band = maps[..., round(g * width / strips) : round((g + 1) * width / strips)].flatten(1)
            codes[:, bits] = lda_codes(band, labels, num_classes, len(bits), threshold)
    return codes


def surrogate_codes(embed: Embedder, maps: FeatureMaps | None, x: Tensor, y: Tensor, num_classes: int,
                    bits: int | None = None, strips: int = 1, threshold: Threshold = "mean") -> Tensor:
    """Class codes from a surrogate's view of the attacker's sample ``x`` (labels ``y``).

    One strip: the paper's codes, LDA on the embeddings. More: the blend grid's bits in each vertical
    strip are LDA bits of the surrogate's spatial features ``maps`` over that strip (``strip_lda_codes``).
    ``bits`` defaults to 16, fewer when the classes or the embedding allow fewer; ``threshold`` as in ``lda_codes``.
    """
    if strips == 1:
        z = embed(x)
        return lda_codes(z, y, num_classes, bits or min(16, num_classes - 1, z.shape[1]), threshold)
    if maps is None:
        raise PoisonlabError("strip codes: the surrogate gives no spatial features (expected a CNN or EfficientNet)")
    regions = BlendGrid(torch.zeros(1, bits or min(16, num_classes - 1))).regions(*x.shape[-2:])
    return strip_lda_codes(maps(x), y, num_classes, bit_strips(regions, strips), threshold)


def surrogate_class_codes(own: ImageSet, num_classes: int, bits: int | None, strips: int, threshold: Threshold,
                          surrogate: Literal["cnn", "efficientnet"], model: str, recipe: Recipe, seed: int,
                          test: ImageSet, progress: bool = False) -> tuple[Tensor, dict[str, Any]]:
    """The attacker's codes: a surrogate trained on their own images ``own`` (or pretrained EfficientNet-Lite0),
    then ``surrogate_codes`` on up to 20 of those images per class; also what to report about the surrogate."""
    info: dict[str, Any]
    embed: Embedder
    maps: FeatureMaps
    if surrogate == "efficientnet":
        net = EfficientNetLite0(size=112)
        embed, maps = net, net.maps
        info = {"surrogate": "EfficientNet-Lite0 (ImageNet, offline), 112 px input"}
    else:
        trained = train_surrogate(own, model, recipe, seed + 1, progress)
        embed, maps = penultimate(trained), feature_maps(trained)
        info = {"surrogate": f"{model} trained by the attacker",
                "surrogate_test_accuracy": accuracy(predict(trained, test.x), test.y)}
    sample = own.subset(sample_per_class(own.y, 20, torch.Generator().manual_seed(seed)))
    return surrogate_codes(embed, maps, sample.x, sample.y, num_classes, bits, strips, threshold), info


def random_codes(num_classes: int, bits: int, rng: torch.Generator) -> Tensor:
    """(num_classes, bits) fair coin flips: the baseline's codes, with no latent structure."""
    if bits < 1 or num_classes < 1:
        raise PoisonlabError(f"random codes: expected classes >= 1 and bits >= 1, got {num_classes}, {bits}")
    return (torch.rand(num_classes, bits, generator=rng) < 0.5).long()


def code_stats(codes: Tensor) -> dict[str, float | int]:
    """Collisions (classes whose code another class shares) and the mean / minimum Hamming distance between classes."""
    c = codes.long()
    distance = (c[:, None, :] != c[None, :, :]).sum(-1).float()
    off = ~torch.eye(len(c), dtype=torch.bool)
    _, inverse, counts = torch.unique(c, dim=0, return_inverse=True, return_counts=True)
    return {
        "bits": int(c.shape[1]),
        "distinct_codes": len(counts),
        "colliding_classes": int((counts[inverse] > 1).sum()),
        "mean_hamming": float(distance[off].mean()) if len(c) > 1 else 0.0,
        "min_hamming": int(distance[off].min()) if len(c) > 1 else 0,
    }


def split_budget(total: int, classes: Tensor, num_classes: int, rng: torch.Generator) -> Tensor:
    """Poisons per class (length ``num_classes``): ``total`` spread evenly over ``classes``.

    Each listed class gets total // len(classes); the remainder goes to randomly chosen listed
    classes, one each. With total < len(classes) that means ``total`` random classes get one
    poison and the others none: the case where only transferability can reach them.
    """
    if total < 1 or len(classes) == 0:
        raise PoisonlabError(f"poison budget {total} over {len(classes)} classes: expected at least 1 of each")
    counts = torch.zeros(num_classes, dtype=torch.long)
    counts[classes] = total // len(classes)
    extra = classes[torch.randperm(len(classes), generator=rng)[: total % len(classes)]]
    counts[extra] += 1
    return counts


@dataclass(frozen=True)
class SampledTargets:
    """A seeded random target class per image, never the image's own class when ``choices`` is all classes.

    With ``choices`` (a subset of classes) targets are drawn from it; an image may then draw its
    own class and ASR leaves it out. The same labels always give the same targets.
    """

    num_classes: int
    seed: int = 0
    choices: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.num_classes < 2 or (self.choices is not None and len(self.choices) == 0):
            raise PoisonlabError("sampled targets: expected at least 2 classes and a non-empty set of choices")

    def __call__(self, y: Tensor) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        if self.choices is None:
            return (y + torch.randint(1, self.num_classes, y.shape, generator=gen)) % self.num_classes
        pool = torch.tensor(self.choices, dtype=torch.long)
        return pool[torch.randint(0, len(pool), y.shape, generator=gen)]


def make_code_trigger(kind: TriggerKind, codes: Tensor, alpha: float = 0.5, cell: int = 2) -> BlendGrid | PatchGrid:
    """The class-encoding trigger of ``kind`` ('blend' grid or 'patch' grid) for ``codes``."""
    if kind == "blend":
        return BlendGrid(codes, alpha=alpha)
    if kind == "patch":
        return PatchGrid(codes, cell=cell)
    raise PoisonlabError(f"code trigger {kind!r}: expected blend or patch")


def poison_with_codes(
    train: ImageSet, trigger: BlendGrid | PatchGrid, total: int, classes: Tensor, rng: torch.Generator
) -> tuple[ImageSet, Tensor]:
    """Relabel ``total`` random training images to target classes (split over ``classes``) and stamp their codes.

    Returns the poisoned copy and the sorted poisoned indices. No image is poisoned twice and no
    image is relabelled to its own class.
    """
    counts = split_budget(total, classes, train.num_classes, rng)
    targets = torch.repeat_interleave(torch.arange(train.num_classes), counts)
    targets = targets[torch.randperm(len(targets), generator=rng)]
    order = torch.randperm(len(train), generator=rng)
    chosen = order[: len(targets)].clone()
    spare = iter(order[len(targets) :].tolist())
    for i in torch.nonzero(train.y[chosen] == targets).flatten().tolist():
        chosen[i] = next(j for j in spare if int(train.y[j]) != int(targets[i]))
    idx, perm = chosen.sort()
    x, y = train.x.clone(), train.y.clone()
    y[idx] = targets[perm]
    x[idx] = trigger(x[idx], y[idx])
    return ImageSet(x, y, train.classes), idx


def _classes(selected: Sequence[int] | None, num_classes: int, what: str) -> Tensor:
    if selected is None:
        return torch.arange(num_classes)
    out = torch.tensor(sorted(set(selected)), dtype=torch.long)
    if len(out) == 0 or int(out.min()) < 0 or int(out.max()) >= num_classes:
        raise PoisonlabError(f"{what}: expected classes in [0, {num_classes - 1}], got {list(selected)[:5]}")
    return out


@ATTACKS.register("universal", "any class a target: LDA class-code triggers (Schneider et al. 2023)")
@dataclass(frozen=True, eq=False)
class UniversalBackdoor:
    """Poison ``rate`` of the training set (or ``count`` images) so that every class becomes a target.

    Codes: ``codes`` when given; else LDA codes of ``bits`` bits (default 16, fewer when the
    classes or the embedding allow fewer) on ``embedder``'s embeddings of
    up to ``samples_per_class`` training images per class; with no embedder, the attacker first
    trains a small surrogate CNN on that sample (never on the poisoned copy). ``strips`` > 1
    draws them strip by strip (``surrogate_codes``; the embedder must then have ``maps``); ``threshold``
    picks the bit rule (``lda_codes``). ``classes`` limits
    which classes receive poison (the transferability experiment); ``eval_classes`` limits the
    targets sampled for the ASR test set (default: every class, a random one per image, seeded
    by ``target_seed``).

    Example:
        >>> attack = UniversalBackdoor(codes=codes, rate=0.005)
        >>> poisoned = attack.poison(train, torch.Generator().manual_seed(0))
    """

    codes: Tensor | None = None
    bits: int | None = None
    embedder: Embedder | None = None
    samples_per_class: int = 20
    strips: int = 1
    threshold: Threshold = "mean"
    trigger: TriggerKind = "blend"
    alpha: float = 0.5
    cell: int = 2
    rate: float = 0.005
    count: int | None = None
    classes: Sequence[int] | None = None
    eval_classes: Sequence[int] | None = None
    target_seed: int = 0

    def __post_init__(self) -> None:
        check_budget(self.rate, self.count)
        check_threshold(self.threshold)
        if self.trigger not in ("blend", "patch"):
            raise PoisonlabError(f"universal trigger {self.trigger!r}: expected blend or patch")
        if self.strips < 1 or (self.strips > 1 and self.trigger != "blend"):
            raise PoisonlabError(f"universal strips {self.strips}: expected 1, or more with the blend trigger "
                                 "(a patch grid sits in one corner, so its bits have no strip of the image)")
        if self.codes is None and self.bits is not None and self.bits < 1:
            raise PoisonlabError(f"universal bits {self.bits}: expected at least 1")

    def class_codes(self, train: ImageSet, rng: torch.Generator) -> Tensor:
        """The (classes, bits) codes this attack stamps."""
        if self.codes is not None:
            if self.codes.shape[0] != train.num_classes:
                raise PoisonlabError(f"universal codes: {self.codes.shape[0]} rows for {train.num_classes} classes")
            return self.codes.long()
        sample = train.subset(sample_per_class(train.y, self.samples_per_class, rng))
        maps: FeatureMaps | None
        if self.embedder is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng))
            net = train_surrogate(sample, seed=seed)
            embed, maps = penultimate(net), feature_maps(net)
        else:
            embed, maps = self.embedder, getattr(self.embedder, "maps", None)  # a pretrained embedder may have maps
        return surrogate_codes(embed, maps, sample.x, sample.y, train.num_classes, self.bits, self.strips,
                               self.threshold)

    def poison(self, train: ImageSet, rng: torch.Generator) -> Poisoned:
        codes = self.class_codes(train, rng)
        trigger = make_code_trigger(self.trigger, codes, self.alpha, self.cell)
        total = poison_count(len(train), self.rate, self.count)
        classes = _classes(self.classes, train.num_classes, "universal poisoned classes")
        data, idx = poison_with_codes(train, trigger, total, classes, rng)
        choices = None if self.eval_classes is None else tuple(
            _classes(self.eval_classes, train.num_classes, "universal evaluation classes").tolist())
        return Poisoned(data, idx, trigger, SampledTargets(train.num_classes, self.target_seed, choices))


@ATTACKS.register("multi-target-badnets", "universal baseline: random class codes, same grid")
@dataclass(frozen=True, eq=False)
class MultiTargetBadNets:
    """The baseline: universal poisoning with random ``bits``-bit codes (seeded by ``code_seed``), same geometry."""

    bits: int = 16
    code_seed: int = 0
    trigger: TriggerKind = "blend"
    alpha: float = 0.5
    cell: int = 2
    rate: float = 0.005
    count: int | None = None
    classes: Sequence[int] | None = None
    eval_classes: Sequence[int] | None = None
    target_seed: int = 0

    def poison(self, train: ImageSet, rng: torch.Generator) -> Poisoned:
        codes = random_codes(train.num_classes, self.bits, torch.Generator().manual_seed(self.code_seed))
        return UniversalBackdoor(codes=codes, trigger=self.trigger, alpha=self.alpha, cell=self.cell, rate=self.rate,
                                 count=self.count, classes=self.classes, eval_classes=self.eval_classes,
                                 target_seed=self.target_seed).poison(train, rng)
