"""Peak memory held by autograd graphs, to show that back-gradient descent stays flat in T while unrolling grows."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import Tensor


class _Held:
    """A tensor saved for backward; tells its meter when the graph that holds it is freed."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, tensor: Tensor, meter: SavedTensorMeter) -> None:
        self.tensor, self.meter = tensor, meter
        storage = tensor.untyped_storage()
        self.key = storage.data_ptr()
        meter.hold(self.key, storage.nbytes())

    def __del__(self) -> None:
        self.meter.release(self.key)


class SavedTensorMeter:
    """Context manager: ``peak`` bytes of tensors saved for backward by graphs built inside it, alive at once.

    Counts distinct storages (a tensor saved by many operations, or a view of the training images, counts
    once), so this measures what the autograd graphs hold on to, independently of the allocator.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._refs: dict[int, tuple[int, int]] = {}
        self._hooks: Any = None

    def hold(self, key: int, nbytes: int) -> None:
        size, count = self._refs.get(key, (nbytes, 0))
        if count == 0:
            self.live += size
            self.peak = max(self.peak, self.live)
        self._refs[key] = (size, count + 1)

    def release(self, key: int) -> None:
        size, count = self._refs[key]
        if count == 1:
            del self._refs[key]
            self.live -= size
        else:
            self._refs[key] = (size, count - 1)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: _Held(t, self), lambda h: h.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._hooks.__exit__(kind, error, tb)
