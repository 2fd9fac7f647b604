"""Craft image-scaling attacks: an image A that looks like S at full size and becomes T after the resize.

Quiring et al. (USENIX Security 2020, "Adversarial Preprocessing", Sec. 3-4) pose the strong attack as

    minimise ||A - S||^2   subject to   ||L A R - T||_inf <= eps,   0 <= A <= 255,

and solve one quadratic program per column with a generic solver. Here the problem is solved exactly and
vectorised over every output pixel, channel and image instead:

* When no two outputs share a source row or column (nearest, linear, cubic, ... at ratios above the kernel
  width: the vulnerable cases) the problem splits into one tiny QP per output pixel with a single two-sided
  constraint. Its solution is ``a = clip(s - lam * w, 0, 255)`` with ``w . a`` monotone in ``lam``; all
  blocks are bisected at once and a final step solves the active piece exactly ("blockwise-exact").
* Otherwise (overlapping kernels, antialiasing filters) an accelerated proximal-gradient method runs on the
  dual, whose variables are one multiplier per output pixel ("dual-fista").

``reference_qp`` solves the same problem with scipy's SLSQP, one call per independent block of the problem;
it exists to check the fast solver in tests and benchmarks, not for use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from poisonlab.core import PoisonlabError
from poisonlab.scaling.operator import ScalingOperator, operator_for
from poisonlab.scaling.resize import Resizer

PIXEL_MAX = 255.0


@dataclass
class SolveInfo:
    """How the solver got there: method, iterations, worst constraint violation, seconds."""

    method: str
    iterations: int = 0
    max_violation: float = 0.0
    seconds: float = 0.0
    details: dict[str, float] = field(default_factory=dict)


def _support(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``m``: padded column indices of its nonzeros, their weights and a validity mask."""
    nz = m != 0
    k = max(int(nz.sum(axis=1).max()), 1)
    idx = np.zeros((m.shape[0], k), dtype=np.int64)
    weight = np.zeros((m.shape[0], k))
    valid = np.zeros((m.shape[0], k), dtype=bool)
    for i, row in enumerate(nz):
        cols = np.flatnonzero(row)
        idx[i, : len(cols)], weight[i, : len(cols)], valid[i, : len(cols)] = cols, m[i, cols], True
    return idx, weight, valid


def _solve_blocks(s: np.ndarray, w: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  bisections: int = 64) -> tuple[np.ndarray, int]:
    """Exact min ||a - s||^2 s.t. lo <= w.a <= hi, 0 <= a <= 255, for many independent blocks.

    ``s`` (N, k) in [0, 255], ``w`` (N, k), ``lo``/``hi`` (N,). Returns (a, number of blocks moved).
    """
    a = s.copy()
    g0 = (w * s).sum(axis=1)
    goal = np.where(g0 > hi, hi, np.where(g0 < lo, lo, g0))
    move = np.flatnonzero(goal != g0)
    if move.size == 0:
        return a, 0
    s, w, goal = s[move], w[move], goal[move]
    sign = np.sign(g0[move] - goal)  # lam > 0 lowers w.a, lam < 0 raises it
    absw = np.abs(w)
    reach = np.where(absw > 0, PIXEL_MAX / np.where(absw > 0, absw, 1.0), 0.0).max(axis=1)
    lo_lam, hi_lam = np.zeros_like(goal), reach * sign  # the root lies between 0 and full clamping
    lo_lam, hi_lam = np.minimum(lo_lam, hi_lam), np.maximum(lo_lam, hi_lam)
    for _ in range(bisections):
        mid = 0.5 * (lo_lam + hi_lam)
        g = (w * np.clip(s - mid[:, None] * w, 0.0, PIXEL_MAX)).sum(axis=1)
        above = g > goal  # g decreases in lam: the root lies to the right of mid
        lo_lam, hi_lam = np.where(above, mid, lo_lam), np.where(above, hi_lam, mid)
    mid = 0.5 * (lo_lam + hi_lam)
    raw = s - mid[:, None] * w
    free = (raw > 0.0) & (raw < PIXEL_MAX) & (w != 0)
    clamped = np.where(free, 0.0, np.clip(raw, 0.0, PIXEL_MAX))
    curv = (w * w * free).sum(axis=1)
    exact = ((w * s * free).sum(axis=1) + (w * clamped).sum(axis=1) - goal) / np.where(curv > 0, curv, 1.0)
    lam = np.where(curv > 0, exact, mid)
    a[move] = np.clip(s - lam[:, None] * w, 0.0, PIXEL_MAX)
    return a, int(move.size)


def _blockwise(src: np.ndarray, lo: np.ndarray, hi: np.ndarray, op: ScalingOperator) -> tuple[np.ndarray, SolveInfo]:
    ri, rw, rv = _support(op.left)
    ci, cw, cv = _support(op.right.T)
    width = src.shape[-1]
    flat_idx = (ri[:, None, :, None] * width + ci[None, :, None, :]).reshape(ri.shape[0] * ci.shape[0], -1)
    weight = (rw[:, None, :, None] * cw[None, :, None, :]).reshape(flat_idx.shape)
    valid = (rv[:, None, :, None] & cv[None, :, None, :]).reshape(flat_idx.shape)
    planes = src.reshape(src.shape[0], -1)
    s = planes[:, flat_idx]  # (B, P, k)
    b, p, k = s.shape
    a, moved = _solve_blocks(s.reshape(b * p, k), np.broadcast_to(weight, (b, p, k)).reshape(b * p, k),
                             lo.reshape(-1), hi.reshape(-1))
    out = planes.copy()
    cols = flat_idx[valid]
    out[:, cols] = a.reshape(b, p, k)[:, valid]
    return out.reshape(src.shape), SolveInfo("blockwise-exact", iterations=1, details={"blocks_moved": moved})


def _dual_fista(src: np.ndarray, lo: np.ndarray, hi: np.ndarray, op: ScalingOperator,
                tol: float, max_iter: int) -> tuple[np.ndarray, SolveInfo]:
    left, right = op.left, op.right
    step = 1.0 / (np.linalg.norm(left, 2) ** 2 * np.linalg.norm(right, 2) ** 2)

    def primal(lam: np.ndarray) -> np.ndarray:
        return np.clip(src - op.adjoint(lam), 0.0, PIXEL_MAX)

    def prox_step(lam: np.ndarray) -> np.ndarray:
        v = lam + step * op.apply(primal(lam))
        return v - step * np.clip(v / step, lo, hi)

    lam = np.zeros(lo.shape)
    y, t = lam.copy(), 1.0
    it, history = 0, []
    for it in range(1, max_iter + 1):
        new = prox_step(y)
        restart = ((y - new) * (new - lam)).sum(axis=(-2, -1)) > 0
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = new + ((t - 1.0) / t_new) * (new - lam)
        y[restart] = new[restart]
        lam, t = new, (1.0 if restart.all() else t_new)
        if it % 10 == 0:
            residual = float(np.abs(prox_step(lam) - lam).max() / step)
            if residual <= tol:
                break
            history.append(residual)
            # an infeasible target (box-limited pixels under negative kernel lobes) never converges: stop
            if len(history) > 30 and history[-1] > 0.99 * min(history[:-30]):
                break
    return primal(lam), SolveInfo("dual-fista", iterations=it)


def solve_planes(source: np.ndarray, target: np.ndarray, op: ScalingOperator, eps: float,
                 tol: float = 1e-4, max_iter: int = 3000) -> tuple[np.ndarray, SolveInfo]:
    """The strong attack on planes: ``source`` (B, H, W), ``target`` (B, h, w), both on the 0-255 scale.

    Returns planes A (B, H, W) in [0, 255] minimising ||A - S|| with |L A R - T| <= eps everywhere.
    """
    if source.shape[-2:] != op.source_shape or target.shape[-2:] != op.target_shape:
        raise PoisonlabError(f"planes {source.shape[-2:]} -> {target.shape[-2:]}: expected "
                             f"{op.source_shape} -> {op.target_shape} to match the scaling operator")
    if eps < 0:
        raise PoisonlabError(f"eps {eps}: expected a non-negative tolerance on the 0-255 scale")
    start = time.perf_counter()
    src = np.clip(source.astype(np.float64), 0.0, PIXEL_MAX)
    tgt = target.astype(np.float64)
    if op.disjoint():
        out, info = _blockwise(src, tgt - eps, tgt + eps, op)
    else:
        margin = min(tol * 10, eps / 2)  # FISTA stops within tol of the band; aim slightly inside it
        out, info = _dual_fista(src, tgt - eps + margin, tgt + eps - margin, op, tol, max_iter)
    info.max_violation = float(np.maximum(np.abs(op.apply(out) - tgt) - eps, 0.0).max())
    info.seconds = time.perf_counter() - start
    return out, info


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB on the 0-255 scale (inf for identical images)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(PIXEL_MAX**2 / mse)


def _planes(img: np.ndarray) -> np.ndarray:
    return img[None].astype(np.float64) if img.ndim == 2 else np.moveaxis(img, -1, 0).astype(np.float64)


def _image(planes: np.ndarray, ndim: int) -> np.ndarray:
    return planes[0] if ndim == 2 else np.moveaxis(planes, 0, -1)


def quantization_margin(op: ScalingOperator) -> float:
    """How far rounding the attack image to integers can move one output pixel: 0.5 * max|L_i| * max|R_j|."""
    return 0.5 * float(np.abs(op.left).sum(axis=1).max() * np.abs(op.right).sum(axis=0).max())


def craft_planes(source: np.ndarray, target: np.ndarray, op: ScalingOperator, eps: float,
                 quantize: bool = True) -> tuple[np.ndarray, SolveInfo]:
    """The strong attack on (B, H, W) planes; with ``quantize`` solved with a margin and rounded to integers
    so that the rounded image still maps within ``eps`` (when eps exceeds the margin)."""
    solve_eps = max(eps - quantization_margin(op) - 1e-3, 0.0) if quantize else eps
    planes, info = solve_planes(source, target, op, solve_eps)
    return (np.clip(np.rint(planes), 0, PIXEL_MAX) if quantize else planes), info


@dataclass(frozen=True)
class Crafted:
    """An attack image and how well it works, judged by the library's own resize of it."""

    attack: np.ndarray
    psnr_source: float
    psnr_target: float
    max_target_error: float
    info: SolveInfo


def _check_pair(source: np.ndarray, target: np.ndarray) -> None:
    if source.ndim != target.ndim or (source.ndim == 3 and source.shape[2] != target.shape[2]):
        raise PoisonlabError(f"source {source.shape} and target {target.shape}: expected the same channels")
    if target.shape[0] > source.shape[0] or target.shape[1] > source.shape[1]:
        raise PoisonlabError(f"target {target.shape[:2]} is larger than source {source.shape[:2]}: "
                             "expected the target to be the downscaled size")


def craft_attack(source: np.ndarray, target: np.ndarray, resizer: Resizer, eps: float = 1.0,
                 quantize: bool = True) -> Crafted:
    """Strong attack: A close to ``source`` whose ``resizer`` output is within ``eps`` of ``target``.

    Images are (H, W) or (H, W, C) on the 0-255 scale; ``target`` has the downscaled size. With
    ``quantize`` the attack is returned as uint8 and solved with a margin so that rounding it keeps the
    library's output within ``eps`` (when eps exceeds the margin; else as close as rounding allows).
    """
    _check_pair(source, target)
    op = operator_for(resizer, source.shape[:2], target.shape[:2])
    planes, info = craft_planes(_planes(source), _planes(target), op, eps, quantize)
    attack = _image(planes, source.ndim)
    if quantize:
        attack = attack.astype(np.uint8)
    out = resizer(attack, target.shape[:2])
    return Crafted(attack, psnr(attack, source), psnr(out, target),
                   float(np.abs(out.astype(np.float64) - target).max()), info)


def craft_region(source: np.ndarray, target: np.ndarray, resizer: Resizer, box: tuple[int, int, int, int],
                 eps: float = 1.0) -> Crafted:
    """Strong attack on part of the model's input: ``resizer`` output is the source's own except in ``box``.

    ``box`` is (top, left, height, width) in output pixels; inside it the output becomes ``target``
    (shaped like the output). ``psnr_target`` and ``max_target_error`` are judged on the whole output.
    """
    _check_pair(source, target)
    top, left, height, width = box
    if height < 1 or width < 1 or top < 0 or left < 0 or top + height > target.shape[0] \
            or left + width > target.shape[1]:
        raise PoisonlabError(f"region {box}: expected (top, left, height, width) inside the output "
                             f"{target.shape[0]}x{target.shape[1]}")
    goal = resizer(source, target.shape[:2]).copy()
    goal[top:top + height, left:left + width] = target[top:top + height, left:left + width]
    return craft_attack(source, goal, resizer, eps)


def craft_weak(target: np.ndarray, resizer: Resizer, source_shape: tuple[int, int], eps: float = 1.0,
               quantize: bool = True) -> Crafted:
    """Weak attack: only the resize output matters; starts from ``target`` upscaled bilinearly (psnr_source
    is measured against that upscale)."""
    import cv2

    start = cv2.resize(target.astype(np.float64), (source_shape[1], source_shape[0]), interpolation=cv2.INTER_LINEAR)
    return craft_attack(start.reshape(*source_shape, *target.shape[2:]), target, resizer, eps, quantize)


def _components(m: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Independent groups of (output indices, source indices) of one scaling matrix (rows = outputs)."""
    nz = m != 0
    n_out, n_src = nz.shape
    graph = csr_matrix(np.block([[np.zeros((n_out, n_out)), nz], [nz.T, np.zeros((n_src, n_src))]]))
    count, label = connected_components(graph, directed=False)
    groups = []
    for c in range(count):
        outs = np.flatnonzero(label[:n_out] == c)
        if outs.size:
            groups.append((outs, np.flatnonzero(label[n_out:] == c)))
    return groups


def reference_qp(source: np.ndarray, target: np.ndarray, op: ScalingOperator, eps: float) -> np.ndarray:
    """The strong attack by scipy SLSQP, one generic QP per independent block of (B, H, W) planes. Slow."""
    out = np.clip(source.astype(np.float64), 0.0, PIXEL_MAX)
    row_groups, col_groups = _components(op.left), _components(op.right.T)
    for b in range(out.shape[0]):
        for r_out, r_src in row_groups:
            for c_out, c_src in col_groups:
                k = np.kron(op.left[np.ix_(r_out, r_src)], op.right[np.ix_(c_src, c_out)].T)
                s = out[b][np.ix_(r_src, c_src)].ravel()
                t = target[b][np.ix_(r_out, c_out)].ravel().astype(np.float64)
                cons = [{"type": "ineq", "fun": lambda x, k=k, t=t: eps - (k @ x - t), "jac": lambda x, k=k: -k},
                        {"type": "ineq", "fun": lambda x, k=k, t=t: eps + (k @ x - t), "jac": lambda x, k=k: k}]
                res = minimize(lambda x, s=s: 0.5 * np.sum((x - s) ** 2), s, jac=lambda x, s=s: x - s,
                               bounds=[(0.0, PIXEL_MAX)] * s.size, constraints=cons, method="SLSQP",
                               options={"ftol": 1e-12, "maxiter": 500})
                out[b][np.ix_(r_src, c_src)] = np.clip(res.x, 0.0, PIXEL_MAX).reshape(len(r_src), len(c_src))
    return out
