"""The openclipart dataset: options, decoding (alpha, aspect, bit depth), the fixed split, skipped files, the cache."""

from __future__ import annotations

import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from poisonlab.core import PoisonlabError
from poisonlab.data import load_dataset
from poisonlab.data import openclipart as oc
from poisonlab.data.openclipart import CATEGORIES, ROOT, clip_pixels, clipart_files, parse_options, read_clipart

USER_CACHE = os.environ.get("XDG_CACHE_HOME")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("POISONLAB_CACHE", raising=False)


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def fake_tree(root: Path, per_category: int = 6) -> Path:
    """Every category with ``per_category`` small PNGs in varied modes, some in sub-folders, plus one symlink."""
    rng = np.random.default_rng(0)
    for k, category in enumerate(CATEGORIES):
        for i in range(per_category):
            rgb = rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)
            mode = ("RGBA", "RGB", "P", "LA")[i % 4]
            image = Image.fromarray(rgb).convert(mode)
            _save(root / category / ("sub" if i % 2 else "") / f"{category}_{i}.png", image)
        if k == 0:
            (root / category / "link.png").symlink_to(root / CATEGORIES[1] / f"{CATEGORIES[1]}_0.png")
    return root


def test_the_fake_tree_loads_as_ten_rgb_classes_in_range(tmp_path: Path) -> None:
    root = fake_tree(tmp_path / "png")
    train, test = load_dataset(f"openclipart:path={root},size=32", seed=0)
    assert train.classes == test.classes == CATEGORIES
    assert train.x.shape == (40, 3, 32, 32) and test.x.shape == (20, 3, 32, 32)
    for part in (train, test):
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.int64
        assert 0.0 <= float(part.x.min()) and float(part.x.max()) <= 1.0
    assert train.y.bincount().tolist() == [4] * 10 and test.y.bincount().tolist() == [2] * 10  # symlink skipped
    bare, _ = load_dataset(f"openclipart:{root},size=32")
    assert torch.equal(bare.x, train.x)


def test_the_split_is_fixed_stratified_and_nested_under_the_cap(tmp_path: Path) -> None:
    root = fake_tree(tmp_path / "png")
    a, at = load_dataset(f"openclipart:path={root},size=32", seed=0)
    b, bt = load_dataset(f"openclipart:path={root},size=32", seed=7)
    assert torch.equal(a.x, b.x) and torch.equal(at.x, bt.x) and torch.equal(a.y, b.y)
    small, large = clipart_files(root, 3), clipart_files(root, 6)
    assert all(f in large for f in small)  # a smaller cap keeps a subset, each file on the same side
    assert [sum(f.label == k for f in small) for k in range(10)] == [3] * 10
    assert [sum(f.label == k and f.test for f in small) for k in range(10)] == [1] * 10
    capped, capped_test = load_dataset(f"openclipart:path={root},size=32,per_class=3")
    assert len(capped) == 20 and len(capped_test) == 10
    (root / "animals" / "new.png").write_bytes((root / "animals" / "animals_0.png").read_bytes())
    assert [f for f in clipart_files(root, 6) if f.label > 0] == [f for f in large if f.label > 0]


def test_alpha_goes_over_white_and_the_aspect_ratio_is_padded(tmp_path: Path) -> None:
    clear = _save(tmp_path / "clear.png", Image.new("RGBA", (20, 30), (0, 0, 0, 0)))
    assert (clip_pixels(clear, 32) == 255).all()
    wide = _save(tmp_path / "wide.png", Image.new("RGB", (40, 20), (200, 0, 0)))
    px = clip_pixels(wide, 32)
    assert px.shape == (32, 32, 3) and px.dtype == np.uint8
    assert (px[:8] == 255).all() and (px[24:] == 255).all()
    assert (px[8:24] == (200, 0, 0)).all()
    half = Image.new("RGBA", (10, 10), (0, 0, 0, 128))
    assert np.abs(clip_pixels(_save(tmp_path / "half.png", half), 32).astype(int) - 127).max() <= 1
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 1
    assert (clip_pixels(_save(tmp_path / "p.png", palette), 32) == 255).all()
    deep = _save(tmp_path / "deep.png", Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16)))
    assert Image.open(deep).mode.startswith("I")
    assert (clip_pixels(deep, 32) == round(30000 / 65535 * 255)).all()  # 16-bit scaled, not clipped to white


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_png(path: Path) -> Path:
    """A 100-byte PNG whose header declares 10,000 x 10,000 pixels (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")))
    return path


def test_unreadable_files_are_skipped_counted_and_warned_once(tmp_path: Path) -> None:
    root = fake_tree(tmp_path / "png")
    (root / "animals" / "broken.png").write_bytes(b"not a png")
    good = (root / "food" / "food_0.png").read_bytes()
    (root / "food" / "truncated.png").write_bytes(good[: len(good) // 2])
    _huge_png(root / "people" / "huge.png")
    os.mkfifo(root / "tools" / "fifo.png")
    options = parse_options(f"path={root},size=32")
    art = read_clipart(options)
    assert len(art.skipped) == 4 and len(art.labels) == 60
    assert any("broken.png: not a readable image" in s for s in art.skipped)
    assert any("huge.png" in s and "refused before decoding" in s for s in art.skipped)
    assert any("fifo.png: expected an image file, found a FIFO" in s for s in art.skipped)
    with pytest.warns(UserWarning, match=r"openclipart: skipped 4 of 64 images that cannot be read"):
        train, test = load_dataset(f"openclipart:path={root},size=32")
    assert len(train) + len(test) == 60


@pytest.mark.parametrize(("arg", "message"), [
    ("size=48", r"size=48; expected one of 32, 64, 96"),
    ("size=big", r"size='big'; expected one of 32, 64, 96"),
    ("per_class=0", r"per_class=0; expected an integer >= 1"),
    ("per_class=2.5", r"per_class=2.5; expected an integer >= 1"),
    ("colour=red", r"unknown option 'colour'; expected path=DIR, size=N or per_class=N"),
    ("/a,path=/b", r"the path is given twice"),
    ("size=32,size=64", r"size is given twice"),
    ("size=32,per_class", r"expected key=value, got 'per_class'"),
])
def test_bad_options_are_one_line_errors(arg: str, message: str) -> None:
    with pytest.raises(PoisonlabError, match=message) as err:
        load_dataset(f"openclipart:{arg}")
    assert "\n" not in str(err.value)


def test_a_missing_root_or_category_names_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(PoisonlabError, match=r"nowhere not found; install the Debian package openclipart-png"):
        load_dataset(f"openclipart:path={tmp_path / 'nowhere'}")
    root = fake_tree(tmp_path / "png", per_category=2)
    for p in (root / "office").rglob("*.png"):
        p.unlink()
    with pytest.raises(PoisonlabError, match=r"office holds no PNG files"):
        load_dataset(f"openclipart:{root}")
    shutil.rmtree(root / "office")
    with pytest.raises(PoisonlabError, match=r"office not found; expected one folder per category"):
        load_dataset(f"openclipart:{root}")


def test_the_cache_returns_identical_arrays_and_a_corrupt_one_is_rebuilt(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_tree(tmp_path / "png")
    spec = f"openclipart:path={root},size=32"
    first = load_dataset(spec)
    (cached,) = (tmp_path / "cache" / "poisonlab").glob("openclipart-*.npz")
    decode = oc.decode_clipart
    monkeypatch.setattr(oc, "decode_clipart", lambda *a: pytest.fail("decoded although cached"))
    hit = load_dataset(spec)
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(first, hit, strict=True))
    monkeypatch.setattr(oc, "decode_clipart", decode)
    cached.write_bytes(cached.read_bytes()[:100])
    rebuilt = load_dataset(spec)
    assert torch.equal(rebuilt[0].x, first[0].x) and len(cached.read_bytes()) > 100
    os.utime(root / "animals" / "animals_0.png", ns=(1, 1))
    assert load_dataset(spec)[0].x.shape == first[0].x.shape
    assert len(list(cached.parent.glob("openclipart-*.npz"))) == 2  # a changed file is a new key


def test_the_cache_can_be_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POISONLAB_CACHE", "0")
    load_dataset(f"openclipart:path={fake_tree(tmp_path / 'png', 2)},size=32")
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_costs_only_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    with pytest.warns(UserWarning, match="cannot write the cache"):
        train, _ = load_dataset(f"openclipart:path={fake_tree(tmp_path / 'png', 2)},size=32")
    assert len(train) == 10


needs_package = pytest.mark.skipif(not ROOT.is_dir(), reason="Debian openclipart-png absent")
REAL_COUNTS = [286, 400, 330, 107, 345, 400, 400, 400, 123, 170]
"""Images chosen per class from openclipart-png 1:0.18 (not links, at most 400), before decoding."""


@needs_package
def test_the_real_package_selection_and_a_small_decode() -> None:
    files = clipart_files(ROOT, 400)
    assert [sum(f.label == k for f in files) for k in range(10)] == REAL_COUNTS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a 10,000 x 16,000 food drawing may be among the first 10
        train, test = load_dataset("openclipart:size=32,per_class=10")
    assert train.shape == (3, 32, 32) and train.classes == CATEGORIES and len(train) + len(test) >= 95


@needs_package
@pytest.mark.slow
def test_the_real_package_decodes_whole_at_32_px(monkeypatch: pytest.MonkeyPatch) -> None:
    """About 20 s on two cores the first time, under a second from the user's own cache after that."""
    if USER_CACHE is None:
        monkeypatch.delenv("XDG_CACHE_HOME")
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", USER_CACHE)
    art = read_clipart(parse_options("size=32"))
    assert art.pixels.shape[1:] == (3, 32, 32) and len(art.skipped) == 13
    assert all("refused before decoding" in s for s in art.skipped)  # over the pixel budget, none corrupt
    assert np.bincount(art.labels).tolist() == [286, 400, 319, 107, 344, 400, 400, 400, 123, 169]
    assert int(art.test.sum()) == 592
