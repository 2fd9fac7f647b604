"""Image files decoded a batch at a time by a DataLoader's worker processes: an ImageSource for folder datasets.

Selecting rows decodes nothing; ``batches`` hands the files of each batch to ``workers`` processes,
which decode them in parallel while the model works on the previous batch, and at most
``workers x 2`` batches wait in memory (``workers`` 0 decodes in the main process). An image that
cannot be read, or whose size differs from the folder's, stops the pass with one line naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from poisonlab.core import PoisonlabError
from poisonlab.data.images import read_image


def _default_workers() -> int:
    """``POISONLAB_WORKERS`` when set, else the cores beyond two, at most 4.

    The model's own threads use the cores too: on 2 cores, two worker processes made a scan of 10,100
    64 x 64 PNGs slower than decoding in the main process (11.1 s vs 8.8 s) and added about 175 MB each.
    """
    value = os.environ.get("POISONLAB_WORKERS", "")
    if value:
        if not value.isdigit():
            raise PoisonlabError(f"POISONLAB_WORKERS={value!r}: expected a number of worker processes >= 0")
        return int(value)
    return min(4, max(0, (os.cpu_count() or 1) - 2))


WORKERS = _default_workers()
"""Decoding processes per pass (0: decode in the main process)."""


class _Decoded(Dataset[Tensor | str]):
    """Row -> the decoded (C, H, W) image, or the one-line error naming its file (raised in the main process)."""

    def __init__(self, files: tuple[str, ...], mode: str, size: tuple[int, int]) -> None:
        self.files, self.mode, self.size = files, mode, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, row: int) -> Tensor | str:
        path = Path(self.files[row])
        try:
            image = read_image(path, self.mode)
        except PoisonlabError as e:
            return str(e)
        if image.shape[1:] != self.size:
            h, w = self.size
            return (f"{path}: size {image.shape[2]}x{image.shape[1]} differs from the folder's {w}x{h}; resize "
                    "the folder to one size first")
        return torch.from_numpy(image)


def _stack(items: list[Tensor | str]) -> Tensor | str:
    """One batch, or the first error in it (a worker's exception would arrive wrapped in its traceback)."""
    for item in items:
        if isinstance(item, str):
            return item
    return torch.stack(items)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImageFiles:
    """Rows ``index`` of ``files``, each decoded as ``mode`` ('L' or 'RGB') and expected to be ``size`` (H, W)."""

    files: tuple[str, ...]
    mode: str
    size: tuple[int, int]
    index: Tensor
    workers: int = WORKERS

    @staticmethod
    def of(files: list[str], mode: str, size: tuple[int, int]) -> ImageFiles:
        """Every file, in order."""
        return ImageFiles(tuple(files), mode, size, torch.arange(len(files)))

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), 1 if self.mode == "L" else 3, *self.size))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: Tensor | slice) -> ImageFiles:
        return ImageFiles(self.files, self.mode, self.size, self.index[index], self.workers)

    def batches(self, batch_size: int, order: Tensor | None = None) -> Iterator[Tensor]:
        """Decoded float32 batches in row order, or in ``order`` (positions into these rows)."""
        if batch_size < 1:
            raise PoisonlabError(f"batch size {batch_size}: expected at least 1")
        rows = (self.index if order is None else self.index[order]).tolist()
        chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        workers = min(self.workers, len(chunks)) if len(chunks) > 1 else 0
        loader = DataLoader(_Decoded(self.files, self.mode, self.size), batch_sampler=chunks, num_workers=workers,
                            collate_fn=_stack)
        for batch in loader:
            if isinstance(batch, str):
                raise PoisonlabError(batch)
            yield batch

    def paths(self) -> list[str]:
        """The file of every row, in row order."""
        return [self.files[i] for i in self.index.tolist()]
