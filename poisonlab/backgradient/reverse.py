"""Back-gradient descent (Muñoz-González et al. 2017, arXiv 1708.08689, Algorithm 3; after Maclaurin et al. 2015).

The gradient of an attacker's objective A(w_T) with respect to poisoning points x_p, where w_T comes from
T steps of gradient descent w_{t+1} = w_t - lr * grad_w L(w_t; D_tr + D_p), is computed by walking the
descent backwards from w_T alone:

    dw = grad A(w_T), dx = 0
    for t = T-1 .. 0:  w_t  = w_{t+1} + lr * grad_w L(w_t)   (solved from w_{t+1}; see ``refine``)
                       dx -= lr * (d/dx_p grad_w L(w_t))^T dw
                       dw -= lr * Hessian_w L(w_t) dw

Both products come from one double-backward vector-Jacobian product, never an explicit Hessian, and only
the current step's graph is alive, so memory is flat in T. The paper's listing evaluates the products at
w_{t+1} and takes w_t ~ w_{t+1} + lr * grad L(w_{t+1}); here they are evaluated at the recovered w_t (the
point the forward step differentiated), and ``refine`` fixed-point iterations make the recovery match the
forward trajectory to rounding, so the result equals unrolled autograd (``unrolled_gradient``) on problems
where the reversal is stable. Reversing a contracting descent amplifies rounding error, so check
``BackGradient.w0_error`` on long runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from poisonlab.backgradient.learners import Descent, Learner
from poisonlab.core import PoisonlabError

Objective = Callable[[Tensor], Tensor]
"""Weights -> the attacker's scalar objective (which the attacker maximises)."""


@dataclass(frozen=True)
class InnerProblem:
    """Training data (x_tr, y_tr) plus poisoning points with fixed labels y_p; x_p is the variable."""

    learner: Learner
    x_train: Tensor
    y_train: Tensor
    y_poison: Tensor
    descent: Descent

    def loss_at(self, t: int, w: Tensor, x_poison: Tensor) -> Tensor:
        """The training loss of descent step ``t`` on the training set joined with ``x_poison``.

        The two parts are scored separately, never concatenated, so each step's graph references the
        training images instead of holding a fresh copy of them.
        """
        n_train = len(self.y_train)
        idx = self.descent.batch(t, n_train + len(self.y_poison))
        parts = [(self.x_train, self.y_train), (x_poison, self.y_poison)]
        count = n_train + len(self.y_poison)
        if idx is not None:
            own = idx[idx < n_train]
            added = idx[idx >= n_train] - n_train
            parts = [(self.x_train[own], self.y_train[own]), (x_poison[added], self.y_poison[added])]
            count = len(idx)
        learner = self.learner
        total = sum(learner.sample_losses(learner.logits(w, x.to(w.dtype)), y).sum() for x, y in parts if len(y))
        return total / count + learner.penalty(w)

    def grad_at(self, t: int, w: Tensor, x_poison: Tensor, create_graph: bool = False) -> Tensor:
        """grad_w of step ``t``'s loss at ``w``."""
        w = w if w.requires_grad else w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss_at(t, w, x_poison), w, create_graph=create_graph)
        return g

    def train(self, w0: Tensor, x_poison: Tensor) -> Tensor:
        """w_T: the descent run forward from ``w0`` (no graph kept)."""
        w = w0.detach().clone()
        xp = x_poison.detach().to(w.dtype)
        for t in range(self.descent.steps):
            w = (w - self.descent.lr * self.grad_at(t, w, xp)).detach()
        return w


@dataclass(frozen=True)
class BackGradient:
    """d A / d x_p, A(w_T), and how far the reversed descent landed from the true w_0 (max abs difference)."""

    grad: Tensor
    value: float
    w0_error: float


def _checked(objective: Objective, w: Tensor) -> tuple[Tensor, Tensor]:
    w = w.detach().requires_grad_(True)
    value = objective(w)
    if value.ndim != 0:
        raise PoisonlabError(f"attacker objective: expected a scalar, got shape {tuple(value.shape)}")
    (dw,) = torch.autograd.grad(value, w)
    return value.detach(), dw


def back_gradient(problem: InnerProblem, w0: Tensor, x_poison: Tensor, objective: Objective,
                  w_final: Tensor | None = None, refine: int = 2) -> BackGradient:
    """d objective(w_T) / d x_poison by reverse-mode descent from w_T (computed from ``w0`` unless given).

    ``refine`` fixed-point iterations w_t <- w_{t+1} + lr * grad L(w_t) follow the one-step recovery
    (``refine=0`` is the paper's approximation).
    """
    if refine < 0:
        raise PoisonlabError(f"refine {refine}: expected >= 0")
    lr, steps = problem.descent.lr, problem.descent.steps
    xp = x_poison.detach().to(w0.dtype).requires_grad_(True)
    w = problem.train(w0, xp) if w_final is None else w_final.detach().to(w0.dtype)
    value, dw = _checked(objective, w)
    dx = torch.zeros_like(xp)
    g_here: Tensor | None = None  # grad L(w) of the step about to be reversed, when already known
    for t in range(steps - 1, -1, -1):
        if g_here is None:
            g_here = problem.grad_at(t, w, xp.detach())
        w_prev = w + lr * g_here
        for _ in range(refine):
            w_prev = w + lr * problem.grad_at(t, w_prev, xp.detach())
        w_prev = w_prev.detach().requires_grad_(True)
        g = problem.grad_at(t, w_prev, xp, create_graph=True)
        # allow_unused: a minibatch may hold no poisoning point, and then this step does not depend on x_p
        hw, hx = torch.autograd.grad(g, (w_prev, xp), grad_outputs=dw, allow_unused=True)
        if hx is not None:
            dx = dx - lr * hx
        dw = dw - lr * hw
        w = w_prev.detach()
        # With full batches every step has the same loss, so grad L(w_t) seeds the next recovery for free.
        full = problem.descent.batch(t, len(problem.y_train) + len(problem.y_poison)) is None
        g_here = g.detach() if full else None
    return BackGradient(dx, float(value), float((w - w0).abs().max()))


def unrolled_gradient(problem: InnerProblem, w0: Tensor, x_poison: Tensor, objective: Objective) -> BackGradient:
    """The reference: d objective(w_T) / d x_poison by plain autograd through all T steps (memory grows with T)."""
    xp = x_poison.detach().to(w0.dtype).requires_grad_(True)
    w = w0.detach().clone().requires_grad_(True)
    for t in range(problem.descent.steps):
        w = w - problem.descent.lr * problem.grad_at(t, w, xp, create_graph=True)
    value = objective(w)
    (dx,) = torch.autograd.grad(value, xp)
    return BackGradient(dx, float(value.detach()), 0.0)
