"""Recover the linear operator behind a library's resize: ``resize(X) = L @ X @ R`` per channel.

Quiring et al. (USENIX Security 2020, Sec. 3) recover the left (h x H) and right (W x w) scaling
matrices by resizing identity matrices along one axis at a time; the attack and the defenses then work
on the matrices, and ``verify_operator`` checks that they reproduce the library within rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from scipy import sparse

from poisonlab.core import PoisonlabError
from poisonlab.scaling.resize import RESIZERS, Resizer

_ZERO = 1e-9  # coefficients below this are float noise from the library, not weights


@dataclass(frozen=True)
class ScalingOperator:
    """``left`` (h, H) and ``right`` (W, w): the library's resize of an (H, W) plane is ``left @ X @ right``."""

    left: np.ndarray
    right: np.ndarray

    @property
    def source_shape(self) -> tuple[int, int]:
        return self.left.shape[1], self.right.shape[0]

    @property
    def target_shape(self) -> tuple[int, int]:
        return self.left.shape[0], self.right.shape[1]

    @cached_property
    def _sparse(self) -> tuple[sparse.csr_matrix, sparse.csr_matrix, sparse.csr_matrix, sparse.csr_matrix]:
        return (sparse.csr_matrix(self.left), sparse.csr_matrix(self.right.T),
                sparse.csr_matrix(self.left.T), sparse.csr_matrix(self.right))

    @staticmethod
    def _sandwich(planes: np.ndarray, rows: sparse.csr_matrix, cols_t: sparse.csr_matrix) -> np.ndarray:
        """``rows @ X @ cols_t.T`` for every plane X of (..., n, m), with sparse products (fast on few cores)."""
        lead, (n, m) = planes.shape[:-2], planes.shape[-2:]
        x = planes.reshape(-1, n, m)
        b = x.shape[0]
        y = (rows @ np.moveaxis(x, 0, 1).reshape(n, b * m)).reshape(rows.shape[0], b, m)
        z = (cols_t @ np.moveaxis(y, 2, 0).reshape(m, -1)).reshape(cols_t.shape[0], rows.shape[0], b)
        return np.moveaxis(z, (0, 1, 2), (2, 1, 0)).reshape(*lead, rows.shape[0], cols_t.shape[0])

    def apply(self, planes: np.ndarray) -> np.ndarray:
        """Resize planes shaped (..., H, W) -> (..., h, w): ``L @ X @ R``."""
        left, right_t, _, _ = self._sparse
        return self._sandwich(np.asarray(planes, dtype=np.float64), left, right_t)

    def adjoint(self, planes: np.ndarray) -> np.ndarray:
        """The transpose map (..., h, w) -> (..., H, W): ``L.T @ Y @ R.T``."""
        _, _, left_t, right = self._sparse
        return self._sandwich(np.asarray(planes, dtype=np.float64), left_t, right)

    def read_mask(self) -> np.ndarray:
        """(H, W) bool: the source pixels the resize reads (a nonzero weight in both directions)."""
        rows = np.abs(self.left).sum(axis=0) > 0
        cols = np.abs(self.right).sum(axis=1) > 0
        return rows[:, None] & cols[None, :]

    def coverage(self) -> float:
        """Share of source pixels the resize reads at all; 1.0 means every pixel counts."""
        return float(self.read_mask().mean())

    def disjoint(self) -> bool:
        """Whether no two output rows share a source row and no two output columns share a source column."""
        return _disjoint(self.left) and _disjoint(self.right.T)


def _disjoint(m: np.ndarray) -> bool:
    nz = (m != 0).astype(np.int64)
    return bool((nz.sum(axis=0) <= 1).all())


def recover_operator(resizer: Resizer, source_shape: tuple[int, int], target_shape: tuple[int, int]) -> ScalingOperator:
    """The scaling matrices of ``resizer`` from (H, W) to (h, w), read off resized identity matrices."""
    (big_h, big_w), (h, w) = source_shape, target_shape
    if h > big_h or w > big_w:
        raise PoisonlabError(f"target size {h}x{w} (HxW): expected no larger than the source {big_h}x{big_w}")
    left = resizer(np.eye(big_h), (h, big_h))
    right = resizer(np.eye(big_w), (big_w, w))
    left[np.abs(left) < _ZERO] = 0.0
    right[np.abs(right) < _ZERO] = 0.0
    return ScalingOperator(left, right)


@lru_cache(maxsize=64)
def _cached(name: str, source_shape: tuple[int, int], target_shape: tuple[int, int]) -> ScalingOperator:
    return recover_operator(RESIZERS.get(name), source_shape, target_shape)


def operator_for(resizer: Resizer, source_shape: tuple[int, int], target_shape: tuple[int, int]) -> ScalingOperator:
    """``recover_operator``, cached per (resizer, sizes): recovery costs two resizes of identity matrices."""
    if resizer.name in RESIZERS and RESIZERS.get(resizer.name) == resizer:
        return _cached(resizer.name, tuple(source_shape), tuple(target_shape))  # type: ignore[arg-type]
    return recover_operator(resizer, source_shape, target_shape)


def verify_operator(op: ScalingOperator, resizer: Resizer, channels: int = 3, trials: int = 2, seed: int = 0) -> float:
    """Largest |library(X) - L X R| over random float images X on the 0-255 scale (should be float rounding)."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(trials):
        x = rng.uniform(0, 255, size=(*op.source_shape, channels))
        ours = np.moveaxis(op.apply(np.moveaxis(x, -1, 0)), 0, -1)
        worst = max(worst, float(np.abs(resizer(x, op.target_shape) - ours).max()))
    return worst
