"""Which library x algorithm x ratio an image-scaling attack breaks (Quiring et al., USENIX Security 2020, Sec. 4).

For each resizer and downscale ratio the strong attack is crafted on image pairs and judged by the library
itself: a success needs the library's uint8 output within eps of the target *and* the attack image to look
like its source rather than its target: PSNR(A, S) above PSNR(A, T upscaled), and above ``psnr_threshold``
when one is given. A scaler that reads every pixel forces the attack to repaint the whole image toward T,
which fails the second condition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from rich.progress import Progress

from poisonlab.core import PoisonlabError
from poisonlab.scaling.craft import craft_attack, psnr
from poisonlab.scaling.operator import operator_for
from poisonlab.scaling.resize import RESIZERS, Resizer


@dataclass(frozen=True)
class AuditRow:
    """Outcome of the attack on one resizer at one ratio, averaged over the image pairs."""

    resizer: str
    ratio: int
    coverage: float
    success_rate: float
    psnr_source: float
    psnr_target: float
    max_target_error: float
    vulnerable: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop of ``image`` resized to ``size`` x ``size`` with area scaling, uint8 RGB."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = rgb[top:top + side, left:left + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.uint8)


def photographs() -> dict[str, np.ndarray]:
    """Real colour photographs shipped offline with scikit-image and scikit-learn."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    sk = load_sample_images()
    for name, img in zip(("china", "flower"), sk.images, strict=True):
        photos[name] = img
    return photos


def default_pairs(size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(source, target) photograph pairs at ``size`` x ``size``: the attack hides each target in its source."""
    p = photographs()
    names = [("astronaut", "chelsea"), ("coffee", "rocket"), ("china", "flower")]
    return [(square(p[s], size), square(p[t], size)) for s, t in names]


def audit(pairs: Sequence[tuple[np.ndarray, np.ndarray]], resizers: Iterable[Resizer], ratios: Sequence[int],
          eps: float = 1.0, psnr_threshold: float = 0.0, progress: bool = False) -> list[AuditRow]:
    """Run the strong attack for every resizer and ratio on ``pairs`` (targets are downscaled by area)."""
    if not pairs:
        raise PoisonlabError("audit: expected at least one (source, target) image pair")
    todo = [(r, k) for r in resizers for k in ratios]
    if any(k < 2 for _, k in todo):
        raise PoisonlabError(f"audit ratios {list(ratios)}: expected integers >= 2")
    rows = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("auditing scalers", total=len(todo))
        for resizer, ratio in todo:
            results, ok = [], []
            for source, target in pairs:
                size = (source.shape[0] // ratio, source.shape[1] // ratio)
                small = cv2.resize(target, (size[1], size[0]), interpolation=cv2.INTER_AREA)
                c = craft_attack(source, small, resizer, eps=eps)
                seen_as_target = psnr(c.attack, cv2.resize(small, (source.shape[1], source.shape[0]),
                                                           interpolation=cv2.INTER_LINEAR))
                results.append(c)
                ok.append(c.max_target_error <= eps and c.psnr_source >= max(psnr_threshold, seen_as_target))
            cover = operator_for(resizer, pairs[0][0].shape[:2],
                                 (pairs[0][0].shape[0] // ratio, pairs[0][0].shape[1] // ratio)).coverage()
            rate = float(np.mean(ok))
            rows.append(AuditRow(resizer.name, ratio, cover, rate, float(np.mean([c.psnr_source for c in results])),
                                 float(np.mean([c.psnr_target for c in results])),
                                 float(max(c.max_target_error for c in results)), rate >= 0.5))
            bar.advance(task)
    return rows


def available_resizers(names: Sequence[str] | None = None) -> list[Resizer]:
    """The named resizers (default: every registered one whose library is installed)."""
    chosen = list(names) if names else [n for n in RESIZERS.names() if RESIZERS.get(n).available()]
    return [RESIZERS.get(n) for n in chosen]


def attack_figure(source: np.ndarray, target: np.ndarray, resizers: Sequence[Resizer], path: Path,
                  eps: float = 1.0) -> None:
    """S, A, resize(A), T side by side, one row per resizer (a vulnerable and a robust one, say)."""
    import torch

    from poisonlab.report.figures import image_grid, save_figure

    def tensor(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0

    rows = []
    for resizer in resizers:
        c = craft_attack(source, target, resizer, eps=eps)
        out = resizer(c.attack, target.shape[:2])
        # a person looks at S and A at full size; the model gets resize(A); upscale the small ones to show them
        big = [cv2.resize(x, source.shape[1::-1], interpolation=cv2.INTER_NEAREST) for x in (out, target)]
        rows.append((resizer.name, torch.stack([tensor(source), tensor(c.attack), *map(tensor, big)]), [
            "source S", f"attack A ({c.psnr_source:.1f} dB vs S)", f"resize(A) ({c.psnr_target:.1f} dB vs T)",
            "target T"]))
    save_figure(image_grid(rows, title="image-scaling attack: what a person sees vs what the model gets"), path)
