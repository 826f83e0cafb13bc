"""Decode encoded images (JPEG, PNG, ...) into fixed-size HWC ``uint8`` arrays. No Ray here.

:func:`decode_image` turns one file's bytes into a ``(size, size, C)`` array (a bad one raises
:class:`BadInputError`); :func:`resize_array` brings an already-decoded ``(H, W, C)`` array (any
``C``) to the same geometry. The prepare step and the raw-data path call them per row
(:func:`cnn_ray.data.decode_tasks.decode_block`) and apply the bad-input policy.

Geometry (the torchvision ``Resize(size)`` + ``CenterCrop(size)`` recipe, done in one Pillow call):
the shorter side is scaled to ``size`` with antialiased bilinear resampling and the centre
``size x size`` square is kept. An image already ``size x size`` is not resampled.

Modes: everything becomes ``RGB`` (``channels=3``), ``L`` (``channels=1``) or ``RGBA``
(``channels=4``):

* ``L``/``1`` are replicated to RGB; ``P`` goes through its palette; ``CMYK``/``YCbCr``/``LAB``
  are colour-converted by Pillow.
* Alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) is **composited on black** for
  ``channels`` 1 and 3, i.e. colour is multiplied by alpha: a fully transparent pixel becomes
  black whatever junk colour it stores, so the result does not depend on how the encoder filled
  transparent areas.
* High bit depth (``I;16*``, ``I``, ``F``) is scaled to 8 bits, not clipped: 16-bit data maps
  ``0..65535`` to ``0..255`` (``round(v / 257)``); 32-bit integer or float data outside the
  16-bit / ``[0, 1]`` range is min-max scaled per image.
* EXIF orientation is applied (phone photos come out upright).

Big files: JPEGs are decoded at a reduced scale with :meth:`PIL.Image.Image.draft` (1/2, 1/4 or
1/8, never below ``size``), so a 6000x4000 photo costs about as much as a 750x500 one. Images
above Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 Mpixel by
default; raise it to accept bigger files) are rejected with :class:`BadInputError`.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnn_ray.data.errors import DataError


class BadInputError(DataError):
    """An input image or record cannot be used. ``path`` names it; ``reason`` says what is wrong."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path or '<bytes>'}: {reason}")

    def __reduce__(self):  # keep (path, reason) across pickling (Ray task errors)
        return (type(self), (self.path, self.reason))


_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_WIDE_MODES = ("I", "F") + tuple(m for m in Image.MODES if m.startswith("I;16"))


def decode_image(data: bytes, *, size: int | None, channels: int = 3, path: str = "") -> np.ndarray:
    """Decode one encoded image to ``(size, size, channels)`` ``uint8`` (HWC).

    Args:
        data: the file's bytes (any format Pillow reads).
        size: output side in pixels; ``None`` keeps the native ``(H, W)``.
        channels: 1 (``L``), 3 (``RGB``) or 4 (``RGBA``).
        path: the file's name, used only in error messages.

    Raises:
        BadInputError: zero bytes, not an image, truncated/corrupt data, over the pixel limit,
            or a mode that cannot be converted. The message names ``path`` and the reason.
        ValueError: ``channels`` is not 1, 3 or 4.
    """
    if channels not in (1, 3, 4):
        raise ValueError(f"encoded images decode to 1 (L), 3 (RGB) or 4 (RGBA) channels, got {channels}")
    if not data:
        raise BadInputError(path, "empty file (0 bytes)")
    img = _open_and_load(data, size, path)
    try:
        img = _to_mode(img, channels)
    except (ValueError, OSError) as exc:
        raise BadInputError(path, f"cannot convert image mode {img.mode!r}: {exc}") from None
    if size is not None:
        img = _resize_center_crop(img, size)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def _open_and_load(data: bytes, size: int | None, path: str) -> Image.Image:
    """Open, pick a JPEG draft scale, fully decode (so truncation is caught), apply EXIF rotation."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: treat both as bad.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if size is not None and img.format == "JPEG":
                img.draft(img.mode, (size, size))  # decode at 1/2..1/8 scale, never below size
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadInputError(path, f"image too large (decompression-bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise BadInputError(path, f"not an image: unrecognised format ({len(data)} bytes, "
                                  f"starts with {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        msg = str(exc) or type(exc).__name__
        kind = "truncated image" if "truncated" in msg.lower() else "corrupt image data"
        raise BadInputError(path, f"{kind}: {msg}") from None
    if img.format in ("JPEG", "PNG", "WEBP") and "exif" not in img.info:
        return img  # no EXIF block: skip the (slow-ish) orientation lookup
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block should not cost the image
        return img


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to ``L``, ``RGB`` or ``RGBA`` (see the module docstring)."""
    target = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    if img.mode == target:
        return img
    if img.mode in _WIDE_MODES:
        img = Image.fromarray(_wide_to_uint8(np.asarray(img)), "L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    if img.mode in _ALPHA_MODES and target != "RGBA":
        img = _composite_on_black(img)
    return img if img.mode == target else img.convert(target)


def _wide_to_uint8(a: np.ndarray) -> np.ndarray:
    """16/32-bit or float pixels -> uint8, scaled (not clipped)."""
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0 and hi <= 1.0 and a.dtype.kind == "f":
        scale_lo, scale_hi = 0.0, 1.0
    elif lo >= 0 and hi <= 65535:
        scale_lo, scale_hi = 0.0, 65535.0
    else:
        scale_lo, scale_hi = lo, max(hi, lo + 1e-12)
    return np.rint((a - scale_lo) * (255.0 / (scale_hi - scale_lo))).clip(0, 255).astype(np.uint8)


def _composite_on_black(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")


def _center_box(w: int, h: int) -> tuple[float, float, float, float]:
    s = min(w, h)
    left, top = (w - s) / 2.0, (h - s) / 2.0
    return (left, top, left + s, top + s)


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side -> size, centre crop size x size: one resample of the centre square."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    # reducing_gap: Pillow first box-reduces by an integer factor (fast, exact) when shrinking a lot.
    return img.resize((size, size), Image.Resampling.BILINEAR, box=_center_box(w, h), reducing_gap=3.0)


def resize_array(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize a decoded ``(H, W, C)`` ``uint8`` array (any ``C``) like :func:`decode_image` does.

    Returns ``(size, size, C)`` ``uint8``; a ``size x size`` input is returned unchanged.
    """
    h, w, c = arr.shape
    if (h, w) == (size, size):
        return arr
    box = _center_box(w, h)
    if c in (1, 3):
        src = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if c == 1 else arr), "L" if c == 1 else "RGB")
        out = src.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
        return np.asarray(out).reshape(size, size, c)
    # Other channel counts (and 4, which Pillow would treat as premultiplied RGBA): plane by plane.
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(arr[:, :, k]), "L").resize(
            (size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0))
        for k in range(c)
    ]
    return np.stack(planes, axis=-1)

