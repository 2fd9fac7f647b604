"""The image-scaling attack audit as a run (Quiring et al., USENIX Security 2020): which scalers an attack breaks.

The paper's headline: nearest, bilinear and bicubic downscaling in OpenCV, Pillow's nearest and TensorFlow
read only a few source pixels, so an image can be crafted whose downscale is any other image; area and
antialiased scaling read every pixel and are robust. This run crafts the strong attack on real photographs
for every installed resizer and ratio and writes the verdicts, a figure and the report to a run folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poisonlab.core import PoisonlabError
from poisonlab.experiment.rundir import finish_run
from poisonlab.scaling.audit import attack_figure, audit, available_resizers, default_pairs, square
from poisonlab.scaling.resize import get_resizer


@dataclass(frozen=True)
class ScalingAuditConfig:
    """Resizers (empty: every installed one), integer downscale ratios, photo size, the attack's L-inf budget."""

    resizers: tuple[str, ...] = ()
    ratios: tuple[int, ...] = (2, 4, 8)
    size: int = 256
    eps: float = 1.0
    psnr_threshold: float = 0.0

    def validate(self) -> None:
        """Fail on an unknown resizer or an impossible ratio before any image is crafted."""
        for resizer in available_resizers(self.resizers or None):
            if not resizer.available():
                raise PoisonlabError(f"resizers: {resizer.name} needs its library installed (optional extra)")
        if not self.ratios or min(self.ratios) < 2:
            raise PoisonlabError(f"ratios {list(self.ratios)}: expected one or more integers >= 2")
        if self.size < 2 * max(self.ratios):
            raise PoisonlabError(f"size {self.size}: expected at least twice the largest ratio ({max(self.ratios)})")
        if not self.eps > 0:
            raise PoisonlabError(f"eps {self.eps}: expected a positive L-inf budget on the 0-255 scale")


def run_scaling_audit(cfg: ScalingAuditConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Audit every resizer x ratio on the bundled photograph pairs; write report.json and attack.png to ``out``."""
    cfg.validate()
    t0 = time.perf_counter()
    pairs = default_pairs(cfg.size)
    rows = audit(pairs, available_resizers(cfg.resizers or None), cfg.ratios, eps=cfg.eps,
                 psnr_threshold=cfg.psnr_threshold, progress=progress)
    source, target = pairs[0]
    attack_figure(source, square(target, cfg.size // max(cfg.ratios)),
                  [get_resizer("opencv", "linear"), get_resizer("opencv", "area")], out / "attack.png", cfg.eps)
    metrics = {"pairs": len(pairs), "rows": [r.as_dict() for r in rows],
               "vulnerable": sorted({r.resizer for r in rows if r.vulnerable}),
               "robust": sorted({r.resizer for r in rows} - {r.resizer for r in rows if r.vulnerable})}
    return finish_run(out, "scaling-audit", cfg, metrics, {"total_seconds": time.perf_counter() - t0}, ["attack.png"])
