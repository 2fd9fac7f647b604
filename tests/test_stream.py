"""Folder datasets stay in their files: decoded a batch at a time by worker processes, with the same results as
the same images in memory, and never more than a batch decoded at once by the scanners and the trainer."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from poisonlab.core import ImageSet, LazyImageSet, PoisonlabError, batches, in_memory
from poisonlab.data import load_dataset, open_dataset, open_image_folder
from poisonlab.data.stream import ImageFiles
from poisonlab.defenses import DEFENSES
from poisonlab.models import build_model
from poisonlab.training import Recipe, predict, train


def _folder(root: Path, per_class: int = 60, size: int = 12, poison: int = 4) -> list[int]:
    """Two classes of RGB images told apart by colour; ``poison`` class-0 images with a white corner filed as
    class 1. Returns the poisoned rows (row order: class folders sorted, files sorted)."""
    rng = np.random.default_rng(0)
    rows = []
    for k, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            img[..., k] += 120
            if k == 1 and i < poison:
                img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
                img[..., 0] += 120
                img[-4:, -4:] = 255
                rows.append(per_class + i)
            Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return rows


def test_a_folder_opens_lazily_and_decodes_the_same_pixels_in_any_order(tmp_path):
    _folder(tmp_path, per_class=40)
    lazy, test = open_dataset(f"folder:{tmp_path}")
    assert isinstance(lazy, LazyImageSet) and len(test) == 0 and lazy.shape == (3, 12, 12)
    loaded = lazy.load()
    px = np.asarray(Image.open(tmp_path / "b" / "005.png"), dtype=np.float32) / 255
    assert np.allclose(loaded.x[45].permute(1, 2, 0).numpy(), px)
    assert torch.equal(load_dataset(f"folder:{tmp_path}")[0].x, loaded.x)
    order = torch.randperm(len(lazy), generator=torch.Generator().manual_seed(1))
    streamed = list(batches(dataclasses.replace(lazy.x, workers=2), 7, order))  # two worker processes
    assert [len(b) for b in streamed] == [7] * 11 + [3]
    assert torch.equal(torch.cat(streamed), loaded.x[order])
    part = lazy.subset(torch.tensor([44, 3]))
    assert torch.equal(in_memory(part).x, loaded.x[[44, 3]]) and part.y.tolist() == [1, 0]


def test_an_unreadable_file_found_while_streaming_is_one_line_naming_it(tmp_path):
    _folder(tmp_path)
    bad = tmp_path / "b" / "010.png"
    bad.write_bytes(bad.read_bytes()[:60])  # the header survives, the pixels do not
    lazy = open_image_folder(tmp_path)
    with pytest.raises(PoisonlabError, match=r"b/010\.png: not a readable image") as info:
        list(batches(dataclasses.replace(lazy.x, workers=2), 8))
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_images_must_keep_the_folders_size_while_streaming(tmp_path):
    _folder(tmp_path)
    files = ImageFiles.of([str(p) for p in sorted(tmp_path.glob("*/*.png"))], "RGB", (10, 12))
    with pytest.raises(PoisonlabError, match=r"a/000\.png: size 12x12 differs from the folder's 12x10"):
        list(batches(files, 16))


class _Largest:
    """Records the largest batch any ImageFiles decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.largest = 0
        original = ImageFiles.batches

        def spy(files: ImageFiles, batch_size: int, order: torch.Tensor | None = None):
            for batch in original(files, batch_size, order):
                self.largest = max(self.largest, len(batch))
                yield batch

        monkeypatch.setattr(ImageFiles, "batches", spy)


def test_training_and_scanning_a_lazy_folder_match_memory_a_batch_at_a_time(tmp_path, monkeypatch):
    poisoned = _folder(tmp_path)
    lazy = open_image_folder(tmp_path)
    loaded = lazy.load()
    recipe = Recipe(epochs=8, batch_size=16, lr=1e-2)
    start = build_model("small-cnn", lazy, seed=0)
    reference = build_model("small-cnn", loaded, seed=0)
    for (name, a), b in zip(start.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name  # the normaliser's moments, streamed or in memory
    largest = _Largest(monkeypatch)
    from_files = train(copy.deepcopy(reference), lazy, recipe, seed=0, progress=False)
    from_memory = train(copy.deepcopy(reference), loaded, recipe, seed=0, progress=False)
    for a, b in zip(from_files.state_dict().values(), from_memory.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(predict(from_files, lazy.x, 16), predict(from_memory, loaded.x, 16))
    assert (predict(from_memory, loaded.x) == loaded.y).float().mean() == 1.0
    for name in ("spectral", "activation-clustering", "label-consistency"):
        scanner = DEFENSES.build(name, batch_size=16)
        streamed, held = scanner.scan(from_files, lazy), scanner.scan(from_memory, loaded)
        assert torch.allclose(streamed.scores, held.scores, atol=1e-5) and torch.equal(streamed.flagged, held.flagged)
    assert streamed.flagged.tolist() == poisoned  # label-consistency finds the relabelled class-0 images
    sampled = DEFENSES.build("label-consistency", batch_size=16, max_dims=48, keep_mb=0.1).scan(from_files, lazy)
    assert sampled.flagged.tolist() == poisoned  # PCA fitted on the 91 rows 0.1 MB holds, every row projected
    assert largest.largest == 16


def test_an_image_set_in_memory_passes_through(tmp_path):
    data = ImageSet(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 0]), ("a", "b"))
    assert in_memory(data) is data
    assert [len(b) for b in batches(data.x, 2)] == [2, 1]


def test_train_and_scan_a_folder_from_the_command_line_name_its_files(tmp_path):
    import csv
    import json

    from typer.testing import CliRunner

    from poisonlab.cli.app import app

    poisoned = _folder(tmp_path / "data")
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--dataset", f"folder:{tmp_path / 'data'}", "--model", "small-cnn", "--epochs",
                              "8", "--batch-size", "16", "--lr", "0.01", "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["scan", "data", "--run", str(tmp_path / "run"), "--defense", "label-consistency",
                              "--out", str(tmp_path / "scan"), "--json"])
    assert res.exit_code == 1, res.output  # flagged
    report = json.loads((tmp_path / "scan" / "report.json").read_text())
    assert report["flagged_rows"] == poisoned and report["samples"] == 120
    with open(tmp_path / "scan" / "scores.csv") as f:
        top = list(csv.DictReader(f))[: len(poisoned)]
    assert sorted(Path(r["file"]).relative_to(tmp_path / "data").as_posix() for r in top) == [
        "b/000.png", "b/001.png", "b/002.png", "b/003.png"]
