"""``poisonlab run universal``: universal backdoors against the random-code baseline (Schneider et al. 2023)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from poisonlab.cli.common import err_console, one_line_errors, run_and_print
from poisonlab.experiment.universal import UniversalConfig


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError:
        from poisonlab.core import PoisonlabError

        raise PoisonlabError(f"--rates {text!r}: expected comma-separated fractions like 0.0025,0.005") from None


def universal_table(body: dict[str, Any]) -> Table:
    """Mean ASR and CA per budget, universal vs baseline, and the transferability rows."""
    m, cfg = body["metrics"], body["config"]
    table = Table(title=f"Universal backdoor on {cfg['dataset']} ({m['num_classes']} classes, {m['train_size']} "
                        f"training images), clean CA {_pct(m['clean_accuracy'])}")
    for col in ("codes", "poison", "per class", "mean ASR", "worst-10% ASR", "unpoisoned targets: ASR", "CA"):
        table.add_column(col, justify="left" if col == "codes" else "right")
    for r in m["budgets"]:
        never = r.get("mean_asr_never_poisoned_targets")
        table.add_row(r["codes"], f"{100 * r['rate']:g}% ({r['poisoned_samples']})", f"{r['per_class']:.2f}",
                      _pct(r["mean_asr"]), _pct(r["per_target_asr_quantiles"]["p10"]),
                      "-" if never is None else f"{_pct(never)} ({r['never_poisoned_targets']})",
                      _pct(r["clean_accuracy"]))
    for r in m["transfer"]:
        table.add_row(f"{r['codes']}, half the classes ({r['split']})", f"{100 * r['rate']:g}%", "",
                      _pct(r["asr_poisoned_classes"]), "", _pct(r["asr_unpoisoned_classes"]),
                      _pct(r["clean_accuracy"]))
    table.caption = (f"lda = universal (LDA codes, {m['surrogate']}); random = multi-target BadNets baseline. "
                     f"{m['asr_definition']}; {m['target_sampling']}.")
    return table


@one_line_errors
def universal(
    dataset: Annotated[str, typer.Option(help="mnist-numbers:2 (100 classes), mnist-numbers:3 (1,000), or any dataset")]
    = UniversalConfig.dataset,
    model: Annotated[str, typer.Option(help="victim (and surrogate) architecture: small-cnn or badnets-cnn")]
    = UniversalConfig.model,
    surrogate: Annotated[str, typer.Option(help="cnn (attacker-trained) or efficientnet (optional extra)")] = "cnn",
    bits: Annotated[int, typer.Option(help="code length (LDA components), at most classes - 1")] = UniversalConfig.bits,
    strips: Annotated[int, typer.Option(help="vertical strips whose bits encode the surrogate's features there "
                                          "(1: the paper's global codes; K for K-digit numbers)")]
    = UniversalConfig.strips,
    code_threshold: Annotated[str, typer.Option(help="bit rule on each LDA axis: mean (the paper's) or split "
                                                  "(the best two-group cut of the class centroids)")]
    = UniversalConfig.code_threshold,
    trigger: Annotated[str, typer.Option(help="blend (blend grid over the image) or patch (cell grid)")] = "blend",
    alpha: Annotated[float, typer.Option(help="blend grid opacity")] = UniversalConfig.alpha,
    rates: Annotated[str, typer.Option(help="comma-separated poison fractions")]
    = ",".join(map(str, UniversalConfig.rates)),
    transfer_rate: Annotated[float, typer.Option(help="poison fraction of the half-the-classes run; 0 skips it")]
    = UniversalConfig.transfer_rate,
    transfer_split: Annotated[str, typer.Option(help="random or contiguous half of the classes")] = "random",
    baseline: Annotated[bool, typer.Option(help="also run the random-code baseline")] = True,
    epochs: Annotated[int, typer.Option(help="training epochs of every victim model")] = UniversalConfig.epochs,
    lr: Annotated[float, typer.Option(help="peak learning rate (Adam, one-cycle)")] = UniversalConfig.lr,
    seed: Annotated[int, typer.Option(help="seed for data, codes, poisoning and training")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (default runs/universal-TIME)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json instead of the table")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Poison every class at once with class-code triggers; compare with random codes across budgets.

    Example: poisonlab run universal --dataset mnist-numbers:2 --rates 0.0025,0.005 --bits 24
    """
    cfg = UniversalConfig(dataset=dataset, model=model, surrogate=surrogate, bits=bits, strips=strips,  # type: ignore[arg-type]
                          code_threshold=code_threshold,  # type: ignore[arg-type]
                          trigger=trigger, alpha=alpha, rates=_rates(rates),  # type: ignore[arg-type]
                          transfer_rate=transfer_rate, transfer_split=transfer_split,  # type: ignore[arg-type]
                          baseline=baseline, epochs=epochs, lr=lr, seed=seed)
    run_and_print("universal", cfg, out, json_out, quiet, universal_table,
                  log=None if quiet or json_out else err_console.print)
