"""What a split-view or frontrunning attacker serves in place of a manifest's image.

Four substitutions: a plain swap (another image), a BadNets substitution (an image of another class
stamped with the trigger, which the manifest's label then "relabels" to the target), a universal-backdoor
one (the same with the class-encoding trigger of the row's own label, Schneider et al. 2023, so every
class becomes a target), and an adaptive one: the BadNets substitution nudged until its pHash equals the
original's, so a check that trusts one perceptual hash accepts it.

The pHash of a grey image g is the sign pattern of L = P g Q^T against its median, where P and Q are the
resize-to-32 matrices followed by the first 8 rows of the DCT (``phash`` resizes separably). The collision
moves each of the 64 coefficients just past the median on the original's side with the least-norm change
of g (pseudo-inverses of P and Q), clips, quantises to 8 bits and repeats until the bits agree.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch

from poisonlab.core import PoisonlabError, Trigger
from poisonlab.webscale.phash import DCT_SIZE, HASH_SIDE, LOW_DCT, phash

COLLISION_STEPS = 50
"""Most projection steps a pHash collision takes before it gives up."""


@lru_cache(maxsize=32)
def _projection(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, pinv(M)): M (8, n) maps an axis of length n to its 8 lowest DCT coefficients after the resize to 32."""
    resize = cv2.resize(np.eye(n, dtype=np.float32), (n, DCT_SIZE), interpolation=cv2.INTER_AREA).astype(np.float64)
    m = LOW_DCT @ resize
    return m, np.linalg.pinv(m)


def collide_phash(image: np.ndarray, target: str, margin: float = 0.02) -> np.ndarray:
    """``image`` (uint8 grey (H, W)) changed as little as this projection finds until its pHash is ``target``.

    Raises PoisonlabError when no collision is found in ``COLLISION_STEPS`` steps (the clipping to [0, 255]
    can leave too little room on a nearly black or white image).
    """
    want = np.array([c == "1" for c in f"{int(target, 16):064b}"]).reshape(HASH_SIDE, HASH_SIDE)
    p, p_inv = _projection(image.shape[0])
    q, q_inv = _projection(image.shape[1])
    g = image.astype(np.float64) / 255.0
    for _ in range(COLLISION_STEPS):
        out = np.round(np.clip(g, 0.0, 1.0) * 255.0).astype(np.uint8)
        if phash(out.astype(np.float32) / 255.0) == target:
            return out
        low = p @ g @ q.T
        med = np.median(low)
        goal = np.where(want, np.maximum(low, med + margin), np.minimum(low, med - margin))
        g = np.clip(g + p_inv @ (goal - low) @ q_inv.T, 0.0, 1.0)
    raise PoisonlabError(f"pHash collision with {target}: not found in {COLLISION_STEPS} steps")


def stamp(image: np.ndarray, trigger: Trigger, target: int | None = None) -> np.ndarray:
    """A uint8 grey (H, W) image with ``trigger`` stamped on it (for class ``target``, for a class-encoding one)."""
    x = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]
    targets = None if target is None else torch.tensor([target])
    return np.round(trigger(x, targets)[0, 0].numpy() * 255.0).astype(np.uint8)


def colliding_badnets(donor: np.ndarray, original: np.ndarray, trigger: Trigger) -> np.ndarray:
    """``donor`` stamped with ``trigger``, then collided with ``original``'s pHash (both uint8 grey (H, W))."""
    stamped = stamp(donor, trigger)
    target = phash(original.astype(np.float32) / 255.0)
    return collide_phash(stamped, target)

