"""Defenses against image-scaling attacks, the camouflaged poisoning attack, and the ``scaling`` CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from poisonlab.attacks import ATTACKS
from poisonlab.attacks.scaling_camouflage import ScalingCamouflage
from poisonlab.cli.app import app
from poisonlab.core import ImageSet, PoisonlabError
from poisonlab.data import make_synthetic
from poisonlab.scaling import craft_attack, get_resizer, psnr
from poisonlab.scaling.audit import audit, available_resizers, default_pairs, square
from poisonlab.scaling.defenses import DETECTORS, detect, is_robust, safe_resize, selective_median, selective_random
from poisonlab.scaling.preprocess import downscale
from poisonlab.triggers import Patch

SIZE = (16, 16)
LINEAR = get_resizer("opencv", "linear")


@pytest.fixture(scope="module")
def crafted() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(source, target, attack, benign) at 128x128 -> 16x16, real photographs."""
    (source, target), (benign, _) = default_pairs(128)[:2]
    small = square(target, SIZE[0])
    return source, small, craft_attack(source, small, LINEAR).attack, benign


@pytest.mark.parametrize("defense", [selective_median, selective_random])
def test_reconstruction_removes_the_target_and_spares_benign_images(defense, crafted) -> None:  # type: ignore[no-untyped-def]
    source, target, attack, benign = crafted
    assert psnr(LINEAR(attack, SIZE), target) > 45  # the attack works on the undefended pipeline
    repaired = LINEAR(defense(attack, LINEAR, SIZE), SIZE)
    assert psnr(repaired, target) < psnr(LINEAR(benign, SIZE), target) + 3  # no closer to T than an unrelated image
    assert psnr(repaired, LINEAR(source, SIZE)) > 15  # what the model gets is the source again
    assert psnr(LINEAR(defense(benign, LINEAR, SIZE), SIZE), LINEAR(benign, SIZE)) > 18  # cost on benign images


def test_robust_scaling_ignores_the_attack(crafted) -> None:  # type: ignore[no-untyped-def]
    source, target, attack, _ = crafted
    assert not is_robust(LINEAR, source.shape[:2], SIZE) and is_robust(get_resizer("opencv", "area"), (128, 128), SIZE)
    assert psnr(safe_resize(attack, SIZE), safe_resize(source, SIZE)) > 20
    assert psnr(safe_resize(attack, SIZE), target) < 15


# 128 -> 16 px: benign MSEs ~200-1900, attack ~4000-6000; grid contrast below 1, attack 25-50
CUTS = {"local": 10.0, "grid": 5.0, "filtering": 2500.0, "roundtrip": 2500.0, "robust-compare": 2500.0}


@pytest.mark.parametrize("score", list(DETECTORS))
def test_detection_separates_attack_from_benign(score: str, crafted) -> None:  # type: ignore[no-untyped-def]
    source, _, attack, benign = crafted
    verdict = detect([source, benign, attack], LINEAR, SIZE, score=score, threshold=CUTS[score])
    assert verdict.scores is not None and verdict.flagged is not None
    assert verdict.scores[2] > 3 * verdict.scores[:2].max()
    assert verdict.flagged.tolist() == [False, False, True]
    with pytest.raises(PoisonlabError, match="unknown detection score"):
        detect([source], LINEAR, SIZE, score="bogus")


def test_audit_finds_linear_vulnerable_and_area_robust() -> None:
    rows = audit(default_pairs(64)[:1], available_resizers(["opencv-linear", "opencv-area"]), [8])
    verdict = {r.resizer: r for r in rows}
    assert verdict["opencv-linear"].vulnerable and verdict["opencv-linear"].coverage == pytest.approx(1 / 16)
    assert not verdict["opencv-area"].vulnerable and verdict["opencv-area"].psnr_source < 14


def _highres(n: int = 120) -> ImageSet:
    small = make_synthetic(n, num_classes=4, size=12, channels=1, seed=0)
    return ImageSet(F.interpolate(small.x, scale_factor=4, mode="bicubic").clamp(0, 1), small.y, small.classes)


@pytest.mark.parametrize("clean_label", [False, True])
def test_camouflage_hides_the_trigger_in_the_downscale(clean_label: bool) -> None:
    train = _highres()
    attack = ATTACKS.get("scaling-camouflage")(size=(12, 12), trigger=Patch(size=3), target=0, count=10,
                                               clean_label=clean_label)
    poisoned = attack.poison(train, torch.Generator().manual_seed(0))
    idx = poisoned.indices
    assert len(idx) == 10 and (poisoned.data.y[idx] == 0).all()
    assert ((train.y[idx] == 0).all() if clean_label else (train.y[idx] != 0).all())
    untouched = torch.ones(len(train), dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(poisoned.data.x[untouched], train.x[untouched])
    seen = downscale(poisoned.data.x[idx], "opencv-linear", (12, 12))
    assert (seen[..., -4:-1, -4:-1] > 1 - 1.5 / 255).all()  # the white patch, after the pipeline's resize
    # clean-label hides a whole other image, not just a patch, so it moves its source further
    assert psnr(poisoned.data.x[idx].numpy() * 255, train.x[idx].numpy() * 255) > (12 if clean_label else 15)
    triggered = poisoned.triggered(train.subset(slice(0, 8)))
    assert triggered.x.shape == (8, 1, 48, 48) and (triggered.y == 0).all()
    assert (downscale(triggered.x, "opencv-linear", (12, 12))[..., -4:-1, -4:-1] > 1 - 1.5 / 255).all()
    # the defense: a selective median before the resize wipes the trigger out of what the model sees
    repaired = np.stack([selective_median(img[0].numpy() * 255, LINEAR, (12, 12)) for img in poisoned.data.x[idx]])
    repaired_seen = downscale(torch.from_numpy(repaired[:, None] / 255).float(), "opencv-linear", (12, 12))
    clean_seen = downscale(train.x[idx], "opencv-linear", (12, 12))[..., -4:-1, -4:-1]
    assert (seen[..., -4:-1, -4:-1] - clean_seen).abs().mean() > 0.3
    assert (repaired_seen[..., -4:-1, -4:-1] - clean_seen).abs().mean() < 0.1


def test_camouflage_rejects_a_pipeline_larger_than_the_images() -> None:
    with pytest.raises(PoisonlabError, match="no larger than"):
        ScalingCamouflage(size=(64, 64), count=2).poison(_highres(20), torch.Generator().manual_seed(0))


def _png(path: Path, img: np.ndarray) -> Path:
    Image.fromarray(img).save(path)
    return path


def test_cli_craft_and_scan(tmp_path: Path, crafted) -> None:  # type: ignore[no-untyped-def]
    source, target, _, benign = crafted
    src, tgt = _png(tmp_path / "s.png", source), _png(tmp_path / "t.png", target)
    runner = CliRunner()
    res = runner.invoke(app, ["scaling", "craft", str(src), str(tgt), "--size", "16x16", "-o",
                              str(tmp_path / "a.png"), "--json"])
    assert res.exit_code == 0, res.output
    written = np.asarray(Image.open(tmp_path / "a.png"))
    assert np.abs(LINEAR(written, SIZE).astype(int) - target).max() <= 1
    scan = ["scaling", "scan", "--size", "16x16", "--threshold", "10"]
    clean = runner.invoke(app, [*scan, str(src), str(_png(tmp_path / "b.png", benign))])
    assert clean.exit_code == 0, clean.output
    flagged = runner.invoke(app, [*scan, str(src), str(tmp_path / "a.png"), "--json"])
    assert flagged.exit_code == 1 and '"flagged": true' in flagged.output


@pytest.mark.parametrize(("args", "message"), [
    (["craft", "{t}", "{s}"], "larger than source"),
    (["craft", "{s}", "{t}", "--algorithm", "bogus"], "unknown resizer"),
    (["craft", "{s}", "{junk}"], "not a readable image"),
    (["scan", "{s}", "--size", "big"], "WIDTHxHEIGHT"),
])
def test_cli_bad_input_gets_one_line_errors(args: list[str], message: str, tmp_path: Path, crafted) -> None:  # type: ignore[no-untyped-def]
    source, target, _, _ = crafted
    paths = {"s": str(_png(tmp_path / "s.png", source)), "t": str(_png(tmp_path / "t.png", target)),
             "junk": str(tmp_path / "junk.png")}
    (tmp_path / "junk.png").write_text("not an image")
    res = CliRunner().invoke(app, ["scaling", *[a.format(**paths) for a in args]])
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") <= 2
