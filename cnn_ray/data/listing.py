"""Listing primitives for :mod:`cnn_ray.data.sources`: which files are images or Parquet files,
a digest of a listing, and what a Parquet ``image`` column holds. Names and ``stat`` only, no
pixels; no Ray.
"""

from __future__ import annotations

import glob
import hashlib
import os
from typing import Any, Literal, Optional, Sequence

import numpy as np
import pyarrow as pa

__all__ = [
    "IMAGE_EXTENSIONS",
    "array_storage",
    "digest",
    "has_image",
    "image_encoding",
    "is_glob",
    "is_image",
    "list_images",
    "parquet_files",
]

# Encoded images, and .npy/.npz array tiles (multi-band data: cnn_ray.data.bands).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".npy", ".npz"})


def is_glob(path: str) -> bool:
    """Whether ``path`` holds a glob wildcard (``*``, ``?`` or ``[``)."""
    return any(ch in path for ch in "*?[")


def is_image(name: str) -> bool:
    """A file name with an image extension (:data:`IMAGE_EXTENSIONS`, any case), not hidden."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def has_image(folder: str) -> bool:
    """Whether ``folder`` holds an image file at any depth (hidden folders skipped)."""
    for _, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(is_image(f) for f in files):
            return True
    return False


def digest(items: Sequence[Any]) -> str:
    """SHA-256 hex digest of the items' ``repr``, one per line: a listing's cache key."""
    h = hashlib.sha256()
    for item in items:
        h.update(repr(item).encode())
        h.update(b"\n")
    return h.hexdigest()


def list_images(folder: str) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of image files under ``folder``, recursively, sorted by path."""
    out = []
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if is_image(name):
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue  # vanished or a dangling link
                out.append((p, st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def parquet_files(path: str) -> list[str]:
    """The ``.parquet`` files of a file, a glob, or a directory (recursively; names starting
    with ``.`` or ``_`` skipped), sorted; ``[]`` when there are none or ``path`` does not exist."""
    if is_glob(path):
        files = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
    elif os.path.isfile(path):
        files = [path]
    elif os.path.isdir(path):
        files = []
        for dirpath, dirs, names in os.walk(path, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
            files += [os.path.join(dirpath, n) for n in names
                      if n.lower().endswith(".parquet") and not n.startswith((".", "_"))]
    else:
        files = []
    return sorted(f for f in files if f.lower().endswith(".parquet"))


def array_storage(t: pa.DataType) -> tuple[pa.DataType, Optional[tuple[int, ...]]]:
    """Unwrap an extension type (e.g. Ray's tensor type), returning (storage type, shape or None)."""
    if isinstance(t, pa.ExtensionType):
        shape = getattr(t, "shape", None)
        return t.storage_type, tuple(shape) if shape else None
    return t, None


ARRAY_VALUE_TYPES = ("uint8", "uint16", "float32")  # raw-array pixel types (multi-band tiles)


def image_encoding(t: pa.DataType) -> Optional[Literal["bytes", "array"]]:
    """``bytes`` (encoded files), ``array`` (raw pixels: fixed-size binary of uint8, or a
    (fixed-size) list of uint8 / uint16 / float32) or ``None`` (unsupported type)."""
    t, _ = array_storage(t)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_fixed_size_binary(t):
        return "array"
    if (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)) \
            and _numpy_name(t.value_type) in ARRAY_VALUE_TYPES:
        return "array"
    return None


def array_dtype(t: pa.DataType) -> str:
    """The numpy dtype name of a raw-array image column's pixels (``uint8`` for fixed-size
    binary)."""
    t, _ = array_storage(t)
    return "uint8" if pa.types.is_fixed_size_binary(t) else _numpy_name(t.value_type)


def _numpy_name(t: pa.DataType) -> str:
    """numpy's name of an Arrow value type (``float`` -> ``float32``); "" when it has none."""
    try:
        return np.dtype(t.to_pandas_dtype()).name
    except (NotImplementedError, TypeError):
        return ""
