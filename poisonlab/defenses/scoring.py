"""Score a data scanner's Verdict against the ground-truth poisoned indices a data attack returns."""

from __future__ import annotations

import torch
from torch import Tensor

from poisonlab.core import PoisonlabError, Verdict


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
    """Precision, recall, F1 of ``verdict.flagged`` and AUROC of ``verdict.scores`` against ``poisoned``.

    ``poisoned`` holds the ground-truth indices (or a mask) of the ``n`` samples. Precision is 0
    when nothing is flagged; AUROC is NaN when the scores are missing or the truth is one-sided.
    """
    truth = as_mask(poisoned, n)
    flagged = as_mask(verdict.flagged if verdict.flagged is not None else torch.empty(0, dtype=torch.long), n)
    tp = int((flagged & truth).sum())
    fp = int((flagged & ~truth).sum())
    fn = int((~flagged & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    auroc = float("nan")
    if verdict.scores is not None and 0 < int(truth.sum()) < n:
        if len(verdict.scores) != n:
            raise PoisonlabError(f"verdict scores of length {len(verdict.scores)}: expected {n}")
        from sklearn.metrics import roc_auc_score  # deferred: scikit-learn takes a second to import

        auroc = float(roc_auc_score(truth.numpy(), verdict.scores.double().numpy()))
    return {"precision": precision, "recall": recall, "f1": f1, "auroc": auroc,
            "flagged": tp + fp, "true_positives": tp, "false_positives": fp, "poisoned": int(truth.sum())}
