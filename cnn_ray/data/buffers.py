"""Per-thread scratch buffers and NHWC <-> NCHW copies for batch augmentation. No Ray.

A fresh multi-megabyte array is a fresh ``mmap``: every page faults on first touch, which on a VM
costs more than the copy itself (~0.5 ms per 1.5 MB). Augmentation intermediates therefore live
in :func:`scratch` buffers; only the batch an augmentation returns is newly allocated.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch

__all__ = ["copy_channels", "scratch", "to_planar_float", "to_uint8_nhwc"]


class _Scratch(threading.local):
    """Per-thread reusable work buffers, grown on demand and never shrunk."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}


_SCRATCH = _Scratch()


def scratch(name: str, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """This thread's buffer ``name`` viewed as ``shape`` / ``dtype`` (contents undefined).

    The view stays valid until the next call with the same ``name`` on the same thread, which
    may reuse or replace the memory: consume it before asking again.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buf = _SCRATCH.buffers.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, 64), dtype=np.uint8)
        _SCRATCH.buffers[name] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def copy_channels(dst: np.ndarray, src: np.ndarray, *, to_planar: bool) -> None:
    """Copy (and cast) between NHWC and NCHW. Few channels: one strided plane copy per channel,
    whose inner loop runs along W instead of over C-element pixels (3x faster for RGB)."""
    c = src.shape[3] if to_planar else src.shape[1]
    if c > 4:
        view = src.transpose(0, 3, 1, 2) if to_planar else src.transpose(0, 2, 3, 1)
        np.copyto(dst, view, casting="unsafe")
        return
    for ch in range(c):
        if to_planar:
            np.copyto(dst[:, ch], src[..., ch], casting="unsafe")
        else:
            np.copyto(dst[..., ch], src[:, ch], casting="unsafe")


def to_planar_float(x: np.ndarray) -> torch.Tensor:
    """``(N, H, W, C) uint8`` -> ``(N, C, H, W) float32`` (a reused buffer; consumed at once)."""
    n, h, w, c = x.shape
    planar = scratch("planar", (n, c, h, w), np.float32)
    copy_channels(planar, x, to_planar=True)
    return torch.from_numpy(planar)


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Round ``(N, C, H, W) float`` into a new C-contiguous ``(N, H, W, C) uint8`` array."""
    n, c, h, w = x.shape
    out = np.empty((n, h, w, c), dtype=np.uint8)
    copy_channels(out, x.round_().clamp_(0, 255).numpy(), to_planar=False)
    return out
