"""Learners for back-gradient poisoning (Muñoz-González et al. 2017, arXiv 1708.08689): models on a flat weight vector.

Each learner is a pure function of one flat weight tensor ``w``, so the inner problem (T steps of gradient
descent on the training loss) and its reversal can differentiate through it with Hessian-vector products.
Adaline (squared loss on +-1 one-vs-all targets), multinomial logistic regression, a one-hidden-layer tanh MLP
and a one-convolution tanh CNN. Smooth activations keep the Hessian well defined everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from poisonlab.core import PoisonlabError
from poisonlab.registry import Registry

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Learner:
    """A classifier ``logits(w, x)`` on a flat weight vector, with an L2-regularised mean training loss.

    ``center`` (one input's shape, e.g. the clean training mean) is subtracted from every input: like the
    input normalisation of poisonlab's models, it is fixed preprocessing, and it shrinks the largest Hessian
    eigenvalue (the mean-image direction) so gradient descent converges and reverses stably at a useful step.
    Subclasses list their parameter ``layout`` and compute ``forward`` from the unflattened parameters.
    """

    in_shape: tuple[int, int, int]
    num_classes: int
    weight_decay: float = 1e-3
    center: Tensor | None = None

    def layout(self) -> list[tuple[str, Shape]]:
        raise NotImplementedError

    def forward(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def size(self) -> int:
        """Number of weights."""
        return sum(math.prod(s) for _, s in self.layout())

    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        """Views of ``w`` shaped as the named parameters."""
        if w.ndim != 1 or len(w) != self.size:
            raise PoisonlabError(f"weights: expected a flat tensor of {self.size}, got {tuple(w.shape)}")
        out, i = {}, 0
        for name, shape in self.layout():
            n = math.prod(shape)
            out[name] = w[i : i + n].view(shape)
            i += n
        return out

    def init(self, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Seeded initial weights: biases 0, other weights N(0, 1/fan_in); all 0 for linear learners."""
        g = torch.Generator().manual_seed(seed)
        parts = []
        for name, shape in self.layout():
            if name.startswith("b") or self.linear:
                parts.append(torch.zeros(math.prod(shape), dtype=torch.float64))
            else:
                fan_in = math.prod(shape[1:])
                parts.append(torch.randn(math.prod(shape), generator=g, dtype=torch.float64) / math.sqrt(fan_in))
        return torch.cat(parts).to(dtype)

    @property
    def linear(self) -> bool:
        return False

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        """Class scores (N, num_classes) of images ``x`` shaped (N, C, H, W)."""
        if tuple(x.shape[1:]) != self.in_shape:
            raise PoisonlabError(f"inputs: expected (N, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        return self.forward(self.unflatten(w), x)

    def affine(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """First layer (x - center) W^T + b, computed as x W^T + (b - center W^T) so no centred copy of x is kept."""
        out = x.flatten(1) @ weight.T + bias
        if self.center is not None:
            out = out - self.center.to(x.dtype).flatten() @ weight.T
        return out

    def convolve(self, x: Tensor, weight: Tensor, bias: Tensor, stride: int) -> Tensor:
        """First layer conv(x - center) = conv(x) - conv(center), for the same reason as ``affine``."""
        out = F.conv2d(x, weight, bias, stride=stride)
        if self.center is not None:
            out = out - F.conv2d(self.center.to(x.dtype)[None], weight, stride=stride)
        return out

    def penalty(self, w: Tensor) -> Tensor:
        """(weight_decay / 2) * ||w||^2."""
        return 0.5 * self.weight_decay * (w * w).sum()

    def sample_losses(self, scores: Tensor, y: Tensor) -> Tensor:
        """Per-sample loss of the scores against labels (cross-entropy unless overridden)."""
        return F.cross_entropy(scores, y, reduction="none")

    def loss(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Mean training loss plus (weight_decay / 2) * ||w||^2: the inner objective."""
        return self.sample_losses(self.logits(w, x), y).mean() + self.penalty(w)

    def predict(self, w: Tensor, x: Tensor) -> Tensor:
        """Predicted labels."""
        with torch.no_grad():
            return self.logits(w, x.to(w.dtype)).argmax(1)


def _flat_dim(in_shape: tuple[int, int, int]) -> int:
    return math.prod(in_shape)


@dataclass(frozen=True)
class LogisticRegression(Learner):
    """Multinomial logistic regression (softmax cross-entropy)."""

    @property
    def linear(self) -> bool:
        return True

    def layout(self) -> list[tuple[str, Shape]]:
        return [("W", (self.num_classes, _flat_dim(self.in_shape))), ("b", (self.num_classes,))]

    def forward(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        return self.affine(x, p["W"], p["b"])


@dataclass(frozen=True)
class Adaline(LogisticRegression):
    """Adaline: a linear model fitted by squared loss to +1 / -1 one-vs-all targets (half the summed squares)."""

    def sample_losses(self, scores: Tensor, y: Tensor) -> Tensor:
        targets = 2.0 * F.one_hot(y, self.num_classes).to(scores.dtype) - 1.0
        return 0.5 * ((scores - targets) ** 2).sum(1)


@dataclass(frozen=True)
class MLP(Learner):
    """One hidden tanh layer of ``hidden`` units."""

    hidden: int = 32

    def layout(self) -> list[tuple[str, Shape]]:
        d = _flat_dim(self.in_shape)
        return [("W1", (self.hidden, d)), ("b1", (self.hidden,)), ("W2", (self.num_classes, self.hidden)),
                ("b2", (self.num_classes,))]

    def forward(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.tanh(self.affine(x, p["W1"], p["b1"])) @ p["W2"].T + p["b2"]


@dataclass(frozen=True)
class SmallCNN(Learner):
    """One 5x5 stride-2 convolution with ``channels`` tanh maps, then a linear layer."""

    channels: int = 8
    kernel: int = 5
    stride: int = 2

    def _out_hw(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        if h < self.kernel or w < self.kernel:
            raise PoisonlabError(f"cnn learner: inputs {h}x{w} are smaller than its {self.kernel}x{self.kernel} kernel")
        return (h - self.kernel) // self.stride + 1, (w - self.kernel) // self.stride + 1

    def layout(self) -> list[tuple[str, Shape]]:
        c = self.in_shape[0]
        oh, ow = self._out_hw()
        return [("Wc", (self.channels, c, self.kernel, self.kernel)), ("bc", (self.channels,)),
                ("W", (self.num_classes, self.channels * oh * ow)), ("b", (self.num_classes,))]

    def forward(self, p: dict[str, Tensor], x: Tensor) -> Tensor:
        h = torch.tanh(self.convolve(x, p["Wc"], p["bc"], self.stride))
        return h.flatten(1) @ p["W"].T + p["b"]


LEARNERS: Registry[type[Learner]] = Registry("learner")
LEARNERS.register("adaline", "linear model, squared loss on +-1 one-vs-all targets")(Adaline)
LEARNERS.register("logreg", "multinomial logistic regression")(LogisticRegression)
LEARNERS.register("mlp", "one hidden tanh layer (32 units)")(MLP)
LEARNERS.register("cnn", "one 5x5 stride-2 tanh convolution (8 maps) + linear")(SmallCNN)


def build_learner(name: str, in_shape: tuple[int, int, int], num_classes: int, weight_decay: float = 1e-3,
                  center: Tensor | None = None) -> Learner:
    """The learner called ``name`` for inputs of ``in_shape`` and ``num_classes`` classes (see Learner.center)."""
    if weight_decay < 0:
        raise PoisonlabError(f"weight decay {weight_decay}: expected >= 0")
    if center is not None and tuple(center.shape) != tuple(in_shape):
        raise PoisonlabError(f"learner center: expected shape {tuple(in_shape)}, got {tuple(center.shape)}")
    learner = LEARNERS.get(name)(in_shape=in_shape, num_classes=num_classes, weight_decay=weight_decay,
                                 center=center)
    learner.layout()  # fail now on inputs the learner cannot take
    return learner


@dataclass(frozen=True)
class Descent:
    """The inner training procedure: ``steps`` of gradient descent with step ``lr`` from fixed initial weights.

    ``batch_size`` None is full-batch; otherwise step t uses the fixed index set ``batch(t, n)`` drawn from
    ``seed``, so the same schedule can be replayed backwards.
    """

    steps: int = 100
    lr: float = 0.5
    batch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise PoisonlabError(f"inner steps {self.steps}: expected at least 1")
        if not self.lr > 0:
            raise PoisonlabError(f"inner learning rate {self.lr}: expected > 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise PoisonlabError(f"inner batch size {self.batch_size}: expected at least 1")

    def batch(self, t: int, n: int) -> Tensor | None:
        """Indices of the samples step ``t`` uses, None for all; the same for a given (seed, t, n)."""
        if self.batch_size is None or self.batch_size >= n:
            return None
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + t)
        return torch.randperm(n, generator=g)[: self.batch_size]


def step_loss(learner: Learner, w: Tensor, x: Tensor, y: Tensor, idx: Tensor | None) -> Tensor:
    """The training loss that one descent step minimises (on the minibatch ``idx`` when given)."""
    if idx is None:
        return learner.loss(w, x, y)
    return learner.loss(w, x[idx], y[idx])


def train(learner: Learner, w0: Tensor, x: Tensor, y: Tensor, descent: Descent) -> Tensor:
    """Weights after ``descent.steps`` of gradient descent from ``w0`` on (x, y); no graph is kept."""
    w = w0.detach().clone()
    x = x.to(w.dtype)
    for t in range(descent.steps):
        w.requires_grad_(True)
        (g,) = torch.autograd.grad(step_loss(learner, w, x, y, descent.batch(t, len(y))), w)
        w = (w - descent.lr * g).detach()
    return w
