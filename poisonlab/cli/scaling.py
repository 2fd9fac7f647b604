"""``poisonlab scaling craft|scan|calibrate|audit``: image-scaling attacks and their detection (Quiring et al. 2020).

``scan`` flags images by a detection score against the thresholds of a calibration: the shipped table
(per resizer and ratio, set on an offline benign corpus), a file ``calibrate`` wrote from the user's own
benign images, or an explicit ``--threshold``; its report names which one it used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from poisonlab.cli.common import at_least, one_line_errors, print_json, print_tables, say
from poisonlab.cli.run import command
from poisonlab.core import PoisonlabError
from poisonlab.data.images import read_pixels
from poisonlab.registry import EXPERIMENTS
from poisonlab.report.store import atomic_write_png, check_out_file
from poisonlab.report.tables import TableData
from poisonlab.scaling.calibration import DEFAULT_FPR, SCORES, Calibration, load_calibration
from poisonlab.scaling.craft import craft_attack, craft_weak
from poisonlab.scaling.defenses import DETECTORS, calibrate, detect
from poisonlab.scaling.resize import get_resizer, parse_size

app = typer.Typer(help="Image-scaling attacks: craft them, scan images for them, audit which scalers are open.",
                  no_args_is_help=True)


@app.command()
@one_line_errors
def craft(
    source: Annotated[Path, typer.Argument(help="image a person should see (full resolution)")],
    target: Annotated[Path, typer.Argument(help="image the model should get after the resize")],
    size: Annotated[str | None, typer.Option(help="output size WIDTHxHEIGHT (default: the target's)")] = None,
    library: Annotated[str, typer.Option(help="opencv, pillow, torch or tensorflow")] = "opencv",
    algorithm: Annotated[str, typer.Option(help="e.g. nearest, linear, cubic, area, bilinear, bilinear-aa")] = "linear",
    eps: Annotated[float, typer.Option(help="allowed L-inf error of resize(A) vs target, 0-255 scale")] = 1.0,
    weak: Annotated[bool, typer.Option(help="weak attack: ignore the source's look")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="attack image to write (PNG)")] = Path("attack.png"),
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Craft an image that looks like SOURCE and becomes TARGET after the pipeline's resize.

    Example: poisonlab scaling craft cat.png dog.png --size 64x64 --library opencv --algorithm linear -o attack.png
    """
    at_least("--eps", eps, 0.0, strict=True)
    check_out_file(out, "attack image")
    resizer = get_resizer(library, algorithm)
    src, tgt = read_pixels(source, "RGB"), read_pixels(target, "RGB")
    hw = parse_size(size) if size is not None else tgt.shape[:2]
    if tgt.shape[0] > src.shape[0] or tgt.shape[1] > src.shape[1] or hw[0] > src.shape[0] or hw[1] > src.shape[1]:
        raise PoisonlabError(f"target {tgt.shape[1]}x{tgt.shape[0]} / size {hw[1]}x{hw[0]} is larger than source "
                             f"{src.shape[1]}x{src.shape[0]}: expected a downscale")
    if tgt.shape[:2] != hw:
        tgt = get_resizer("opencv", "area")(tgt, hw)
    result = craft_weak(tgt, resizer, src.shape[:2], eps) if weak else craft_attack(src, tgt, resizer, eps)
    atomic_write_png(out, result.attack)
    body = {"out": str(out), "resizer": resizer.name, "size": f"{hw[1]}x{hw[0]}", "eps": eps,
            "psnr_attack_vs_source": result.psnr_source, "psnr_resized_vs_target": result.psnr_target,
            "max_target_error": result.max_target_error, "solver": result.info.method,
            "solver_seconds": result.info.seconds}
    if json_out:
        print_json(body)
        return
    say(f"wrote {out}: PSNR(A, S) {result.psnr_source:.2f} dB; {resizer.name} output within "
                  f"{result.max_target_error:.2f} of the target (PSNR {result.psnr_target:.2f} dB); "
                  f"{result.info.method} solver {result.info.seconds:.2f} s")


def _pixels(images: list[Path], hw: tuple[int, int]) -> list[np.ndarray]:
    if not images:
        raise PoisonlabError("IMAGES: expected at least one image file")
    pixels = [read_pixels(p, "RGB") for p in images]
    for path, img in zip(images, pixels, strict=True):
        if img.shape[0] < hw[0] or img.shape[1] < hw[1]:
            raise PoisonlabError(f"{path}: {img.shape[1]}x{img.shape[0]} is smaller than the size {hw[1]}x{hw[0]}")
    return pixels


def _calibration_caption(source: dict[str, Any]) -> str:
    if source["source"] == "explicit --threshold":
        return f"calibration: none, explicit --threshold {source['threshold']:g}"
    return f"calibration: {source['source']}, set at FPR {100 * source['fpr']:g}% ({source['path']})"


@app.command()
@one_line_errors
def scan(
    images: Annotated[list[Path], typer.Argument(help="images to check")],
    size: Annotated[str, typer.Option(help="pipeline's output size WIDTHxHEIGHT")] = "64x64",
    library: Annotated[str, typer.Option(help="the pipeline's resize library")] = "opencv",
    algorithm: Annotated[str, typer.Option(help="the pipeline's resize algorithm")] = "linear",
    score: Annotated[str, typer.Option(help=f"detection score: {', '.join(DETECTORS)}")] = "local",
    threshold: Annotated[float | None, typer.Option(
        help="flag above this score (default: the calibrated threshold for this resizer and ratio)")] = None,
    calibration: Annotated[Path | None, typer.Option(
        help="calibration file from `poisonlab scaling calibrate` (default: the shipped table)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the verdicts as JSON")] = False,
) -> None:
    """Flag images that carry an image-scaling attack against this resize. Exit code 1 if any is flagged.

    Example: poisonlab scaling scan data/*.png --size 64x64 --library opencv --algorithm linear
    """
    at_least("--threshold", threshold, 0.0)
    resizer, hw = get_resizer(library, algorithm), parse_size(size)
    table = load_calibration(calibration) if calibration is not None else None
    if score not in DETECTORS:
        raise PoisonlabError(f"--score {score!r}: expected one of {', '.join(DETECTORS)}")
    verdict = detect(_pixels(images, hw), resizer, hw, score=score, threshold=threshold, calibration=table,
                     names=[str(p) for p in images], progress=not json_out)
    assert verdict.scores is not None and verdict.flagged is not None
    rows = [{"image": str(p), "score": float(s), "flagged": bool(f), **d} for p, s, f, d in
            zip(images, verdict.scores, verdict.flagged, verdict.details["images"], strict=True)]
    source = verdict.details["calibration"]
    if json_out:
        print_json({"resizer": resizer.name, "size": size, "score": score, "calibration": source, "images": rows})
    else:
        table_rows = [[r["image"], "-" if r["note"] else f"{r['score']:.4g}",
                       "-" if r["threshold"] is None else f"{r['threshold']:.4g}", f"{r['ratio']:g}",
                       "-" if r["calibrated_ratio"] is None else str(r["calibrated_ratio"]),
                       "[red]ATTACK[/red]" if r["flagged"] else "not open" if r["note"] else "clean"] for r in rows]
        print_tables([TableData(f"scaling-attack scan ({score} score vs {resizer.name} to {size})",
                                ["image", "score", "threshold", "ratio", "calibrated at", "verdict"], table_rows,
                                caption=_calibration_caption(source), left=1)])
    if any(r["flagged"] for r in rows):
        raise typer.Exit(1)


@app.command("calibrate")
@one_line_errors
def calibrate_command(
    images: Annotated[list[Path], typer.Argument(help="benign images, like the ones the pipeline gets")],
    out: Annotated[Path, typer.Option("--out", "-o", help="calibration file to write (JSON)")],
    size: Annotated[str, typer.Option(help="pipeline's output size WIDTHxHEIGHT")] = "64x64",
    library: Annotated[str, typer.Option(help="the pipeline's resize library")] = "opencv",
    algorithm: Annotated[str, typer.Option(help="the pipeline's resize algorithm")] = "linear",
    fpr: Annotated[float, typer.Option(help="share of benign images allowed to be flagged")] = DEFAULT_FPR,
    json_out: Annotated[bool, typer.Option("--json", help="print the thresholds as JSON")] = False,
) -> None:
    """Set detection thresholds on your own benign images at a false-positive rate; `scan --calibration` uses them.

    One entry per downscale ratio among the images; each needs at least (1 - fpr) / fpr images (99 at 0.01).

    Example: poisonlab scaling calibrate clean/*.png --library opencv --algorithm linear --size 64x64 -o calib.json
    """
    if not 0 < fpr < 1:
        raise PoisonlabError(f"--fpr {fpr}: expected a false-positive rate between 0 and 1")
    check_out_file(out, "calibration file")
    resizer, hw = get_resizer(library, algorithm), parse_size(size)
    entries = calibrate(_pixels(images, hw), resizer, hw, fpr, names=[str(p) for p in images],
                        progress=not json_out)
    command = (f"poisonlab scaling calibrate <{len(images)} images> --library {library} --algorithm {algorithm} "
               f"--size {size} --fpr {fpr:g} -o {out}")
    Calibration(fpr, tuple(entries), "file", str(out), command, {"images": [str(p) for p in images]}).write(out)
    if json_out:
        print_json({"out": str(out), "fpr": fpr, "entries": [e.as_dict() for e in entries]})
        return
    rows = [[e.resizer, str(e.ratio), str(e.images), *("-" if e.thresholds[s] is None else f"{e.thresholds[s]:.4g}"
                                                         for s in SCORES)] for e in entries]
    print_tables([TableData(f"scaling-attack calibration at FPR {100 * fpr:g}% (wrote {out})",
                            ["resizer", "ratio", "images", *SCORES], rows, left=1)])


app.command("audit", help="Attack every library x algorithm x ratio on real photographs and say which scalers are "
            "vulnerable (the scaling-audit experiment; writes a run folder).\n\nExample: poisonlab scaling audit "
            "--ratios 2,4,8")(command("scaling-audit", EXPERIMENTS.get("scaling-audit")))
