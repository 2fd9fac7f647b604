"""Back-gradient poisoning (Muñoz-González, Biggio, Demontis, Paudice, Wongrassamee, Lupu, Roli; AISec 2017).

Paper: arXiv 1708.08689.

Adds a few optimised points to the training set. Each starts as a label-flipped clone of a training point (for the
generic goal relabelled as the class the clean surrogate finds least likely) and is moved, by projected gradient
ascent with a line search, to maximise the attacker's objective on validation data after the victim's training
procedure (T steps of gradient descent, run on a surrogate of the learner):

- error-generic (``goal="availability"``): maximise the validation loss;
- error-specific (``goal="targeted"``): minimise the loss on validation data whose ``source`` images are
  relabelled ``target`` (e.g. 8 -> 3), while the other classes keep their labels.

The gradient through training comes from back-gradient descent (poisonlab.backgradient.reverse). Points are
optimised one at a time: in the first pass each point joins the set and is optimised given the points before
it (so the first k points are a greedy attack with budget k); later passes revisit every point with all present.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from rich.progress import Progress
from torch import Tensor

from poisonlab.backgradient.learners import LEARNERS, Descent, Learner, build_learner
from poisonlab.backgradient.learners import train as train_weights
from poisonlab.backgradient.reverse import InnerProblem, Objective, back_gradient
from poisonlab.core import ImageSet, Poisoned, PoisonlabError, poison_count
from poisonlab.registry import ATTACKS

Goal = Literal["availability", "targeted"]
Evaluate = Callable[[Tensor], tuple[float, Tensor]]
"""A candidate poisoning point -> (attacker's objective after training, trained weights)."""


def unchanged(x: Tensor, target: Tensor | None) -> Tensor:
    """The identity trigger: poisoning by optimised points needs nothing stamped at test time."""
    return x.clone()


@dataclass(frozen=True)
class SourceToTarget:
    """Labels ``source`` -> ``target``, other labels kept: the error-specific attacker's wish."""

    source: int
    target: int

    def __call__(self, y: Tensor) -> Tensor:
        return torch.where(y == self.source, torch.full_like(y, self.target), y)


def identity_labels(y: Tensor) -> Tensor:
    """The error-generic attacker has no target labels."""
    return y.clone()


@dataclass(frozen=True)
class Crafted:
    """The poisoned set plus what a report shows: starting points, objective after each point, reversal error."""

    poisoned: Poisoned
    start: Tensor
    labels: Tensor
    objective: list[float] = field(default_factory=list)
    w0_error: float = 0.0


@ATTACKS.register("backgradient", "optimised points via back-gradient (Munoz-Gonzalez 2017)")
@dataclass(frozen=True)
class BackGradientPoisoning:
    """Poison by ``rate`` (or ``count``) optimised points appended to the training set.

    The surrogate learner (``learner``, ``weight_decay``, inputs centred on the clean training mean when
    ``center``) is trained by ``steps`` of gradient descent with step ``lr`` on the poisoned set, from seeded
    initial weights or, with ``warm_start`` > 0, from those weights after ``warm_start`` clean steps (a
    truncated inner problem: cheaper, and a short reversal is numerically stable).
    Each point gets ``iterations`` gradient steps per pass; a step moves pixels by at most ``step`` along the
    gradient scaled to unit max-norm, doubled or halved up to ``line_search`` times, then clipped to [0, 1].
    The attacker's validation set is ``validation`` or, when None, ``val_size`` random training images.

    Example:
        >>> attack = BackGradientPoisoning(learner="logreg", goal="targeted", source=8, target=3, count=20)
        >>> poisoned = attack.poison(train, torch.Generator().manual_seed(0))
    """

    learner: str = "logreg"
    goal: Goal = "availability"
    rate: float = 0.03
    count: int | None = None
    source: int = 8
    target: int = 3
    steps: int = 100
    lr: float = 0.1
    warm_start: int = 0
    batch_size: int | None = None
    weight_decay: float = 1e-3
    center: bool = True
    passes: int = 1
    iterations: int = 3
    step: float = 0.5
    line_search: int = 3
    refine: int = 1
    validation: ImageSet | None = None
    val_size: int = 500
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        LEARNERS.get(self.learner)
        if self.goal not in ("availability", "targeted"):
            raise PoisonlabError(f"back-gradient goal {self.goal!r}: expected availability or targeted")
        if self.goal == "targeted" and self.source == self.target:
            raise PoisonlabError(f"back-gradient source and target are both {self.source}: expected two classes")
        if self.warm_start < 0:
            raise PoisonlabError(f"back-gradient warm_start {self.warm_start}: expected >= 0")
        for name in ("passes", "iterations", "val_size"):
            if getattr(self, name) < 1:
                raise PoisonlabError(f"back-gradient {name} {getattr(self, name)}: expected at least 1")
        if not self.step > 0 or self.line_search < 0:
            raise PoisonlabError(
                f"back-gradient step {self.step} / line_search {self.line_search}: expected > 0 / >= 0")
        Descent(self.steps, self.lr, self.batch_size, self.seed)
        poison_count(1000, self.rate, self.count)

    def descent(self) -> Descent:
        return Descent(self.steps, self.lr, self.batch_size, self.seed)

    def surrogate(self, train: ImageSet) -> Learner:
        """The attacker's copy of the learner for ``train``."""
        center = train.x.mean(0).double() if self.center else None
        return build_learner(self.learner, train.shape, train.num_classes, self.weight_decay, center)

    def objective(self, learner: Learner, validation: ImageSet) -> Objective:
        """What the attacker maximises, as a function of the trained weights."""
        x = validation.x.double()
        if self.goal == "availability":
            y = validation.y
            return lambda w: learner.sample_losses(learner.logits(w, x), y).mean()
        y = SourceToTarget(self.source, self.target)(validation.y)
        return lambda w: -learner.sample_losses(learner.logits(w, x), y).mean()

    def _start(self, train: ImageSet, m: int, rng: torch.Generator, learner: Learner,
               w_clean: Tensor) -> tuple[Tensor, Tensor]:
        """Label-flipped clones: source images labelled target (specific), or random images (generic) each given
        the label the clean surrogate ``w_clean`` finds least likely."""
        k = train.num_classes
        if self.goal == "targeted":
            for c in (self.source, self.target):
                if not 0 <= c < k:
                    raise PoisonlabError(f"back-gradient class {c}: expected a class in [0, {k - 1}]")
            pool = torch.nonzero(train.y == self.source).flatten()
            if len(pool) == 0:
                raise PoisonlabError(f"back-gradient source class {self.source} has no training images to clone")
            idx = pool[torch.randint(len(pool), (m,), generator=rng)]
            return train.x[idx].double(), torch.full((m,), self.target, dtype=torch.int64)
        idx = torch.randperm(len(train), generator=rng)[:m] if m <= len(train) else torch.randint(
            len(train), (m,), generator=rng)
        x = train.x[idx].double()
        with torch.no_grad():
            return x, learner.logits(w_clean, x).argmin(1)

    def poison(self, train: ImageSet, rng: torch.Generator) -> Poisoned:
        return self.craft(train, rng).poisoned

    def craft(self, train: ImageSet, rng: torch.Generator) -> Crafted:
        """Optimise the poisoning points against ``train``; return them with their starting points."""
        m = poison_count(len(train), self.rate, self.count)
        validation = self.validation
        if validation is None:
            validation = train.subset(torch.randperm(len(train), generator=rng)[: self.val_size])
        if validation.shape != train.shape or validation.num_classes != train.num_classes:
            raise PoisonlabError(f"back-gradient validation set {validation.shape}: expected images like {train.shape}")
        learner = self.surrogate(train)
        objective = self.objective(learner, validation)
        x_train = train.x.double()
        w0 = learner.init(self.seed, torch.float64)
        if self.warm_start:
            clean = Descent(self.warm_start, self.lr, self.batch_size, self.seed)
            w0 = train_weights(learner, w0, x_train, train.y, clean)
        start, labels = self._start(train, m, rng, learner, train_weights(learner, w0, x_train, train.y,
                                                                          self.descent()))
        xp = start.clone()
        history: list[float] = []
        w0_error = 0.0
        with Progress(disable=not self.progress, transient=True) as bar:
            task = bar.add_task("back-gradient poisoning", total=self.passes * m)
            for p in range(self.passes):
                for c in range(m):
                    n_active = c + 1 if p == 0 else m
                    problem = InnerProblem(learner, x_train, train.y, labels[:n_active], self.descent())
                    value, err = self._optimise_point(problem, w0, xp, c, n_active, objective)
                    w0_error = max(w0_error, err)
                    if p == self.passes - 1:
                        history.append(value)
                    bar.advance(task)
        x = torch.cat([train.x, xp.float()])
        y = torch.cat([train.y, labels])
        target_map = SourceToTarget(self.source, self.target) if self.goal == "targeted" else identity_labels
        poisoned = Poisoned(ImageSet(x, y, train.classes), torch.arange(len(train), len(train) + m), unchanged,
                            target_map)
        return Crafted(poisoned, start.float(), labels, history, w0_error)

    def _optimise_point(self, problem: InnerProblem, w0: Tensor, xp: Tensor, c: int, n_active: int,
                        objective: Objective) -> tuple[float, float]:
        """Move point ``c`` of ``xp`` (in place) uphill; return the final objective and the worst reversal error."""

        def evaluate(candidate: Tensor) -> tuple[float, Tensor]:
            trial = xp[:n_active].clone()
            trial[c] = candidate
            w = problem.train(w0, trial)
            with torch.no_grad():
                return float(objective(w)), w

        best, w_final = evaluate(xp[c])
        worst = 0.0
        for _ in range(self.iterations):
            bg = back_gradient(problem, w0, xp[:n_active], objective, w_final=w_final, refine=self.refine)
            worst = max(worst, bg.w0_error)
            direction = bg.grad[c]
            scale = float(direction.abs().max())
            if not scale > 0:
                break
            found = self._line_search(xp[c], direction / scale, best, evaluate)
            if found is None:
                break
            xp[c], best, w_final = found
        return best, worst

    def _line_search(self, x: Tensor, direction: Tensor, best: float,
                     evaluate: Evaluate) -> tuple[Tensor, float, Tensor] | None:
        """The best step ``step * 2^k`` (|k| <= line_search) from ``x``, clipped to [0, 1]; None if none improves."""
        s = self.step
        candidate = (x + s * direction).clamp(0, 1)
        value, w = evaluate(candidate)
        if value > best:
            for _ in range(self.line_search):
                bigger = (x + 2 * s * direction).clamp(0, 1)
                v2, w2 = evaluate(bigger)
                if v2 <= value:
                    break
                s, candidate, value, w = 2 * s, bigger, v2, w2
            return candidate, value, w
        for _ in range(self.line_search):
            s /= 2
            candidate = (x + s * direction).clamp(0, 1)
            value, w = evaluate(candidate)
            if value > best:
                return candidate, value, w
        return None
