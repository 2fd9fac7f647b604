"""Fine-pruning (Liu, Dolan-Gavitt, Garg, RAID 2018, arXiv 1805.12185): prune dormant channels, then fine-tune.

Backdoor behaviour tends to live in channels of the last convolution that clean inputs leave
dormant. Channels are pruned in increasing order of their mean activation on clean data until
clean validation accuracy would drop by more than ``max_drop``; the pruned model is then
fine-tuned on the clean data with the pruned channels held at zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import prune

from poisonlab.core import DefenseKind, Evidence, PoisonlabError, Verdict
from poisonlab.defenses.features import Tap, iter_taps
from poisonlab.metrics import accuracy
from poisonlab.registry import DEFENSES
from poisonlab.training import Recipe, predict, train


def last_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The last Conv2d of ``model`` in module order, with its qualified name: any ``nn.Module``, not only Sequential."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise PoisonlabError(f"fine-pruning: expected a model with at least one Conv2d, got {type(model).__name__}")
    return convs[-1]


def channel_activity(model: nn.Module, conv: nn.Conv2d, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Mean rectified output of each channel of ``conv`` (a module of ``model``) over images ``x``.

    Only the layers up to ``conv`` run (``features.iter_taps`` stops the pass there).
    """
    total = torch.zeros(conv.out_channels)
    for (out,) in iter_taps(model, x, [Tap(conv, reads_input=False)], batch_size):
        total += out.clamp_min(0).mean(dim=(2, 3)).sum(0)
    return total / len(x)


@DEFENSES.register("fine-pruning", "mitigation: prune dormant last-conv channels, fine-tune (Liu et al. 2018)")
@dataclass(frozen=True)
class FinePruning:
    """Mitigation; the defender's clean images (``evidence.clean``) are split into fine-tuning and validation.

    Defaults measured on BadNets MNIST (bench/defenses_mnist.py): four fine-tuning epochs at lr 1e-3 after
    pruning take ASR to 1.2% (1% poison) and 3.0% (10%) for a CA cost of 0.3-0.5 points; two epochs left
    5.6% at 10%.

    Example:
        >>> repaired = FinePruning().repair(model, Evidence(clean_subset)).model
    """

    kind: ClassVar[DefenseKind] = "mitigation"
    max_drop: float = 0.02
    max_ratio: float = 0.9
    recipe: Recipe = Recipe(epochs=4, batch_size=64, lr=1e-3)
    seed: int = 0

    def requires(self) -> str | None:
        return None

    def repair(self, model: nn.Module, evidence: Evidence) -> Verdict:
        clean = evidence.clean
        if len(clean) < 20:
            raise PoisonlabError(f"fine-pruning: expected at least 20 clean images, got {len(clean)}")
        model = copy.deepcopy(model).eval()
        conv_at, conv = last_conv(model)
        split = len(clean) * 4 // 5
        tune, val = clean.subset(slice(0, split)), clean.subset(slice(split, None))
        base = accuracy(predict(model, val.x), val.y)
        order = channel_activity(model, conv, tune.x).argsort()
        mask = torch.ones(conv.out_channels)
        hook = conv.register_forward_hook(lambda _m, _i, out: out * mask.view(1, -1, 1, 1))
        pruned = 0
        for c in order[: int(self.max_ratio * conv.out_channels)].tolist():
            mask[c] = 0
            if base - accuracy(predict(model, val.x), val.y) > self.max_drop:
                mask[c] = 1
                break
            pruned += 1
        hook.remove()
        masked = ["weight", "bias"] if conv.bias is not None else ["weight"]
        prune.custom_from_mask(conv, "weight", mask.view(-1, 1, 1, 1).expand_as(conv.weight).clone())
        if conv.bias is not None:
            prune.custom_from_mask(conv, "bias", mask.clone())
        train(model, tune, self.recipe, self.seed, progress=False, description="fine-tuning")
        for name in masked:
            prune.remove(conv, name)
        return Verdict(model=model.eval(), details={
            "pruned_channels": pruned, "channels": conv.out_channels,
            "layer": int(conv_at) if conv_at.isdigit() else conv_at,
            "val_accuracy_before": base, "val_accuracy_after": accuracy(predict(model, val.x), val.y),
        })

