"""Reading one image file safely: regular files only, size checked from the header, any bit depth to [0, 1].

Pillow's own 8-bit conversion clips: a 16-bit PNG read with ``convert("L")`` comes out 99% white and a
float TIFF all black. Here 16-bit images are divided by their full scale, 32-bit integer images (whose
white level no header states) are refused, float images must already lie in [0, 1], and every other
mode (palette, 1-bit, alpha, CMYK, YCbCr, LAB, HSV) goes through Pillow's conversion; alpha is dropped.
A file is opened only when it is a regular file (a FIFO would block forever) and decoded only when its
header declares at most ``PIXEL_BUDGET`` pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from poisonlab.core import PoisonlabError, check_regular

PIXEL_BUDGET = 40_000_000
"""Most pixels one image may declare (a 6,000 x 6,000 photo is 36 M): a decompression bomb stops at the header."""

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
"""Pillow modes of single-channel images (with or without alpha)."""

_SAMPLE_FORMAT, _BITS_PER_SAMPLE = 339, 258  # TIFF tags: 1 unsigned, 2 signed, 3 float; bits per channel


class ImageError(PoisonlabError):
    """An image file that cannot be read as stated; the message names the file and what was expected."""


def open_image(path: Path) -> Image.Image:
    """``path`` opened lazily by Pillow, refused in one line when not a regular file, not an image or over the
    pixel budget (checked before decoding)."""
    check_regular(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: declares more than {PIXEL_BUDGET:,} pixels; refused before decoding") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None
    w, h = im.size
    if w * h > PIXEL_BUDGET or w < 1 or h < 1:
        im.close()
        raise ImageError(f"{path}: declares {w}x{h} pixels; expected 1 to {PIXEL_BUDGET:,} pixels (refused before "
                         "decoding)")
    return im


def image_header(path: Path) -> tuple[int, int, bool]:
    """(width, height, grayscale) from the file's header, without decoding the pixels."""
    im = open_image(path)
    with im:
        return im.size[0], im.size[1], im.mode in GRAY_MODES


def _full_scale(im: Image.Image, values: np.ndarray, path: Path) -> float:
    """The value that means white in an integer image of more than 8 bits (16-bit; 32-bit is ambiguous)."""
    if values.size and values.min() < 0:
        raise ImageError(f"{path}: signed integer image with negative values (min {values.min()}); expected >= 0")
    if im.mode == "I;16S":
        return 32767.0
    if im.mode.startswith("I;16"):
        return 65535.0
    tags = getattr(im, "tag_v2", {})
    bits = int(np.ravel(tags[_BITS_PER_SAMPLE])[0]) if _BITS_PER_SAMPLE in tags else 16
    if bits > 16:
        raise ImageError(f"{path}: {bits}-bit integer image, whose white level is ambiguous; expected 8- or 16-bit "
                         "integers, or float in [0, 1]")
    signed = _SAMPLE_FORMAT in tags and int(np.ravel(tags[_SAMPLE_FORMAT])[0]) == 2
    return float(2 ** (bits - 1) - 1 if signed else 2**bits - 1)


def decode(path: Path, mode: str | None = None) -> np.ndarray:
    """One image file as float32 (H, W) or (H, W, 3) in [0, 1]; ``mode`` 'L' or 'RGB' forces the channels.

    Raises ImageError naming the file: not a regular file, unreadable, too many pixels, a float image
    outside [0, 1] or with NaN, a negative integer image.
    """
    im = open_image(path)
    try:
        with im:
            gray = im.mode in GRAY_MODES
            mode = mode or ("L" if gray else "RGB")
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                values = np.asarray(im)
                if im.mode == "F":
                    finite = values[np.isfinite(values)]
                    if finite.size < values.size or values.min() < 0 or values.max() > 1:
                        held = f"values in [{finite.min():g}, {finite.max():g}]" if finite.size else "no finite value"
                        nan = f", {values.size - finite.size} not finite" if finite.size < values.size else ""
                        raise ImageError(f"{path}: float image with {held}{nan}; expected values in [0, 1], finite")
                    out = values.astype(np.float32)
                else:
                    out = (values.astype(np.float64) / _full_scale(im, values, path)).astype(np.float32)
                return np.repeat(out[..., None], 3, axis=2) if mode == "RGB" else out
            return np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None


def read_pixels(path: Path, mode: str | None = None) -> np.ndarray:
    """One image file as uint8 (H, W) or (H, W, 3), the 0-255 scale the scaling attacks work in."""
    return np.round(decode(path, mode) * 255.0).astype(np.uint8)


def read_image(path: Path, mode: str | None = None) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1]; ``mode`` 'L' or 'RGB' forces the channels."""
    arr = decode(path, mode)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
