"""``poisonlab scaling craft|scan|audit``: image-scaling attacks and their detection (Quiring et al. 2020)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from poisonlab.cli.common import at_least, one_line_errors, print_json, print_tables, say
from poisonlab.cli.run import command
from poisonlab.core import PoisonlabError
from poisonlab.data.images import read_pixels
from poisonlab.registry import EXPERIMENTS
from poisonlab.report.store import atomic_write_png, check_out_file
from poisonlab.report.tables import image_scan_tables
from poisonlab.scaling.craft import craft_attack, craft_weak
from poisonlab.scaling.defenses import DETECTORS, detect
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
    hw = parse_size(size) if size else tgt.shape[:2]
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


@app.command()
@one_line_errors
def scan(
    images: Annotated[list[Path], typer.Argument(help="images to check")],
    size: Annotated[str, typer.Option(help="pipeline's output size WIDTHxHEIGHT")] = "64x64",
    library: Annotated[str, typer.Option(help="the pipeline's resize library")] = "opencv",
    algorithm: Annotated[str, typer.Option(help="the pipeline's resize algorithm")] = "linear",
    score: Annotated[str, typer.Option(help=f"detection score: {', '.join(DETECTORS)}")] = "filtering",
    threshold: Annotated[float | None, typer.Option(help="flag above this score (default: calibrated)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the verdicts as JSON")] = False,
) -> None:
    """Flag images that carry an image-scaling attack against this resize. Exit code 1 if any is flagged.

    Example: poisonlab scaling scan data/*.png --size 64x64 --library opencv --algorithm linear
    """
    at_least("--threshold", threshold, 0.0)
    resizer, hw = get_resizer(library, algorithm), parse_size(size)
    pixels = [read_pixels(p, "RGB") for p in images]
    for path, img in zip(images, pixels, strict=True):
        if img.shape[0] < hw[0] or img.shape[1] < hw[1]:
            raise PoisonlabError(f"{path}: {img.shape[1]}x{img.shape[0]} is smaller than the size {size}")
    verdict = detect(pixels, resizer, hw, score=score, threshold=threshold)
    assert verdict.scores is not None and verdict.flagged is not None
    rows = [{"image": str(p), "score": float(s), "flagged": bool(f)}
            for p, s, f in zip(images, verdict.scores, verdict.flagged, strict=True)]
    if json_out:
        print_json({"resizer": resizer.name, "size": size, **verdict.details, "images": rows})
    else:
        print_tables(image_scan_tables(rows, f"scaling-attack scan ({score} score vs {resizer.name} to {size}, "
                                             f"threshold {verdict.details['threshold']:g})"))
    if any(r["flagged"] for r in rows):
        raise typer.Exit(1)


app.command("audit", help="Attack every library x algorithm x ratio on real photographs and say which scalers are "
            "vulnerable (the scaling-audit experiment; writes a run folder).\n\nExample: poisonlab scaling audit "
            "--ratios 2,4,8")(command("scaling-audit", EXPERIMENTS.get("scaling-audit")))
