"""Peak memory held by autograd graphs, to show that back-gradient descent stays flat in T while unrolling grows."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import Tensor


class _Held:
    """A tensor saved for backward; tells its meter when the graph that holds it is freed."""

    __slots__ = ("meter", "nbytes", "tensor")

    def __init__(self, tensor: Tensor, meter: SavedTensorMeter) -> None:
        self.tensor, self.meter, self.nbytes = tensor, meter, tensor.numel() * tensor.element_size()
        meter.live += self.nbytes
        meter.peak = max(meter.peak, meter.live)

    def __del__(self) -> None:
        self.meter.live -= self.nbytes


class SavedTensorMeter:
    """Context manager: ``peak`` bytes of tensors saved for backward by graphs built inside it, alive at once.

    Each save is counted (a tensor saved by two operations counts twice), so this measures what the
    autograd graphs hold on to, independently of the allocator and of the process's other memory.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._hooks: Any = None

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: _Held(t, self), lambda h: h.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._hooks.__exit__(kind, error, tb)
