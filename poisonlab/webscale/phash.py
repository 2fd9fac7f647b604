"""Content fingerprints of an image: exact SHA-256, a DCT perceptual hash, and a small grey thumbnail.

The perceptual hash is the DCT pHash of Zauner (2010) in the construction the ``imagehash`` package made
common: the grey image resized to 32 x 32, its 2-D DCT, and one bit per coefficient of the lowest 8 x 8
block (above their median or not). It is not bit-identical to ``imagehash.phash`` (area resize of float
pixels here, orthonormal DCT scaling), so compare hashes made by one of the two only.

An attacker can craft an image whose pHash equals another's while it looks unlike it (see
``attacker.collide_phash``), so verification also compares the 16 x 16 grey thumbnails by normalised
correlation: an image must look like the original where a re-encode cannot change it.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.fft import dct

DCT_SIZE = 32
"""Side of the grey image whose DCT the perceptual hash reads."""
HASH_SIDE = 8
"""Side of the low-frequency DCT block: 8 x 8 = 64 hash bits."""
THUMB_SIDE = 16
"""Side of the grey thumbnail stored in a manifest (256 bytes, 344 characters of base64)."""
LOW_DCT = dct(np.eye(DCT_SIZE), axis=0, norm="ortho")[:HASH_SIDE]
"""The first ``HASH_SIDE`` rows of the orthonormal DCT-II matrix: ``LOW_DCT @ X @ LOW_DCT.T`` is X's low block."""
FLAT_STD = 1e-3
"""Thumbnails whose pixel standard deviation is below this are flat: correlation is undefined for them."""


@dataclass(frozen=True)
class Fingerprint:
    """What a manifest records of one image: SHA-256 of the bytes, pHash, thumbnail, geometry and size."""

    sha256: str
    phash: str
    thumbnail: str
    width: int
    height: int
    size: int


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 lowercase hexadecimal digits."""
    return hashlib.sha256(data).hexdigest()


def _resized(grey: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(np.asarray(grey, dtype=np.float32), (side, side), interpolation=cv2.INTER_AREA)


def dct_block(grey: np.ndarray) -> np.ndarray:
    """The lowest ``HASH_SIDE`` x ``HASH_SIDE`` DCT coefficients of a grey (H, W) image in [0, 1]."""
    return np.asarray(LOW_DCT @ _resized(grey, DCT_SIZE).astype(np.float64) @ LOW_DCT.T)


def phash_bits(grey: np.ndarray) -> np.ndarray:
    """The 64 pHash bits of a grey image: each low-frequency DCT coefficient above their median."""
    values = dct_block(grey).ravel()
    ranked = np.sort(values)
    return np.asarray(values > (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2)  # above the median


def phash(grey: np.ndarray) -> str:
    """The pHash of a grey (H, W) image in [0, 1] as 16 hexadecimal digits."""
    return np.packbits(phash_bits(grey)).tobytes().hex()


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hexadecimal hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """The ``THUMB_SIDE`` x ``THUMB_SIDE`` uint8 thumbnail of a grey image (area-averaged)."""
    return np.round(np.clip(_resized(grey, THUMB_SIDE), 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_thumbnail(thumb: np.ndarray) -> str:
    return base64.b64encode(thumb.tobytes()).decode("ascii")


def decode_thumbnail(text: str) -> np.ndarray:
    """A thumbnail from its base64 text; ValueError unless it holds exactly ``THUMB_SIDE`` ** 2 bytes."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) != THUMB_SIDE * THUMB_SIDE:
        raise ValueError(f"{len(raw)} bytes, expected {THUMB_SIDE * THUMB_SIDE}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(THUMB_SIDE, THUMB_SIDE)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two thumbnails in [-1, 1]; two flat ones score 1 when their levels agree."""
    x, y = a.astype(np.float64).ravel() / 255.0, b.astype(np.float64).ravel() / 255.0
    sx, sy = x.std(), y.std()
    if sx < FLAT_STD or sy < FLAT_STD:
        return 1.0 if sx < FLAT_STD and sy < FLAT_STD and abs(x.mean() - y.mean()) < 0.05 else 0.0
    return float(np.mean((x - x.mean()) * (y - y.mean())) / (sx * sy))


def fingerprint(data: bytes, grey: np.ndarray) -> Fingerprint:
    """The fingerprint of an image file's ``data`` whose decoded grey pixels are ``grey`` (H, W) in [0, 1]."""
    h, w = grey.shape
    return Fingerprint(sha256_hex(data), phash(grey), encode_thumbnail(thumbnail(grey)), int(w), int(h), len(data))
