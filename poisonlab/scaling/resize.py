"""One interface over the resize functions real pipelines call (OpenCV, Pillow, PyTorch, optionally TensorFlow).

Image-scaling attacks (Xiao et al. 2019; Quiring et al., USENIX Security 2020, "Adversarial Preprocessing")
depend on exactly which library and algorithm a pipeline uses, so every adapter calls the library itself.

Images are numpy arrays shaped (H, W) or (H, W, C) on the 0-255 scale. Float input goes through the
library's floating-point path and comes back float64 (this is what the operator recovery reads); uint8
input goes through the library's 8-bit path where it has one and comes back uint8, as a pipeline sees it.
Sizes are (height, width).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from poisonlab.core import PoisonlabError
from poisonlab.registry import Registry

_OPENCV = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
           "lanczos4": cv2.INTER_LANCZOS4, "area": cv2.INTER_AREA}
_PILLOW = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}
_TORCH = ("nearest", "bilinear", "bicubic", "area")
_TENSORFLOW = ("nearest", "bilinear", "bicubic", "area", "lanczos3")


def tensorflow_available() -> bool:
    """Whether the optional ``tensorflow`` extra is installed (checked without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _opencv(img: np.ndarray, size: tuple[int, int], algorithm: str) -> np.ndarray:
    h, w = size
    flag = _OPENCV[algorithm]
    src = img if img.dtype == np.uint8 else img.astype(np.float64, copy=False)
    if src.ndim == 3 and src.shape[2] > 4:
        return np.stack([cv2.resize(src[..., c], (w, h), interpolation=flag) for c in range(src.shape[2])], axis=-1)
    out = cv2.resize(src, (w, h), interpolation=flag)
    return out.reshape(h, w, *img.shape[2:])


def _pillow(img: np.ndarray, size: tuple[int, int], algorithm: str) -> np.ndarray:
    h, w = size
    flag = _PILLOW[algorithm]
    if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] in (1, 3)):
        if img.ndim == 3 and img.shape[2] == 1:
            return np.asarray(Image.fromarray(img[..., 0]).resize((w, h), flag))[..., None]
        return np.asarray(Image.fromarray(img).resize((w, h), flag))
    planes = img[..., None] if img.ndim == 2 else img
    out = np.stack([np.asarray(Image.fromarray(planes[..., c].astype(np.float32), mode="F").resize((w, h), flag),
                               dtype=np.float64) for c in range(planes.shape[2])], axis=-1)
    out = out[..., 0] if img.ndim == 2 else out
    return _to_uint8(out) if img.dtype == np.uint8 else out


def _torch(img: np.ndarray, size: tuple[int, int], algorithm: str, antialias: bool) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float64))
    x = x[None, None] if img.ndim == 2 else x.permute(2, 0, 1)[None]
    kwargs = {"align_corners": False} if algorithm in ("bilinear", "bicubic") else {}
    y = F.interpolate(x, size=size, mode=algorithm, antialias=antialias, **kwargs)[0]
    out = (y[0] if img.ndim == 2 else y.permute(1, 2, 0)).numpy()
    return _to_uint8(out) if img.dtype == np.uint8 else out


def _tensorflow(img: np.ndarray, size: tuple[int, int], algorithm: str, antialias: bool) -> np.ndarray:
    import tensorflow as tf

    x = img[..., None] if img.ndim == 2 else img
    y = tf.image.resize(tf.constant(x, dtype=tf.float64), size, method=algorithm, antialias=antialias).numpy()
    out = y[..., 0] if img.ndim == 2 else y
    return _to_uint8(out) if img.dtype == np.uint8 else out.astype(np.float64)


@dataclass(frozen=True)
class Resizer:
    """A library's resize with one algorithm; call it as ``resizer(image, (height, width))``."""

    library: str
    algorithm: str
    antialias: bool = False

    @property
    def name(self) -> str:
        return f"{self.library}-{self.algorithm}{'-aa' if self.antialias else ''}"

    def available(self) -> bool:
        return self.library != "tensorflow" or tensorflow_available()

    def __call__(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
            raise PoisonlabError(f"image to resize: expected (H, W) or (H, W, C), got shape {image.shape}")
        if min(size) < 1:
            raise PoisonlabError(f"resize size {size}: expected positive (height, width)")
        if self.library == "opencv":
            return _opencv(image, size, self.algorithm)
        if self.library == "pillow":
            return _pillow(image, size, self.algorithm)
        if self.library == "torch":
            return _torch(image, size, self.algorithm, self.antialias)
        if not tensorflow_available():
            raise PoisonlabError(f"resizer {self.name}: needs the optional extra (pip install 'poisonlab[tensorflow]')")
        return _tensorflow(image, size, self.algorithm, self.antialias)


RESIZERS: Registry[Resizer] = Registry("resizer")
for _alg in _OPENCV:
    RESIZERS.register(f"opencv-{_alg}", f"cv2.resize INTER_{_alg.upper()}")(Resizer("opencv", _alg))
for _alg in _PILLOW:
    RESIZERS.register(f"pillow-{_alg}", f"PIL.Image.resize {_alg.upper()} (Pillow filters always antialias)")(
        Resizer("pillow", _alg))
for _alg in _TORCH:
    RESIZERS.register(f"torch-{_alg}", f"torch.nn.functional.interpolate mode={_alg}")(Resizer("torch", _alg))
for _alg in ("bilinear", "bicubic"):
    RESIZERS.register(f"torch-{_alg}-aa", f"torch.nn.functional.interpolate mode={_alg}, antialias=True")(
        Resizer("torch", _alg, antialias=True))
for _alg in _TENSORFLOW:
    RESIZERS.register(f"tensorflow-{_alg}", f"tf.image.resize method={_alg} (optional extra)")(
        Resizer("tensorflow", _alg))
for _alg in ("bilinear", "bicubic"):
    RESIZERS.register(f"tensorflow-{_alg}-aa", f"tf.image.resize method={_alg}, antialias=True (optional extra)")(
        Resizer("tensorflow", _alg, antialias=True))


def get_resizer(library: str, algorithm: str) -> Resizer:
    """The resizer for a library and algorithm name, e.g. ``("opencv", "linear")`` or ``("torch", "bilinear-aa")``."""
    return RESIZERS.get(f"{library}-{algorithm}")


def parse_size(spec: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` (e.g. ``"64x48"``) -> (height, width)."""
    parts = spec.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or min(int(p) for p in parts) < 1:
        raise PoisonlabError(f"size {spec!r}: expected WIDTHxHEIGHT with positive integers, e.g. 64x64")
    return int(parts[1]), int(parts[0])
