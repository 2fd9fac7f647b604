"""Label consistency: does a sample's label fit what the model's early features say its image is?

Dirty-label poison (BadNets all-to-one and all-to-all, blend, WaNet) relabels images of other
classes. Before the layers that learn the trigger shortcut, the convolutional features still
describe the image's content, so a linear discriminant (LDA, shared covariance) fitted to them on
the whole training set finds the poison's given label far less likely than another class. The score
is that log-likelihood ratio, log p(best other class | x) - log p(label | x) in nats. The scores are
split in two (exact 1-D 2-means, as the other scanners split a class); when the groups lie at least
``min_separation`` clean standard deviations apart, a sample is flagged when it lies more than
``clean_sds`` of them above the clean group's centre and another class is likelier than its label
(score > ``min_nats``). Clean data split no wider than noise: on a clean MNIST model (badnets-cnn,
2 epochs, seed 0) the split was 2.7 sd; BadNets all-to-all at 10% gave 5.4 sd, hence 4.

It needs no class to be an outlier, so it sees all-to-all poison, which splits every class alike
(the per-class scanners need their gate's all-to-all branch and a wide split for it). Under all-to-one
poison the trigger itself becomes a feature that predicts the target linearly, so the LDA learns it
and ranks that poison less well (use Spectral Signatures there). Clean-label poison (SIG,
label-consistent) keeps true labels and is out of its reach.

``clean_sds = 4`` is the Spectral Signatures default; the closing note of issue 16 gives the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from poisonlab.core import DefenseKind, PoisonlabError, Samples, Verdict
from poisonlab.defenses.features import features, iter_features
from poisonlab.defenses.split import ClassSplit
from poisonlab.registry import DEFENSES


@DEFENSES.register("label-consistency",
                   "data scanner: labels the early features find unlikely (LDA log-likelihood ratio); sees all-to-all")
@dataclass(frozen=True)
class LabelConsistency:
    """Data scanner; features of ``layer`` above ``max_dims`` dimensions are first reduced by PCA, and the
    shared covariance is shrunk by Ledoit-Wolf's rule unless ``shrinkage`` fixes it. When the features of
    every row would take more than ``keep_mb`` megabytes, the PCA is fitted on a seeded sample of rows
    that fits and every row is projected batch by batch (100,000 64 x 64 images in small-cnn's 8,192
    convolutional features would take 3.3 GB).

    Example:
        >>> verdict = LabelConsistency().scan(model_trained_on_data, data)
        >>> verdict.scores             # nats by which another class beats the given label
    """

    kind: ClassVar[DefenseKind] = "data-scanner"
    layer: str | int = "conv"
    min_separation: float = 4.0
    clean_sds: float = 4.0
    min_nats: float = 0.0
    shrinkage: float | None = None
    max_dims: int = 256
    batch_size: int | None = None
    keep_mb: float = 512.0

    def __post_init__(self) -> None:
        if not self.clean_sds > 0 or not self.min_nats >= 0:
            raise PoisonlabError(f"label-consistency clean_sds {self.clean_sds}, min_nats {self.min_nats}: expected "
                                 "clean_sds > 0 and min_nats >= 0")
        if self.shrinkage is not None and not 0.0 <= self.shrinkage <= 1.0:
            raise PoisonlabError(f"label-consistency shrinkage {self.shrinkage}: expected a value in [0, 1]")
        if self.max_dims < 2:
            raise PoisonlabError(f"label-consistency max_dims {self.max_dims}: expected at least 2")

    def scan(self, model: nn.Module, data: Samples) -> Verdict:
        from sklearn.decomposition import PCA  # deferred: scikit-learn loads only when a scan runs
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        labels = data.y.numpy()
        present = np.unique(labels)
        if len(present) < 2:
            raise PoisonlabError("label-consistency: the data hold one class; expected at least 2 to compare labels")
        width = features(model, data.x[:1], self.layer).shape[1]
        dims = min(self.max_dims, len(data))  # PCA finds at most as many components as there are samples
        fit_rows = max(dims, int(self.keep_mb * 2**20) // (4 * width))
        if len(data) <= fit_rows:
            x = torch.cat(list(iter_features(model, data.x, self.layer, self.batch_size))).numpy()
            if width > dims:
                x = PCA(dims, random_state=0).fit_transform(x)
        else:  # too many rows to hold at full width: PCA fitted on a seeded sample, every row projected batch by batch
            sample = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:fit_rows].sort().values
            pca = PCA(dims, random_state=0).fit(features(model, data.x[sample], self.layer, self.batch_size).numpy())
            x = np.concatenate([pca.transform(f.numpy()) for f in iter_features(model, data.x, self.layer,
                                                                                self.batch_size)])
        shrinkage = "auto" if self.shrinkage is None else self.shrinkage
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage).fit(x, labels)
        log_p = lda.predict_log_proba(x)
        column = np.searchsorted(lda.classes_, labels)
        rows = np.arange(len(labels))
        own = log_p[rows, column]
        log_p[rows, column] = -np.inf
        scores = torch.from_numpy(log_p.max(1) - own)
        split = ClassSplit.fit(scores)
        wide = split.separation >= self.min_separation
        flagged = torch.nonzero(split.side(scores, self.clean_sds) & (scores > self.min_nats)).flatten() if wide \
            else torch.empty(0, dtype=torch.long)
        per_class = torch.bincount(data.y[flagged], minlength=data.num_classes).tolist()
        hit = [k for k, n in enumerate(per_class) if n]
        return Verdict(scores=scores, flagged=flagged, details={
            "suspicious_classes": hit, "layer": self.layer, "features": int(x.shape[1]), "split": split.summary(),
            "rule": f"label scores split {split.separation:.1f} sd "
                    + (f">= {self.min_separation:g}: tail flagged" if wide else f"< {self.min_separation:g}: no flags"),
            "gate": {str(k): f"flagged: {per_class[k]} sample(s) whose label the {self.layer} features find less "
                             f"likely than another class, {self.clean_sds:g} sd beyond the consistent labels"
                     for k in hit},
        })
