"""Score a data scanner's Verdict against the ground-truth poisoned indices a data attack returns."""

from __future__ import annotations

import torch
from torch import Tensor

from poisonlab.core import PoisonlabError, Verdict

LOW_FPR = 0.05
"""The false-positive rate at which ``tpr_at_5fpr`` reads the ROC curve."""


def as_mask(index: Tensor, n: int) -> Tensor:
    """A boolean mask of length ``n`` from a long index or a boolean mask."""
    if index.dtype == torch.bool:
        if len(index) != n:
            raise PoisonlabError(f"mask of length {len(index)}: expected {n}")
        return index
    mask = torch.zeros(n, dtype=torch.bool)
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= n):
        raise PoisonlabError(f"indices: expected values in [0, {n - 1}]")
    mask[index.long()] = True
    return mask


def detection_metrics(verdict: Verdict, poisoned: Tensor, n: int) -> dict[str, float | int]:
    """Precision, recall, F1 of ``verdict.flagged``; AUROC and TPR at FPR <= 5% of ``verdict.scores``.

    ``poisoned`` holds the ground-truth indices (or a mask) of the ``n`` samples. Precision is 0
    when nothing is flagged; AUROC and the TPR are NaN when the scores are missing or the truth is
    one-sided. Both come from the continuous scores, never from the flags.
    """
    truth = as_mask(poisoned, n)
    flagged = as_mask(verdict.flagged if verdict.flagged is not None else torch.empty(0, dtype=torch.long), n)
    tp = int((flagged & truth).sum())
    fp = int((flagged & ~truth).sum())
    fn = int((~flagged & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    auroc = tpr = float("nan")
    if verdict.scores is not None and 0 < int(truth.sum()) < n:
        if len(verdict.scores) != n:
            raise PoisonlabError(f"verdict scores of length {len(verdict.scores)}: expected {n}")
        from sklearn.metrics import roc_auc_score, roc_curve  # deferred: scikit-learn takes a second to import

        scores = verdict.scores.double().numpy()
        auroc = float(roc_auc_score(truth.numpy(), scores))
        fpr_at, tpr_at, _ = roc_curve(truth.numpy(), scores)
        tpr = float(tpr_at[fpr_at <= LOW_FPR].max())
    return {"precision": precision, "recall": recall, "f1": f1, "auroc": auroc, "tpr_at_5fpr": tpr,
            "flagged": tp + fp, "true_positives": tp, "false_positives": fp, "poisoned": int(truth.sum())}
