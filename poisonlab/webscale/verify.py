"""Download-time verification: is a fetched image the one the manifest recorded, a benign re-encode of it, or not?

Exact SHA-256 equality is a match. Otherwise the image is a benign re-encode only when four independent
checks all pass: the pHash is within ``max_hamming`` bits, the grey thumbnails correlate at
``min_similarity`` or more, no thumbnail pixel moved by more than ``max_pixel_change`` of 255, and the
aspect ratio changed by at most ``max_aspect_change``. An attacker who collides one of them (a pHash
collision is cheap to craft) still has to make the image look like the original at thumbnail resolution,
which for a small image is most of what it shows. The pixel check catches what correlation averages
away: the original itself with a trigger stamped on it (a 3 x 3 patch on a 28 x 28 digit moves a
thumbnail pixel by 255, while on 300 MNIST digits no re-encode moved one by more than 58, the 10% resizes;
JPEG 60-95 by 22 at most), which kept a correlation of 0.97 or more in 42 of those 300.

The defaults were set on MNIST-sized images; ``bench/webscale.py`` prints the margins they leave (the
lowest correlation and largest pHash distance of the benign re-encodes it serves, and how many swaps for
another image of the same class pass). On images under ~24 px a side a 10% resize is no longer benign.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from poisonlab.core import require
from poisonlab.webscale.phash import Fingerprint, decode_thumbnail, hamming, similarity

Status = Literal["match", "reencode", "substitution", "unreachable", "unverified"]
"""What one fetched item turned out to be; ``unverified`` when it was fetched with verification off."""
ACCEPTED: frozenset[str] = frozenset({"match", "reencode", "unverified"})


@dataclass(frozen=True)
class Check:
    """One item's verdict, the reason for it, and the measurements behind it (None where not measured)."""

    status: Status
    reason: str
    hamming: int | None = None
    similarity: float | None = None


@dataclass(frozen=True)
class Verification:
    """Thresholds that tell a benign re-encode from a substitution."""

    max_hamming: int = 10
    min_similarity: float = 0.97
    max_aspect_change: float = 0.05
    max_pixel_change: int = 100

    def __post_init__(self) -> None:
        require(0 <= self.max_hamming <= 64, "max_hamming", self.max_hamming, "an integer in [0, 64]")
        require(-1.0 <= self.min_similarity <= 1.0, "min_similarity", self.min_similarity, "a number in [-1, 1]")
        require(0.0 <= self.max_aspect_change < 1.0, "max_aspect_change", self.max_aspect_change, "a number in [0, 1)")
        require(0 <= self.max_pixel_change <= 255, "max_pixel_change", self.max_pixel_change, "an integer in [0, 255]")

    def check(self, expected: Fingerprint, got: Fingerprint) -> Check:
        """The verdict on ``got`` (a fetched image's fingerprint) against the manifest's ``expected``."""
        if got.sha256 == expected.sha256:
            return Check("match", "sha256 equal", 0, 1.0)
        bits = hamming(got.phash, expected.phash)
        thumb, reference = decode_thumbnail(got.thumbnail), decode_thumbnail(expected.thumbnail)
        sim = similarity(thumb, reference)
        change = int(np.abs(thumb.astype(np.int16) - reference.astype(np.int16)).max())
        aspect = abs(math.log((got.width / got.height) / (expected.width / expected.height)))
        failed = []
        if bits > self.max_hamming:
            failed.append(f"pHash {bits} bits apart (> {self.max_hamming})")
        if sim < self.min_similarity:
            failed.append(f"thumbnail correlation {sim:.3f} (< {self.min_similarity})")
        if change > self.max_pixel_change:
            failed.append(f"a thumbnail pixel changed by {change} of 255 (> {self.max_pixel_change})")
        if aspect > self.max_aspect_change:
            failed.append(f"aspect ratio {got.width}x{got.height} vs {expected.width}x{expected.height}")
        if failed:
            return Check("substitution", "; ".join(failed), bits, sim)
        return Check("reencode", f"sha256 differs; pHash {bits} bits apart, correlation {sim:.3f}", bits, sim)
