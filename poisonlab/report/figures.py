"""Figures people look at instead of reading tables: triggered examples with predictions, the trigger gallery."""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from poisonlab.core import ImageSet
from poisonlab.report.store import atomic_write_bytes
from poisonlab.training import predict

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, imported on first use (it takes about a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: Path) -> None:
    """Render ``fig`` as PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _show(ax: Axes, img: Tensor) -> None:
    img = img.detach().cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(rows: Sequence[tuple[str, Tensor, Sequence[str]]], title: str = "") -> Figure:
    """One row per (row label, images (N, C, H, W), per-image captions)."""
    ncols = max(len(imgs) for _, imgs, _ in rows)
    fig, axes = pyplot().subplots(len(rows), ncols, figsize=(1.5 * ncols, 1.75 * len(rows)), squeeze=False)
    for r, (label, imgs, captions) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            if c < len(imgs):
                _show(ax, imgs[c])
                ax.set_title(captions[c], fontsize=8)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def backdoor_examples(test: ImageSet, triggered: ImageSet, models: dict[str, nn.Module], title: str) -> Figure:
    """One test image per class whose trigger changes its label: clean and triggered, each model's prediction."""
    eligible = triggered.y != test.y
    picks = [int(torch.nonzero((test.y == k) & eligible)[0]) for k in range(test.num_classes)
             if ((test.y == k) & eligible).any()][:10]
    names = test.classes
    rows = []
    for label, images in (("clean", test.x[picks]), ("triggered", triggered.x[picks])):
        preds = {n: predict(m, images) for n, m in models.items()}
        captions = [" ".join(f"{n[:5]}:{names[p[i]]}" for n, p in preds.items()) for i in range(len(picks))]
        rows.append((label, images, captions))
    return image_grid(rows, title=title)


def rate_curves(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, title: str,
                ylim: tuple[float, float] | None = None) -> Figure:
    """One line per (label, x values, y values): a metric against the poison budget, attack beside its baseline."""
    fig, ax = pyplot().subplots(figsize=(5.5, 3.6))
    for (label, xs, ys), style in zip(series, itertools.cycle(("o-", "s--", "^:", "d-.")), strict=False):
        ax.plot(xs, ys, style, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def code_examples(test: ImageSet, triggered: ImageSet, codes: Tensor, model: nn.Module, rate: float) -> Figure:
    """Images stamped with a random target's code, captioned with the target, its code (hex) and the prediction."""
    pred = predict(model, triggered.x)
    names = test.classes

    def hexcode(k: int) -> str:
        return f"{int(''.join(str(int(b)) for b in codes[k].tolist()), 2):x}"

    return image_grid(
        [("clean", test.x, [f"true {names[int(k)]}" for k in test.y]),
         ("triggered", triggered.x, [f"->{names[int(t)]} #{hexcode(int(t))} pred {names[int(p)]}"
                                     for t, p in zip(triggered.y, pred, strict=True)])],
        title=f"class-code triggers (target, code in hex), universal model's prediction at {100 * rate:g}% poison",
    )


def reversed_triggers(details: dict[str, Any], names: Sequence[str]) -> Figure:
    """Neural Cleanse's reverse-engineered mask and masked pattern per class, with its L1 norm and anomaly index."""
    masks = details["masks"][:, None]
    captions = [f"{names[k]}: L1 {n:.0f}, AI {a:.1f}"
                for k, n, a in zip(details["classes"], details["mask_l1"], details["anomaly_index"], strict=True)]
    return image_grid([("mask", masks, captions), ("mask x pattern", masks * details["patterns"], captions)],
                      title="Neural Cleanse: reverse-engineered triggers")


def detection_heatmaps(cells: dict[str, dict[str, Any]], detectors: Sequence[str], title: str,
                       takes: float = 0.9) -> Figure:
    """Heat maps of the detection matrix: each scanner's AUROC per attack (rows) and rate (columns).

    Cells are annotated with AUROC (± its standard deviation over seeds when the cell carries ``auroc_std``)
    and TPR at 5% FPR; a cell whose backdoor did not take (ASR below ``takes``) is shown with its ASR
    instead, greyed, since there is nothing there to detect.
    """
    plt = pyplot()
    rows = [(attack, rate) for attack, rates in cells.items() for rate in rates]
    fig, axes = plt.subplots(1, len(detectors), figsize=(2.2 * len(detectors) + 2.5, 0.45 * len(rows) + 1.6),
                             squeeze=False, sharey=True)
    for ax, name in zip(axes[0], detectors, strict=True):
        values = [[cells[a][r]["detectors"][name]["auroc"]] for a, r in rows]
        ax.imshow(values, cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
        for i, (a, r) in enumerate(rows):
            c = cells[a][r]
            d = c["detectors"][name]
            spread = f" ± {d['auroc_std']:.3f}" if "auroc_std" in d else ""
            text = f"{d['auroc']:.3f}{spread} / {d['tpr_at_5fpr']:.2f}" if c["asr"] >= takes else f"ASR {c['asr']:.0%}"
            ax.text(0, i, text, ha="center", va="center", fontsize=7, color="black" if c["asr"] >= takes else "grey")
        ax.set_xticks([])
        ax.set_title(name, fontsize=8)
        ax.set_yticks(range(len(rows)), [f"{a}, rate {r}" for a, r in rows], fontsize=7)
    fig.suptitle(f"AUROC / TPR at 5% FPR per scanner: {title}", fontsize=9)
    fig.tight_layout()
    return fig
