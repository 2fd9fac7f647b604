"""Benign re-encodings of an image file, the changes a host or CDN makes that keep what the image shows.

Each is a function of the original file's bytes and a seeded generator that returns new bytes: JPEG at
quality 60-95 and PNG written by Pillow or OpenCV, PNG <-> JPEG, a resize by up to 10% either way, and
metadata stripped without touching the pixels. These are what make exact hashes reject 5-15% of
benign images on LAION and DataComp; verification must accept every one of them.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

Reencode = Callable[[bytes, np.random.Generator], bytes]

JPEG_QUALITY = (60, 95)
"""Range of JPEG qualities a benign host re-encodes at (inclusive)."""
RESIZE = 0.10
"""Largest relative change of a benign resize, either way."""
_JPEG_KEEP = {0xC0, 0xC1, 0xC2, 0xC4, 0xDB, 0xDD, 0xE0}  # frame, Huffman and quantisation tables, restart, JFIF


def pixels(data: bytes) -> np.ndarray:
    """The uint8 pixels (H, W) or (H, W, 3) of an encoded image."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L" if im.mode in ("1", "L", "LA", "P") else "RGB"))


def pillow_bytes(arr: np.ndarray, fmt: str, **options: object) -> bytes:
    """``arr`` encoded by Pillow as ``fmt`` (PNG, JPEG) with ``options``."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **options)
    return buf.getvalue()


def opencv_bytes(arr: np.ndarray, ext: str, params: list[int]) -> bytes:
    """``arr`` encoded by OpenCV as ``ext`` ('.png', '.jpg') with ``params``."""
    bgr = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {arr.shape} image as {ext}")
    return bytes(buf.tobytes())


def is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def _quality(rng: np.random.Generator) -> int:
    return int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))


def jpeg_pillow(data: bytes, rng: np.random.Generator) -> bytes:
    return pillow_bytes(pixels(data), "JPEG", quality=_quality(rng))


def jpeg_opencv(data: bytes, rng: np.random.Generator) -> bytes:
    return opencv_bytes(pixels(data), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, _quality(rng)])


def png_pillow(data: bytes, rng: np.random.Generator) -> bytes:
    return pillow_bytes(pixels(data), "PNG", compress_level=int(rng.integers(1, 10)))


def png_opencv(data: bytes, rng: np.random.Generator) -> bytes:
    return opencv_bytes(pixels(data), ".png", [cv2.IMWRITE_PNG_COMPRESSION, int(rng.integers(0, 10))])


def swap_format(data: bytes, rng: np.random.Generator) -> bytes:
    """PNG -> JPEG (a quality in range) or JPEG -> PNG."""
    arr = pixels(data)
    return pillow_bytes(arr, "PNG") if is_jpeg(data) else pillow_bytes(arr, "JPEG", quality=_quality(rng))


def resize(data: bytes, rng: np.random.Generator) -> bytes:
    """Scaled by a factor in [0.9, 1.1] by Pillow (Lanczos) or OpenCV (area / linear), kept in its format."""
    arr = pixels(data)
    factor = 1.0 + float(rng.uniform(-RESIZE, RESIZE))
    h, w = arr.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if rng.random() < 0.5:
        out = np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.LANCZOS))
    else:
        out = cv2.resize(arr, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return pillow_bytes(out, "JPEG", quality=_quality(rng)) if is_jpeg(data) else pillow_bytes(out, "PNG")


def strip_metadata(data: bytes, rng: np.random.Generator) -> bytes:
    """The same pixels without text, EXIF or comments: a JPEG's APPn/COM segments dropped losslessly, a PNG re-saved."""
    if not is_jpeg(data):
        return pillow_bytes(pixels(data), "PNG")
    out, i = bytearray(data[:2]), 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            return bytes(out + data[i:])
        if marker in _JPEG_KEEP or not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            out += data[i : i + 2 + length]
        i += 2 + length
    raise ValueError("not a baseline JPEG stream (no start-of-scan marker)")


REENCODES: dict[str, Reencode] = {
    "jpeg-pillow": jpeg_pillow, "jpeg-opencv": jpeg_opencv, "png-pillow": png_pillow, "png-opencv": png_opencv,
    "swap-format": swap_format, "resize": resize, "strip-metadata": strip_metadata,
}
"""Every benign re-encoding by name."""
