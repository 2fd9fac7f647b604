"""IBD-PSC (Hou et al., ICML 2024, arXiv 2405.09786): poisoned inputs keep their prediction when the model's
parameters are amplified.

Multiplying the affine parameters of a model's last batch-norm layers by ``scale`` (1.5 in the paper)
wrecks its predictions on benign images, but a triggered image, whose prediction rides on the few
strong trigger features, keeps predicting the target class with high confidence. Layers are chosen
on benign images: amplify the last 1, 2, ... batch-norm layers until the error on them reaches ``xi``;
from that depth on, ``n`` models amplify ever more layers. An image's parameter-oriented scaling
consistency (PSC) is the mean confidence of those ``n`` models in the class the unamplified model predicts.

Scaling a batch norm's weight and bias by ``scale`` scales its output by ``scale``; so does scaling a
convolution's or a Linear layer's weight and bias. Amplification is therefore a forward hook multiplying a
layer's output, which needs no copy of the model and works on any ``nn.Module``; a model without batch norm
has its convolutions and hidden Linear layers amplified instead.

``ibd-psc`` filters inputs at test time; its threshold is the ``1 - frr`` quantile of clean held-out images'
PSC, as STRIP sets its own. Measured on poisonlab's models it does not separate: on clip art
(EfficientNet-Lite0 fine-tuned, BadNets 1%, ASR 97.7%) triggered test images scored AUROC 0.48 (scale 1.5)
and 0.57 (scale 3), and scoring the training rows ranked the poison below the clean rows (AUROC 0.38 / 0.65);
on BN-free MNIST CNNs amplification only sharpens the logits (AUROC 0.23-0.50). So no data-scanner use of it
is registered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from poisonlab.core import DefenseKind, ImageSet, PoisonlabError, Verdict
from poisonlab.registry import DEFENSES
from poisonlab.training.trainer import device_of


def amplifiable(model: nn.Module) -> list[nn.Module]:
    """The layers IBD-PSC amplifies, in module order: affine batch norms, or, in a model without them, its
    convolutions and Linear layers but the last (amplifying the logits only sharpens every prediction alike)."""
    layers: list[nn.Module] = [m for m in model.modules()
                               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if not layers:
        weighted: list[nn.Module] = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        layers = weighted[:-1]
    if not layers:
        raise PoisonlabError(f"IBD-PSC: model {type(model).__name__} has no batch norm, convolution or hidden Linear "
                             "layer to amplify")
    return layers


@contextmanager
def amplified(layers: Sequence[nn.Module], scale: float) -> Iterator[None]:
    """Within the block, the output of each of ``layers`` is multiplied by ``scale`` (by a forward hook)."""
    hooks = [m.register_forward_hook(lambda _m, _i, out: out * scale) for m in layers]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Softmax outputs of ``model`` on ``x``, batch by batch, on the model's device; back on the CPU."""
    device = device_of(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            batch = x[i : i + batch_size].to(device)
            out.append(torch.softmax(model(batch.contiguous(memory_format=torch.channels_last)), 1).cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class PscModels:
    """The chosen amplification depths (numbers of last layers amplified), one per amplified model."""

    depths: tuple[int, ...]
    benign_error: float
    """Error rate on the benign images with the first depth amplified."""
    layers: int


def choose_depths(model: nn.Module, x: Tensor, y: Tensor, n: int, xi: float, scale: float,
                  batch_size: int) -> PscModels:
    """The smallest depth whose amplification errs on at least ``xi`` of the benign ``x`` (labels ``y``), and the
    ``n`` depths from it on (fewer when the model has fewer layers). The deepest depth serves when none reaches
    ``xi``."""
    layers = amplifiable(model)
    error = 0.0
    depth = len(layers)
    for k in range(1, len(layers) + 1):
        with amplified(layers[-k:], scale):
            error = float((_predict(model, x, batch_size).argmax(1) != y).double().mean())
        if error >= xi:
            depth = k
            break
    return PscModels(tuple(range(depth, min(len(layers), depth + n - 1) + 1)), error, len(layers))


def psc(model: nn.Module, x: Tensor, chosen: PscModels, scale: float, batch_size: int) -> Tensor:
    """Each image's PSC: the amplified models' mean confidence in the class the model itself predicts."""
    was_training = model.training
    model.eval()
    try:
        label = _predict(model, x, batch_size).argmax(1)
        layers = amplifiable(model)
        total = torch.zeros(len(x), dtype=torch.float64)
        for k in chosen.depths:
            with amplified(layers[-k:], scale):
                total += _predict(model, x, batch_size).gather(1, label[:, None])[:, 0].double()
    finally:
        model.train(was_training)
    return total / len(chosen.depths)


def _check(n: int, xi: float, scale: float) -> None:
    if n < 1 or not 0.0 < xi <= 1.0 or not scale > 1.0:
        raise PoisonlabError(f"IBD-PSC n={n}, xi={xi}, scale={scale}: expected n >= 1, xi in (0, 1] and scale > 1")


@DEFENSES.register("ibd-psc", "input filter: confidence kept under amplified batch norms (IBD-PSC, Hou et al. 2024)")
@dataclass
class IbdPsc:
    """Input-time filter: ``fit`` chooses the amplified layers and the threshold on clean images, ``detect`` flags.

    Example:
        >>> psc_filter = IbdPsc(frr=0.01).fit(model, clean_val)
        >>> psc_filter.detect(model, incoming.x).flagged   # inputs whose prediction survives amplification
    """

    kind: ClassVar[DefenseKind] = "input-filter"
    n: int = 5
    xi: float = 0.6
    scale: float = 1.5
    frr: float = 0.01
    batch_size: int = 256

    def __post_init__(self) -> None:
        _check(self.n, self.xi, self.scale)
        if not 0.0 < self.frr < 1.0:
            raise PoisonlabError(f"IBD-PSC false-rejection rate {self.frr}: expected a fraction in (0, 1)")

    def fit(self, model: nn.Module, clean: ImageSet) -> IbdPsc:
        """Choose the depths on half of ``clean``; the threshold is the other half's ``1 - frr`` PSC quantile."""
        if len(clean) < 2:
            raise PoisonlabError(f"IBD-PSC: expected at least 2 clean images to fit on, got {len(clean)}")
        half = len(clean) // 2
        self.chosen_ = choose_depths(model, clean.x[:half], clean.y[:half], self.n, self.xi, self.scale,
                                     self.batch_size)
        held = psc(model, clean.x[half:], self.chosen_, self.scale, self.batch_size)
        self.threshold_ = float(torch.quantile(held, 1 - self.frr))
        return self

    def detect(self, model: nn.Module, x: Tensor) -> Verdict:
        """Scores are PSC values (higher = more suspicious); flagged = PSC above the threshold."""
        if not hasattr(self, "threshold_"):
            raise PoisonlabError("IBD-PSC: call fit(model, clean) before detect")
        scores = psc(model, x, self.chosen_, self.scale, self.batch_size)
        return Verdict(scores=scores, flagged=torch.nonzero(scores > self.threshold_).flatten(),
                       details={"threshold_psc": self.threshold_, "frr": self.frr, "depths": list(self.chosen_.depths),
                                "benign_error": self.chosen_.benign_error})
