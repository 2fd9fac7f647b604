"""Grid-contrast detection, calibrated thresholds, `scaling calibrate` and `scaling scan --calibration`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from poisonlab.cli.app import app
from poisonlab.core import PoisonlabError
from poisonlab.scaling import craft_attack, craft_region, get_resizer
from poisonlab.scaling.calibration import SCORES, SHIPPED, load_calibration, shipped, threshold_at
from poisonlab.scaling.corpus import SPLITS, benign_corpus
from poisonlab.scaling.defenses import calibrate, detect
from poisonlab.scaling.grid import grid_contrast

NEAREST = get_resizer("opencv", "nearest")
SIZE = (64, 64)
runner = CliRunner()


@pytest.fixture(scope="module")
def holdout() -> list[np.ndarray]:
    """18 held-out benign 256 px images, two of every variant (photos the shipped table was not set on)."""
    return [img for _, img in benign_corpus("holdout", 256, seed=5, counts={k: 2 for k in (
        "crop", "jpeg75", "jpeg95", "noise5", "noise15", "sharpen", "texture", "cubic", "upscaled")})]


def test_corpus_splits_share_no_photo_and_are_seeded() -> None:
    (cal, cal_tex), (hold, hold_tex) = SPLITS["calibration"], SPLITS["holdout"]
    assert not set(cal + cal_tex) & set(hold + hold_tex)
    first = [img for _, img in benign_corpus("holdout", 64, seed=1, counts={"sharpen": 2, "upscaled": 2})]
    again = [img for _, img in benign_corpus("holdout", 64, seed=1, counts={"sharpen": 2, "upscaled": 2})]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True)) and first[0].shape == (64, 64, 3)
    with pytest.raises(PoisonlabError, match="corpus split"):
        next(benign_corpus("test", 64))


def test_region_attack_of_a_sixteenth_is_flagged_by_the_local_score_and_benign_images_are_not(holdout) -> None:  # type: ignore[no-untyped-def]
    benign = detect(holdout, NEAREST, SIZE)
    assert benign.flagged is not None and not benign.flagged.any()
    assert benign.details["calibration"]["source"] == "shipped default"
    assert {r["calibrated_ratio"] for r in benign.details["images"]} == {4}
    source, donor = holdout[0], holdout[5]
    target = cv2.resize(donor, SIZE, interpolation=cv2.INTER_AREA)
    attack = craft_region(source, target, NEAREST, (24, 8, 16, 16))  # 1/16 of the model's input
    assert attack.max_target_error <= 1 and attack.psnr_source > 30
    local, glob = detect([attack.attack], NEAREST, SIZE), detect([attack.attack], NEAREST, SIZE, score="grid")
    assert local.flagged is not None and local.flagged.tolist() == [True]
    top, left, h, w = local.details["images"][0]["window"]
    assert top < 24 + 16 and top + h > 24 and left < 8 + 16 and left + w > 8  # the window found lies on the region
    assert glob.scores is not None and local.scores is not None and glob.scores[0] < local.scores[0]
    with pytest.raises(PoisonlabError, match="inside the output"):
        craft_region(source, target, NEAREST, (60, 0, 16, 16))


def test_grid_contrast_stays_low_on_texture_and_noise_and_is_far_above_on_an_attack(holdout) -> None:  # type: ignore[no-untyped-def]
    linear = get_resizer("opencv", "linear")
    texture, noisy = holdout[12], holdout[9]  # a fine texture and a photo with sigma-15 noise
    for img in (texture, noisy):
        g = grid_contrast(img, linear, (32, 32))
        assert g.global_ratio < 1.3 and g.local_ratio < 2.5  # noise lowers it: its read grid is no rougher
    attack = craft_attack(texture, cv2.resize(holdout[1], (32, 32), interpolation=cv2.INTER_AREA), linear).attack
    assert grid_contrast(attack, linear, (32, 32)).global_ratio > 5
    assert np.isnan(grid_contrast(texture, get_resizer("opencv", "area"), (32, 32)).local_ratio)


def test_threshold_follows_the_conformal_rule_and_refuses_too_few_images() -> None:
    scores = np.arange(1.0, 100.0)  # 99 scores: at fpr 0.01 only the largest can be the threshold
    assert threshold_at(scores, 0.01, "t") == 99.0
    assert threshold_at(np.r_[scores, np.nan], 0.01, "t") == 99.0
    assert threshold_at(np.arange(1.0, 11.0), 0.1, "t") == 10.0 and threshold_at(np.full(3, np.nan), 0.1, "t") is None
    with pytest.raises(PoisonlabError, match="98 benign images cannot set a threshold at --fpr 0.01; expected at le"):
        threshold_at(scores[:-1], 0.01, "t")


def test_shipped_table_is_generated_and_covers_the_vulnerable_resizers() -> None:
    table = shipped()
    assert table.command.startswith("python bench/scaling_calibrate.py") and table.fpr == 0.01
    assert table.corpus["split"] == "calibration"
    have = {(e.resizer, e.ratio) for e in table.entries}
    for name in ("opencv-nearest", "opencv-linear", "opencv-cubic", "pillow-nearest", "torch-nearest",
                 "torch-bilinear", "torch-bicubic"):
        assert {(name, 4), (name, 8)} <= have
    assert all(e.images >= 300 for e in table.entries)
    assert table.entry("opencv-linear", 16, "local").ratio == 8  # the shipped table falls back to its nearest ratio


def _pngs(folder: Path, images: list[np.ndarray]) -> list[str]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], str]:
    """12 benign 64 px images and one 64 px image carrying a whole-image attack against nearest to 16 px."""
    root = tmp_path_factory.mktemp("calib")
    benign = [img for _, img in benign_corpus("holdout", 64, seed=2, counts={"crop": 6, "sharpen": 3, "noise5": 3})]
    target = cv2.resize(benign[1], (16, 16), interpolation=cv2.INTER_AREA)
    attack = craft_attack(benign[0], target, NEAREST).attack
    return _pngs(root / "benign", benign), _pngs(root / "attack", [attack])[0]


def test_calibrate_writes_a_file_that_scan_uses_and_reports(tmp_path: Path, small) -> None:  # type: ignore[no-untyped-def]
    benign, attack = small
    out = tmp_path / "calib.json"
    args = ["--library", "opencv", "--algorithm", "nearest", "--size", "16x16"]
    made = runner.invoke(app, ["scaling", "calibrate", *benign, *args, "--fpr", "0.1", "-o", str(out), "--json"])
    assert made.exit_code == 0, made.output
    table = load_calibration(out)
    [entry] = table.entries
    assert (entry.resizer, entry.ratio, entry.images, table.fpr) == ("opencv-nearest", 4, 12, 0.1)
    assert set(entry.thresholds) == set(SCORES) and "--fpr 0.1" in table.command
    scan = runner.invoke(app, ["scaling", "scan", *benign, attack, *args, "--calibration", str(out), "--json"])
    assert scan.exit_code == 1, scan.output
    body = json.loads(scan.output)
    assert body["calibration"] == {"source": "user file", "path": str(out), "fpr": 0.1, "command": table.command}
    assert [r["flagged"] for r in body["images"]] == [False] * 12 + [True]
    assert {r["threshold"] for r in body["images"]} == {entry.thresholds["local"]}
    text = runner.invoke(app, ["scaling", "scan", attack, *args, "--calibration", str(out)])
    assert text.exit_code == 1 and "user file" in text.output and "ATTACK" in text.output
    shipped_scan = runner.invoke(app, ["scaling", "scan", benign[0], *args])
    assert shipped_scan.exit_code == 0 and "shipped default" in shipped_scan.output
    explicit = runner.invoke(app, ["scaling", "scan", benign[0], *args, "--threshold", "0", "--json"])
    assert explicit.exit_code == 1
    assert json.loads(explicit.output)["calibration"] == {"source": "explicit --threshold", "threshold": 0.0}


def test_scan_json_is_strict_json_when_the_resize_reads_every_pixel(small) -> None:  # type: ignore[no-untyped-def]
    benign, _ = small
    res = runner.invoke(app, ["scaling", "scan", benign[0], "--algorithm", "area", "--size", "16x16", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))["images"][0]
    assert row["score"] is None and row["flagged"] is False and "reads every pixel" in row["note"]


def _write(path: Path, body: object) -> Path:
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


GOOD = {"schema": "poisonlab.scaling-calibration/1", "fpr": 0.01,
        "entries": [{"resizer": "opencv-nearest", "ratio": 4, "images": 300, "thresholds": {"local": 2.0}}]}


@pytest.mark.parametrize(("body", "message"), [
    ("{not json", "invalid JSON"),
    ({**GOOD, "schema": "other"}, "expected \"schema\""),
    ({**GOOD, "fpr": 2}, "fpr 2"),
    ({**GOOD, "entries": []}, "non-empty list of entries"),
    ({**GOOD, "entries": [{**GOOD["entries"][0], "resizer": "nosuch"}]}, "'nosuch' is not a known resizer"),
    ({**GOOD, "entries": [{**GOOD["entries"][0], "ratio": 0}]}, "ratio 0"),
    ({**GOOD, "entries": [{**GOOD["entries"][0], "thresholds": {"local": -1}}]}, "local -1"),
    ('{"schema": "poisonlab.scaling-calibration/1", "fpr": 0.01, "entries": [{"resizer": "opencv-nearest", '
     '"ratio": 4, "images": 300, "thresholds": {"local": NaN}}]}', "local nan"),
    ({**GOOD, "entries": [{**GOOD["entries"][0], "thresholds": {"bogus": 1}}]}, "'bogus'"),
    ({**GOOD, "entries": [{**GOOD["entries"][0], "ratio": 8}]}, "no local threshold for opencv-nearest at ratio 4"),
])
def test_bad_calibration_files_get_one_line_errors(body: object, message: str, tmp_path: Path, small) -> None:  # type: ignore[no-untyped-def]
    benign, _ = small
    path = _write(tmp_path / "c.json", body)
    res = runner.invoke(app, ["scaling", "scan", benign[0], "--algorithm", "nearest", "--size", "16x16",
                              "--calibration", str(path)])
    assert res.exit_code == 2 and message in res.output and str(path) in res.output, res.output
    assert res.output.strip().count("\n") == 0


def test_calibration_path_must_be_a_json_file(tmp_path: Path, small) -> None:  # type: ignore[no-untyped-def]
    benign, _ = small
    for path, message in ((tmp_path, "not a usable scaling calibration file (a folder)"),
                          (tmp_path / "gone.json", "no such calibration file")):
        res = runner.invoke(app, ["scaling", "scan", benign[0], "--size", "16x16", "--calibration", str(path)])
        assert res.exit_code == 2 and message in res.output, res.output


@pytest.mark.parametrize(("extra", "message"), [
    (["--fpr", "0.01"], "12 benign images cannot set a threshold at --fpr 0.01; expected at least 99"),
    (["--fpr", "0"], "--fpr 0.0: expected a false-positive rate between 0 and 1"),
    (["--fpr", "1"], "--fpr 1.0"),
    (["--fpr", "nan"], "expected a finite number"),
    (["--algorithm", "area"], "reads every pixel of these images"),
    (["--size", "128x128"], "smaller than the size"),
])
def test_calibrate_refuses_what_cannot_give_the_stated_rate(extra: list[str], message: str, tmp_path: Path,
                                                            small) -> None:  # type: ignore[no-untyped-def]
    benign, _ = small
    args = ["scaling", "calibrate", *benign, "--algorithm", "nearest", "--size", "16x16", "-o",
            str(tmp_path / "c.json"), *extra]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "c.json").exists()


def test_scan_refuses_threshold_with_calibration_and_scores_that_do_not_apply(small) -> None:  # type: ignore[no-untyped-def]
    benign, _ = small
    both = runner.invoke(app, ["scaling", "scan", benign[0], "--size", "16x16", "--threshold", "1", "--calibration",
                               str(SHIPPED)])
    assert both.exit_code == 2 and "expected one of them, not both" in both.output
    # Lanczos at ratio 8 gives every pixel some weight: the selective median has nothing to rebuild from
    big = np.asarray(Image.open(benign[0]).resize((128, 128)))
    with pytest.raises(PoisonlabError, match="filtering score does not apply to opencv-lanczos4"):
        detect([big], get_resizer("opencv", "lanczos4"), (16, 16), score="filtering")
    with pytest.raises(PoisonlabError, match="expected one of them"):
        detect([big], NEAREST, (16, 16), threshold=1.0, calibration=shipped())
    assert calibrate([big] * 9, NEAREST, (16, 16), fpr=0.1)[0].ratio == 8


@pytest.mark.parametrize(("command", "value", "message"), [
    ("scan", ["--threshold", "nan"], "--threshold nan: expected a finite number"),
    ("scan", ["--threshold", "inf"], "--threshold inf: expected a finite number"),
    ("scan", ["--threshold", "-1"], "--threshold -1.0: expected a number >= 0"),
    ("craft", ["--eps", "nan"], "--eps nan: expected a finite number"),
    ("craft", ["--eps", "inf"], "--eps inf: expected a finite number"),
    ("craft", ["--eps", "-1"], "--eps -1.0: expected a number > 0"),
    ("calibrate", ["--fpr", "inf"], "--fpr inf: expected a finite number"),
    ("calibrate", ["--fpr", "-0.5"], "--fpr -0.5: expected a false-positive rate between 0 and 1"),
])
def test_no_option_value_switches_detection_off(command: str, value: list[str], message: str, tmp_path: Path,
                                                small) -> None:  # type: ignore[no-untyped-def]
    benign, attack = small
    out = tmp_path / "out"
    args = {"scan": [attack, "--algorithm", "nearest", "--size", "16x16"],
            "craft": [benign[0], benign[1], "--size", "16x16", "-o", str(out)],
            "calibrate": [*benign, "--algorithm", "nearest", "--size", "16x16", "-o", str(out)]}[command]
    res = runner.invoke(app, ["scaling", command, *args, *value, "--json"])
    assert res.exit_code == 2 and message in res.output, res.output
    assert res.output.strip().count("\n") == 0 and not out.exists()
