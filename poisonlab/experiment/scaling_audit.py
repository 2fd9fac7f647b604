"""The image-scaling attack audit as a run (Quiring et al., USENIX Security 2020): which scalers an attack breaks.

The paper's headline: nearest, bilinear and bicubic downscaling in OpenCV, Pillow's nearest and TensorFlow
read only a few source pixels, so an image can be crafted whose downscale is any other image; area and
antialiased scaling read every pixel and are robust. This run crafts the strong attack on real photographs
for every installed resizer and ratio and writes the verdicts, a figure and the report to a run folder.
"""

from __future__ import annotations

from dataclasses import dataclass

from poisonlab.core import PoisonlabError, require
from poisonlab.experiment.config import helped
from poisonlab.experiment.run import Experiment, Result, Run, register
from poisonlab.report.tables import audit_tables
from poisonlab.scaling.audit import attack_figure, audit, available_resizers, default_pairs, square
from poisonlab.scaling.resize import get_resizer


@dataclass(frozen=True)
class ScalingAuditConfig:
    """Resizers (empty: every installed one), integer downscale ratios, photo size, the attack's L-inf budget."""

    resizers: tuple[str, ...] = helped((), "resizer names (default: every installed one); repeatable")
    ratios: tuple[int, ...] = helped((2, 4, 8), "integer downscale ratios")
    size: int = helped(256, "side of the square source photographs")
    eps: float = helped(1.0, "allowed L-inf error of resize(A) vs target, 0-255 scale")
    psnr_threshold: float = helped(0.0, "also require PSNR(A, S) >= this many dB")

    def __post_init__(self) -> None:
        for resizer in available_resizers(self.resizers or None):
            if not resizer.available():
                raise PoisonlabError(f"resizers: {resizer.name} needs its library installed (optional extra)")
        require(bool(self.ratios) and min(self.ratios) >= 2, "ratios", list(self.ratios),
                "one or more integers >= 2")
        if self.size < 2 * max(self.ratios):
            raise PoisonlabError(f"size {self.size}: expected at least twice the largest ratio ({max(self.ratios)})")
        require(self.eps > 0, "eps", self.eps, "a positive L-inf budget on the 0-255 scale")


def run_scaling_audit(cfg: ScalingAuditConfig, run: Run) -> Result:
    """Audit every resizer x ratio on the bundled photograph pairs; attack.png shows one of them."""
    pairs = default_pairs(cfg.size)
    rows = audit(pairs, available_resizers(cfg.resizers or None), cfg.ratios, eps=cfg.eps,
                 psnr_threshold=cfg.psnr_threshold, progress=run.progress)
    source, target = pairs[0]
    attack_figure(source, square(target, cfg.size // max(cfg.ratios)),
                  [get_resizer("opencv", "linear"), get_resizer("opencv", "area")], run.out / "attack.png", cfg.eps)
    metrics = {"pairs": len(pairs), "rows": [r.as_dict() for r in rows],
               "vulnerable": sorted({r.resizer for r in rows if r.vulnerable}),
               "robust": sorted({r.resizer for r in rows} - {r.resizer for r in rows if r.vulnerable})}
    return Result(metrics, ["attack.png"])


register("scaling-audit", "which library x algorithm x ratio a scaling attack breaks (Quiring 2020)",
         Experiment(ScalingAuditConfig, run_scaling_audit, audit_tables))
