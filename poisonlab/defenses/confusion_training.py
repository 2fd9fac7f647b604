"""Confusion Training (Qi, Xie, Wang, Mittal, USENIX Security 2023, arXiv 2205.13616): poison the data on purpose.

A model trained on a poisoned set learns two kinds of correlation: the benign one between an image's content and
its class, and the backdoor's between a trigger and the attacker's label. CT trains a fresh model while mixing in
confusion batches, images whose labels are drawn at random (never their own label) and weighted ``factor`` times
the inspected rows. Random labels contradict every benign correlation, so the model cannot keep fitting clean rows;
they say nothing about a trigger they do not carry, so the backdoor, the easier correlation, stays fitted. The
rows whose label the confused model still gives are the poison. Each round pretrains the model on the inspected
rows (the whole set in round 0), confuses a copy of it, and keeps the ``keep`` share of rows the copy fits best
(at least 2% of every class, as the authors' code does) as the next round's inspected rows, where the poison is
denser; the score is the last round's. As the paper: SGD with momentum 0.7 in the confusion phase, an inspected
batch joining the confusion batch every ``inspect_every`` steps, confusion labels never a row's own.

The paper confuses with a small clean set the defender reserves; a data scanner has none, so by default the
confusion rows are drawn from the scanned set itself: ``pool`` rows at random in round 0, and later from the
half of each class the previous round's confused model fits least, where little poison remains. Poison in the
confusion set is relabelled at random and works against the backdoor, so round 0 alone ranks less well than a
clean confusion set does; the rounds recover it. ``scan(..., clean=...)`` confuses with a caller's clean images.

Scaled down from the paper (6-8 rounds of 40-100 pretraining epochs and 2,000-6,000 confusion steps at factor
25-50 on CIFAR-10) for MNIST-sized runs on a CPU; see the class docstring for what was measured.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poisonlab.core import (
    SEED_LIMIT,
    DefenseKind,
    ImageSet,
    PoisonlabError,
    Samples,
    Verdict,
    batches,
    check_seed,
    in_memory,
    inference_batch,
    require,
)
from poisonlab.defenses.abl import log_odds_against, reinitialised
from poisonlab.registry import DEFENSES
from poisonlab.training import Recipe, train
from poisonlab.training.trainer import owned_recipe, resolve_device

CLASS_FLOOR = 0.02
"""Least share of each class kept among the inspected rows, so pretraining on them still sees every class."""

POOL_SALT = 0x5EED_C0DE
"""Offset of the confusion-set draw's seed: an attack seeded alike draws its rows with the same ``randperm`` (a
pool drawn with seed 0 held every BadNets all-to-all row poisoned with seed 0)."""


@torch.no_grad()
def label_log_odds(model: nn.Module, data: Samples, device: torch.device) -> Tensor:
    """``log(p / (1 - p))`` for the probability ``p`` ``model`` gives each row's label, computed in batches."""
    model.eval()
    out = torch.empty(len(data))
    start = 0
    for batch in batches(data.x, inference_batch(data.shape)):
        stop = start + len(batch)
        out[start:stop] = -log_odds_against(model(batch.to(device)), data.y[start:stop].to(device)).cpu()
        start = stop
    return out


def per_class(y: Tensor, scores: Tensor) -> dict[int, Tensor]:
    """Each class's rows, ordered from the highest score to the lowest."""
    order = scores.argsort(descending=True, stable=True)
    return {int(k): order[y[order] == k] for k in y.unique()}


@DEFENSES.register("confusion-training", "data scanner: train with randomly relabelled confusion batches; rows "
                   "still fitted are poison (Qi et al. 2023)")
@dataclass(frozen=True)
class ConfusionTraining:
    """Data scanner; trains its own model of ``model``'s architecture (freshly initialised from ``seed``).

    Each of ``rounds`` rounds pretrains for ``epochs`` (Adam one-cycle at ``lr``, ``batch_size``), then runs
    ``steps`` confusion steps (SGD at ``confusion_lr``) on ``batch_size`` confusion rows drawn from ``pool``
    rows. ``scores`` are the last confused model's log-odds of each row's label (higher: fitted despite the
    confusion, suspicious); ``flagged`` are the rows whose label it gives more than half its probability.
    The images are decoded into memory (``in_memory``): CT trains on the set many times and draws its rows at
    random. ``details["rounds"]`` lists each round's inspected and confusion-set sizes.

    Example:
        >>> verdict = ConfusionTraining().scan(model, poisoned.data)
        >>> verdict.flagged            # rows the confused model still fits
    """

    kind: ClassVar[DefenseKind] = "data-scanner"
    rounds: int = 3
    keep: float = 0.5
    epochs: int = 4
    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    confusion_lr: float = 0.01
    factor: float = 5.0
    inspect_every: int = 2
    pool: int = 500
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        name = "confusion-training"
        require(self.rounds >= 1, f"{name} rounds", self.rounds, "an integer >= 1")
        require(0.0 < self.keep < 1.0, f"{name} keep", self.keep, "a fraction in (0, 1)")
        require(self.steps >= 1, f"{name} steps", self.steps, "an integer >= 1")
        require(self.confusion_lr > 0, f"{name} confusion_lr", self.confusion_lr, "a number > 0")
        require(self.factor >= 1.0, f"{name} factor", self.factor, "a weight >= 1 (1: no extra confusion weight)")
        require(self.inspect_every >= 1, f"{name} inspect_every", self.inspect_every, "an integer >= 1")
        require(self.pool >= 1, f"{name} pool", self.pool, "an integer >= 1")
        check_seed(self.seed, f"{name} seed")
        self.recipe()

    def recipe(self) -> Recipe:
        """The pretraining recipe of each round (Recipe checks epochs, batch size, lr and device)."""
        return owned_recipe("confusion-training", self.epochs, self.batch_size, self.lr, self.device)

    def confuse(self, model: nn.Module, data: ImageSet, inspected: Tensor, pool: ImageSet, seed: int) -> nn.Module:
        """``model`` trained in place on confusion batches of ``pool``, joined by inspected rows every few steps."""
        gen = torch.Generator().manual_seed(seed)
        device = resolve_device(self.device)
        model.to(device).train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(trainable, lr=self.confusion_lr, momentum=0.7)
        k = data.num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout, if the model has any
            for step in range(self.steps):
                rows = torch.randint(len(pool), (self.batch_size,), generator=gen)
                wrong = (pool.y[rows] + torch.randint(1, k, (len(rows),), generator=gen)) % k
                x, y = pool.x[rows].to(device), wrong.to(device)
                if step % self.inspect_every:
                    loss = F.cross_entropy(model(x), y)
                else:
                    picked = inspected[torch.randint(len(inspected), (self.batch_size,), generator=gen)]
                    logits = model(torch.cat([x, data.x[picked].to(device)]))
                    confusion = F.cross_entropy(logits[: len(x)], y)
                    fit = F.cross_entropy(logits[len(x):], data.y[picked].to(device))
                    loss = ((self.factor - 1) * confusion + fit) / self.factor
                if not torch.isfinite(loss):
                    raise PoisonlabError(f"confusion-training: loss became {loss.item()}; lower confusion_lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return model.eval()

    def next_rows(self, data: ImageSet, scores: Tensor, share: float) -> Tensor:
        """The ``share`` of rows the confused model fits best, topped up to ``CLASS_FLOOR`` of every class."""
        top = scores.argsort(descending=True, stable=True)[: max(1, round(share * len(data)))]
        floor = [rows[: max(1, round(CLASS_FLOOR * len(rows)))] for rows in per_class(data.y, scores).values()]
        return torch.cat([top, *floor]).unique()

    def confusion_rows(self, data: ImageSet, scores: Tensor | None, gen: torch.Generator) -> Tensor:
        """``pool`` rows: at random (round 0, no scores yet), else from the least-fitted half of every class."""
        if scores is None:
            candidates = torch.arange(len(data))
        else:
            candidates = torch.cat([rows[len(rows) // 2:] for rows in per_class(data.y, scores).values()])
        return candidates[torch.randperm(len(candidates), generator=gen)[: self.pool]].sort().values

    def scan(self, model: nn.Module, data: Samples, clean: ImageSet | None = None) -> Verdict:
        """Score every row of ``data``; ``clean`` (images with true labels, same shape) replaces the drawn
        confusion set when the caller has one."""
        recipe = self.recipe()
        images = in_memory(data)
        if images.num_classes < 2:
            raise PoisonlabError("confusion-training: the data have one class; random labels need at least 2")
        if clean is not None and (clean.shape != images.shape or len(clean) == 0):
            raise PoisonlabError(f"confusion-training clean set: expected images shaped {images.shape}, "
                                 f"got {len(clean)} shaped {clean.shape}")
        device = resolve_device(self.device)
        pool_gen = torch.Generator().manual_seed((self.seed + POOL_SALT) % SEED_LIMIT)
        base, not_reset = reinitialised(model, self.seed)
        inspected = torch.arange(len(images))
        scores: Tensor | None = None
        history = []
        for r in range(self.rounds):
            pool = clean if clean is not None else images.subset(self.confusion_rows(images, scores, pool_gen))
            train(base, images.subset(inspected), recipe, self.seed + r, progress=False,
                  description=f"confusion-training round {r} pretraining")
            confused = self.confuse(copy.deepcopy(base), images, inspected, pool, self.seed + r)
            scores = label_log_odds(confused, images, device)
            history.append({"inspected": len(inspected), "confusion_rows": len(pool)})
            inspected = self.next_rows(images, scores, self.keep ** (r + 1))
        assert scores is not None
        flagged = torch.nonzero(scores > 0).flatten()
        return Verdict(scores=scores, flagged=flagged, details={
            "suspicious_classes": sorted({int(k) for k in images.y[flagged].unique()}),
            "rounds": history, "clean_confusion_set": clean is not None, "not_reinitialised": not_reset,
        })
