"""Resize adapters, recovered scaling operators and the attack solver against a generic QP reference."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from poisonlab.core import PoisonlabError
from poisonlab.scaling import RESIZERS, craft_attack, craft_weak, get_resizer, parse_size, psnr, solve_planes
from poisonlab.scaling.craft import reference_qp
from poisonlab.scaling.operator import recover_operator, verify_operator

AVAILABLE = [n for n in RESIZERS.names() if RESIZERS.get(n).available()]


@pytest.mark.parametrize("name", AVAILABLE)
def test_recovered_operator_reproduces_the_library(name: str) -> None:
    resizer = RESIZERS.get(name)
    for src, dst in (((40, 32), (10, 8)), ((37, 29), (11, 9))):
        op = recover_operator(resizer, src, dst)
        assert op.left.shape == (dst[0], src[0]) and op.right.shape == (src[1], dst[1])
        tol = 1e-9 if resizer.library in ("opencv", "torch") else 1e-3  # Pillow and TF resize in float32
        assert verify_operator(op, resizer, channels=3, trials=1) < tol
        # the 8-bit path a pipeline uses rounds (and saturates) the same linear map
        img = np.random.default_rng(1).integers(0, 256, (*src, 3), dtype=np.uint8)
        ours = np.clip(np.moveaxis(op.apply(np.moveaxis(img, -1, 0)), 0, -1), 0, 255)
        assert np.abs(resizer(img, dst).astype(float) - ours).max() <= 1.0 + 1e-6


def test_nearest_and_linear_read_few_pixels_area_reads_all() -> None:
    sizes = ((64, 64), (8, 8))
    assert recover_operator(get_resizer("opencv", "nearest"), *sizes).coverage() == pytest.approx(1 / 64)
    assert recover_operator(get_resizer("opencv", "linear"), *sizes).coverage() == pytest.approx(4 / 64)
    assert recover_operator(get_resizer("opencv", "area"), *sizes).coverage() == 1.0
    assert recover_operator(get_resizer("pillow", "bilinear"), *sizes).coverage() == 1.0


def _feasible_target(op, rng: np.random.Generator, planes: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    return op.apply(rng.uniform(0, 255, (planes, *op.source_shape)))


@pytest.mark.parametrize(("name", "src", "dst"), [
    ("opencv-linear", (16, 16), (4, 4)),      # disjoint blocks: the exact blockwise path
    ("opencv-nearest", (12, 10), (4, 3)),
    ("opencv-cubic", (12, 10), (8, 7)),       # overlapping kernels: the dual path
    ("pillow-bilinear", (16, 12), (6, 5)),
])
def test_fast_solver_matches_the_reference_qp(name: str, src: tuple[int, int], dst: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    op = recover_operator(RESIZERS.get(name), src, dst)
    source, target = rng.uniform(0, 255, (2, *src)), _feasible_target(op, rng, 2)
    fast, info = solve_planes(source, target, op, eps=1.0)
    ref = reference_qp(source, target, op, eps=1.0)
    assert info.max_violation <= 1e-6
    assert np.abs(op.apply(ref) - target).max() <= 1.0 + 1e-5
    assert fast.min() >= 0 and fast.max() <= 255
    cost_fast, cost_ref = ((fast - source) ** 2).sum(), ((ref - source) ** 2).sum()
    assert cost_fast <= cost_ref * (1 + 1e-4) + 1e-6
    assert np.abs(fast - ref).max() < 0.05


def _photos(size: int, small: int) -> tuple[np.ndarray, np.ndarray]:
    source = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    target = cv2.resize(data.chelsea(), (small, small), interpolation=cv2.INTER_AREA)
    return source, target


def test_strong_attack_on_a_vulnerable_and_a_robust_algorithm() -> None:
    source, target = _photos(128, 16)
    weak_spot = craft_attack(source, target, get_resizer("opencv", "linear"), eps=1.0)
    assert weak_spot.attack.dtype == np.uint8
    assert weak_spot.max_target_error <= 1.0  # the library's own uint8 output, within eps of T
    assert weak_spot.psnr_source > 20 and weak_spot.psnr_target > 45
    robust = craft_attack(source, target, get_resizer("opencv", "area"), eps=1.0)
    assert robust.max_target_error <= 1.0
    assert robust.psnr_source < 15  # to reach T it has to repaint the image: A no longer looks like S
    assert psnr(robust.attack, source) == pytest.approx(robust.psnr_source)


def test_weak_attack_hits_the_target() -> None:
    _, target = _photos(64, 16)
    weak = craft_weak(target, get_resizer("torch", "bilinear"), (64, 64), eps=1.0)
    assert weak.attack.shape == (64, 64, 3) and weak.max_target_error <= 1.0


def test_bad_input_gets_one_line_errors() -> None:
    source, target = _photos(32, 8)
    linear = get_resizer("opencv", "linear")
    with pytest.raises(PoisonlabError, match="larger than source"):
        craft_attack(target, source, linear)
    with pytest.raises(PoisonlabError, match="same channels"):
        craft_attack(source, target[..., 0], linear)
    with pytest.raises(PoisonlabError, match="unknown resizer"):
        get_resizer("opencv", "bogus")
    with pytest.raises(PoisonlabError, match="WIDTHxHEIGHT"):
        parse_size("64by64")
    assert parse_size("64x48") == (48, 64)
