"""``poisonlab run backgradient``: back-gradient poisoning (Muñoz-González et al. 2017, arXiv 1708.08689)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from poisonlab.cli.common import one_line_errors, run_and_print
from poisonlab.core import PoisonlabError
from poisonlab.experiment.backgradient import BackgradientConfig


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _ratio(v: float, clean: float) -> str:
    return f"x{v / clean:.2f}" if clean > 0 else "-"


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise PoisonlabError(f"fractions {text!r}: expected comma-separated numbers like 0.02,0.04") from None


def curve_table(body: dict[str, Any]) -> Table:
    """Error of the victim against poison fraction, optimised points beside their label-flipped starts."""
    m, cfg = body["metrics"], body["config"]
    key = m["error_metric"]
    what = f"error on class {cfg['source']}" if cfg["goal"] == "targeted" else "test error"
    table = Table(title=f"back-gradient {cfg['goal']} poisoning, {cfg['dataset']} {cfg['learner']}: {what}")
    for col in ("fraction", "points", "back-gradient", "x clean", "label flip", "x clean"):
        table.add_column(col, justify="right")
    clean = m["clean_error"]
    for row in m["curve"]:
        bg, flip = row["backgradient"][key], row["label_flip"][key]
        table.add_row(_pct(row["fraction"]), str(row["count"]), _pct(bg), _ratio(bg, clean), _pct(flip),
                      _ratio(flip, clean))
    for name, t in m["transfer"].items():
        if "skipped" not in t:
            c, bg, flip = t["clean"][key], t["backgradient"][key], t["label_flip"][key]
            table.add_row(f"-> {name}", str(t["count"]), f"{_pct(c)} -> {_pct(bg)}", _ratio(bg, c), _pct(flip),
                          _ratio(flip, c))
    return table


@one_line_errors
def backgradient(
    dataset: Annotated[str, typer.Option(help="mnist, breast-cancer, digits, synthetic, ...")] = "mnist",
    learner: Annotated[str, typer.Option(help="surrogate learner: adaline, logreg, mlp or cnn")] = "logreg",
    goal: Annotated[str, typer.Option(help="availability (generic) or targeted (specific)")] = "availability",
    source: Annotated[int, typer.Option(help="targeted: the class to be misread")] = 8,
    target: Annotated[int, typer.Option(help="targeted: the class it should be read as")] = 3,
    fractions: Annotated[str, typer.Option(help="comma-separated poison fractions of the training set")] = (
        "0.01,0.02,0.03,0.04,0.05,0.06"),
    train_size: Annotated[int, typer.Option(help="training points (the paper: 1000)")] = (
        BackgradientConfig.train_size),
    val_size: Annotated[int, typer.Option(help="attacker's validation points")] = BackgradientConfig.val_size,
    test_size: Annotated[int, typer.Option(help="test points")] = BackgradientConfig.test_size,
    steps: Annotated[int, typer.Option(help="descent steps differentiated through (T)")] = (
        BackgradientConfig.steps),
    warm_start: Annotated[int, typer.Option(help="clean descent steps before the T differentiated ones")] = (
        BackgradientConfig.warm_start),
    lr: Annotated[float, typer.Option(help="descent step size of the learner")] = BackgradientConfig.lr,
    iterations: Annotated[int, typer.Option(help="gradient steps per poisoning point per pass")] = (
        BackgradientConfig.iterations),
    passes: Annotated[int, typer.Option(help="passes over the poisoning points")] = BackgradientConfig.passes,
    transfer: Annotated[str, typer.Option(help="comma-separated learners to transfer the poison to")] = "mlp,cnn",
    seed: Annotated[int, typer.Option(help="seed for the split, starting points and weights")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (default runs/backgradient-TIME)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json instead of the table")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Optimise poisoning points by back-gradient descent; print the victim's error against poison fraction.

    Example: poisonlab run backgradient --learner logreg --goal targeted --fractions 0.01,0.02,0.04
    """
    cfg = BackgradientConfig(
        dataset=dataset, learner=learner, goal=goal, source=source, target=target,  # type: ignore[arg-type]
        train_size=train_size, val_size=val_size, test_size=test_size, fractions=_fractions(fractions),
        steps=steps, warm_start=warm_start, lr=lr, iterations=iterations, passes=passes,
        transfer=tuple(t for t in transfer.split(",") if t), seed=seed)
    run_and_print("backgradient", cfg, out, json_out, quiet, curve_table)
