"""Out-of-fold label scores: does a model that never saw a row, and trained too briefly to learn a subtle
trigger, agree with the row's label?

Dirty-label poison is label noise from the content's point of view: an image of a 7 labelled 0. Confident
learning (Northcutt, Jiang, Chuang, JAIR 2021) finds label noise with out-of-fold predictions: the rows are
split into ``folds``; a fresh model of the scanned architecture trains on all folds but one and scores the
rows of the one it did not see, by the log-odds against their label, ``log((1 - p) / p)``. A row's own
(poisoned) label never trains the model that scores it. The backdoor can still be learned from the other
poisoned rows, so the fold models train briefly, about ``steps`` minibatches (whole epochs, at least one,
so that a trigger is seen as often whatever the data's size), on images with fresh Gaussian noise of standard
deviation ``noise`` added at every step, which drowns a faint trigger while leaving the content. The backdoors
built to evade latent-space defenses are learned slowly (adaptive-blend and adaptive-patch, Qi et al. 2023,
with cover rows that carry the trigger under their true labels; WaNet's warp): on 10,000 MNIST rows at 10%
poison a victim trained for 2 epochs reached 6% ASR on adaptive-patch and 3% on WaNet, while the digits
themselves are learned. On that set (badnets-cnn, seed 0), adaptive-blend was ranked at AUROC 0.959 (TPR at 5%
FPR 0.79) by fold models trained for 160 steps without noise, and at 0.992 (0.998) for 320 steps with noise 0.3;
adaptive-patch 0.983 and 0.985, WaNet 0.980 and 0.985.
A trigger that is learned at once (a solid BadNets patch) is learned by the fold models as well; the latent
scanners (``spectral``, ``spectre``) catch those. How fast a trigger is learned depends on the architecture too:
on 3,000 and 6,000 MNIST rows with adaptive-patch at 10%, badnets-cnn fold models ranked the poison at AUROC
0.96-0.98, while small-cnn's (3 x 3 convolutions) learned the patches and ranked it at 0.63-0.74.

Flags: a row is doubted when another class is likelier than its label by more than ``gate_nats`` (log-odds);
every class has some such rows (hard digits, shirts read as T-shirts). An all-to-one poison puts its rows in one
class, whose doubted share then stands out among the classes (robust z of the log-shares above
``class_threshold``, as the other scanners' class gate); the rows of such a class scoring above ``min_nats`` are
flagged. All-to-all poison raises every class alike and is not flagged this way. The gate counts confident
doubts only: a clean class's doubted rows are mostly ambiguous images near 0 nats, and how many of those a class
holds varies with its difficulty (1.1% of MNIST's zeros above 0 nats, 5.6% of its threes), while dirty-label
poison is a clear image of another class. With blend at 1% (10,000 MNIST rows, badnets-cnn, seed 2) the poisoned
class held 9.8% of its rows above 0 nats against 1.3-6.0% in the others, z 1.3 (nothing flagged although the
scores ranked the poison at AUROC 0.993), and 7.9% above 2 nats against 0.4-2.3%, z 3.2 (108 flagged, 98 of
the 100 poison rows). Over blend (1% and 10%), BadNets and adaptive-blend (1%), adaptive-patch and WaNet (10%) on
that set (seeds 0-2), the poisoned class's z at 2 nats was 3.2-6.6; the largest z at 2 nats on clean sets:
1.5 (that MNIST set, seeds 0-2), 1.8 (Fashion-MNIST), 2.2 (MNIST at imbalance 10). The threshold is 3.0.
The z divides by the classes' spread (MAD of the log-shares), taken as at least ``min_mad`` (0.3; clean sets
measured 0.27-0.57): under SIG at 1% (clean labels, seed 2) eight classes held 1.2-1.7% and the MAD was 0.16,
so class 3, the hardest digit, at 2.9% scored z 3.1 and its 54 rows were flagged; with the floor it scores 1.6,
while the poisoned classes above keep z >= 3.2. At imbalance 10 the poisoned class is the largest and 1% poison is
4.5% of it: not an outlier there (z <= 1.5; adaptive-patch at 10%: 1.3-2.2); without the floor a small class was
on one seed (class 8, z 3.0, 21 clean rows flagged), with it 2.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from poisonlab.core import DefenseKind, PoisonlabError, Samples, Verdict, check_seed, require
from poisonlab.defenses.abl import reinitialised
from poisonlab.defenses.confusion_training import label_log_odds
from poisonlab.defenses.split import robust_z
from poisonlab.registry import DEFENSES
from poisonlab.training import Recipe, train
from poisonlab.training.trainer import owned_recipe, resolve_device


class TrainingNoise(nn.Module):
    """Adds fresh Gaussian noise of standard deviation ``std`` to the images in training mode only."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: Tensor) -> Tensor:
        return x + self.std * torch.randn_like(x) if self.training and self.std > 0 else x


@DEFENSES.register("out-of-fold", "data scanner: labels that fresh models trained briefly on the other folds find "
                   "unlikely (confident learning); catches slowly learned triggers")
@dataclass(frozen=True)
class OutOfFold:
    """Data scanner; trains ``folds`` fresh copies of ``model``'s architecture (initialised from ``seed``),
    each for about ``steps`` minibatches of ``batch_size`` on the other folds (Adam one-cycle at ``lr``), with
    Gaussian noise of standard deviation ``noise`` added to its training images (not to the scored ones).

    ``scores`` are the log-odds against each row's label under the model that did not train on it (higher:
    another class likelier, suspicious); ``flagged`` are the rows scoring above ``min_nats`` in the classes
    whose share of rows above ``gate_nats`` is an outlier (``details["gate"]`` says why per class).

    Example:
        >>> verdict = OutOfFold().scan(model, poisoned.data)
        >>> verdict.details["doubted_share"]   # per class: the share of rows another class wins by > gate_nats
    """

    kind: ClassVar[DefenseKind] = "data-scanner"
    folds: int = 2
    steps: int = 320
    noise: float = 0.3
    batch_size: int = 128
    lr: float = 3e-3
    min_nats: float = 0.0
    gate_nats: float = 2.0
    class_threshold: float = 3.0
    min_mad: float = 0.3
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.folds >= 2, "out-of-fold folds", self.folds, "an integer >= 2")
        require(self.steps >= 1, "out-of-fold steps", self.steps, "an integer >= 1")
        require(0.0 <= self.noise < math.inf, "out-of-fold noise", self.noise, "a standard deviation >= 0")
        require(self.min_nats >= 0, "out-of-fold min_nats", self.min_nats, "a number >= 0")
        require(self.gate_nats >= 0, "out-of-fold gate_nats", self.gate_nats, "a number >= 0")
        require(0 <= self.min_mad < math.inf, "out-of-fold min_mad", self.min_mad, "a spread >= 0 (natural log units)")
        check_seed(self.seed, "out-of-fold seed")
        self.recipe(self.steps * self.batch_size)  # one epoch: checks batch size, lr and device

    def recipe(self, rows: int) -> Recipe:
        """The recipe of a fold model trained on ``rows`` rows: whole epochs nearest ``steps`` minibatches."""
        epochs = max(1, round(self.steps * self.batch_size / max(rows, 1)))
        return owned_recipe("out-of-fold", epochs, self.batch_size, self.lr, self.device)

    def scan(self, model: nn.Module, data: Samples) -> Verdict:
        if len(data) < 2 * self.folds:
            raise PoisonlabError(f"out-of-fold: {len(data)} rows; expected at least {2 * self.folds} for "
                                 f"{self.folds} folds")
        if len(data.y.unique()) < 2:
            raise PoisonlabError("out-of-fold: the data hold one class; a label can only be doubted against another")
        device = resolve_device(self.device)
        fold = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed)) % self.folds
        scores = torch.empty(len(data))
        epochs = []
        for f in range(self.folds):
            fresh, _ = reinitialised(model, self.seed + f)
            rest = torch.nonzero(fold != f).flatten()
            recipe = self.recipe(len(rest))
            epochs.append(recipe.epochs)
            train(nn.Sequential(TrainingNoise(self.noise), fresh), data.subset(rest), recipe, self.seed + f,
                  progress=False, description=f"out-of-fold model {f + 1} of {self.folds}")
            rows = torch.nonzero(fold == f).flatten()
            scores[rows] = -label_log_odds(fresh, data.subset(rows), device)
        verdict = self.verdict(scores, data.y)
        verdict.details["epochs"] = epochs
        return verdict

    def verdict(self, scores: Tensor, y: Tensor) -> Verdict:
        """Flags and reasons from out-of-fold ``scores`` of rows labelled ``y`` (see the module docstring)."""
        doubted = scores > self.gate_nats
        present = [int(k) for k in y.unique()]
        counts = {k: (int(doubted[y == k].sum()), int((y == k).sum())) for k in present}
        share = {k: (m + 1) / (n + 2) for k, (m, n) in counts.items()}  # smoothed: a class without any stays > 0
        z = robust_z(share, self.min_mad) if len(share) >= 3 else {}  # fewer classes: no outlier to find
        suspicious = {k for k, v in z.items() if v > self.class_threshold}
        in_suspicious = torch.isin(y, torch.tensor(sorted(suspicious), dtype=y.dtype))
        flagged = torch.nonzero((scores > self.min_nats) & in_suspicious).flatten()
        reasons = {}
        for k in present:
            m, n = counts[k]
            said = f"{m} of {n} rows ({m / max(n, 1):.1%}) likelier another class by > {self.gate_nats:g} nats"
            reasons[str(k)] = (f"flagged: {said}, an outlier among the classes (z {z[k]:.1f} > "
                               f"{self.class_threshold:g})" if k in suspicious else
                               f"not flagged: {said}" + (f" (z {z[k]:.1f} <= {self.class_threshold:g})" if z
                                                          else ", fewer than 3 classes to compare"))
        return Verdict(scores=scores, flagged=flagged, details={
            "suspicious_classes": sorted(suspicious), "gate": reasons,
            "doubted_share": {str(k): counts[k][0] / max(counts[k][1], 1) for k in present},
            "folds": self.folds,
        })
