import pytest
import torch

from poisonlab.core import PoisonlabError
from poisonlab.triggers import Blend, Checkerboard, Patch, Pixel, parse_trigger


@pytest.mark.parametrize(
    ("position", "rows", "cols"),
    [
        ("bottom-right", slice(24, 27), slice(24, 27)),
        ("top-left", slice(1, 4), slice(1, 4)),
        ("top-right", slice(1, 4), slice(24, 27)),
        ("bottom-left", slice(24, 27), slice(1, 4)),
        ("center", slice(12, 15), slice(12, 15)),
    ],
)
def test_patch_lands_exactly_where_asked(position, rows, cols):
    x = torch.zeros(2, 1, 28, 28)
    out = Patch(size=3, position=position)(x, None)
    expected = torch.zeros_like(x)
    expected[..., rows, cols] = 1.0
    assert torch.equal(out, expected) and x.sum() == 0


def test_checkerboard_pixel_and_margin():
    x = torch.full((1, 3, 10, 10), 0.5)
    board = Checkerboard(size=2, color=1.0, margin=0)(x, None)
    assert board[0, :, 8, 8].tolist() == [1.0] * 3 and board[0, :, 8, 9].tolist() == [0.0] * 3
    assert board[0, :, 9, 9].tolist() == [1.0] * 3 and (board[..., :8, :] == 0.5).all()
    px = Pixel(color=0.0)(x, None)
    assert (px != x).sum() == 3 and px[0, 0, 8, 8] == 0.0


def test_blend_formula_and_noise_is_seeded():
    x = torch.rand(4, 1, 8, 8)
    b = Blend(alpha=0.25, seed=1)
    p = b.image(1, 8, 8)
    assert torch.allclose(b(x, None), 0.75 * x + 0.25 * p)
    assert torch.equal(p, Blend(seed=1).image(1, 8, 8)) and not torch.equal(p, Blend(seed=2).image(1, 8, 8))


def test_parse_trigger_specs_and_errors():
    assert parse_trigger("patch:size=4,position=top-left,color=0.5") == Patch(size=4, position="top-left", color=0.5)
    assert parse_trigger("blend:alpha=0.2") == Blend(alpha=0.2)
    for spec, message in [
        ("star", "unknown trigger"),
        ("patch:size", "expected key=value"),
        ("patch:shape=3", "unknown key shape; expected size, position, color, margin"),
        ("patch:size=2.5", "size=2.5: expected an integer"),
        ("patch:size=1,size=2", "size is given twice"),
        ("pixel:size=5", "a pixel trigger is one pixel"),
        ("patch:position=middle", "expected one of"),
        ("patch:color=2", r"\[0, 1\]"),
        ("blend:alpha=0", r"\(0, 1\]"),
    ]:
        with pytest.raises(PoisonlabError, match=message):
            parse_trigger(spec)
    with pytest.raises(PoisonlabError, match="does not fit"):
        Patch(size=8)(torch.zeros(1, 1, 8, 8), None)
