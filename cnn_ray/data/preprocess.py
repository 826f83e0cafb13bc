"""Deterministic batch preprocessing: eval resize + centre crop, and normalisation. No Ray.

:func:`resize_center_crop` runs on ``(N, H, W, C) uint8`` numpy batches in the data pipeline;
:func:`normalize_batch` runs on the training device, after the uint8 batch arrived there.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["normalize_batch", "resize_center_crop"]


def resize_center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """Eval preprocessing: resize the shorter side to ``size`` and centre-crop ``size`` x ``size``.

    Bilinear with antialiasing (``F.interpolate`` on uint8 channels-last, as torchvision's
    ``Resize`` + ``CenterCrop``).

    Args:
        images: ``(N, H, W, C) uint8``.
        size: output side in pixels (``>= 1``).

    Returns:
        ``(N, size, size, C) uint8``; ``images`` itself (no copy) when already ``size`` x ``size``.

    Raises:
        ValueError: wrong rank/dtype or ``size < 1``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, C) uint8, got {images.shape} {images.dtype}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    n, h, w, _ = images.shape
    if h == size and w == size:
        return images
    if h <= w:
        nh, nw = size, max(size, int(size * w / h))
    else:
        nh, nw = max(size, int(size * h / w)), size
    if (nh, nw) != (h, w) and n > 0:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        resized = x.permute(0, 2, 3, 1).numpy()
    else:
        resized = images.reshape(n, nh, nw, images.shape[3])
    top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
    return np.ascontiguousarray(resized[:, top : top + size, left : left + size])


def normalize_batch(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` on the training device, NHWC uint8 in, NCHW float out.

    Call it after the batch reached the device so uint8 (4x smaller than float) crosses the object
    store and PCIe. The NCHW permute of contiguous NHWC memory already *is* ``channels_last``, so
    no layout copy is made; the arithmetic runs in float32 and is cast to ``dtype`` last.

    Args:
        images: ``(N, H, W, C) uint8`` tensor on any device (a numpy array is accepted too).
        mean, std: per-channel statistics of ``x / 255`` (length C, or 1 to broadcast).
        dtype: output dtype, e.g. ``torch.float32`` or ``torch.bfloat16``.
        channels_last: return ``torch.channels_last`` memory format; else contiguous NCHW.

    Returns:
        ``(N, C, H, W)`` tensor of ``dtype`` on ``images.device``.

    Raises:
        ValueError: wrong rank/dtype, or mean/std length not C (or 1), or a std <= 0.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be (N, H, W, C) uint8, got {tuple(images.shape)} {images.dtype}"
        )
    n, h, w, c = images.shape
    scale, shift = _row_constants(tuple(np.ravel(mean).tolist()), tuple(np.ravel(std).tolist()),
                                  c, w, images.device)
    x = images.contiguous().view(n * h, w * c).to(torch.float32)
    x.mul_(scale).sub_(shift)
    if dtype != torch.float32:
        x = x.to(dtype)
    x = x.view(n, h, w, c).permute(0, 3, 1, 2)  # NCHW view of NHWC memory = channels_last
    return x if channels_last else x.contiguous()


@functools.lru_cache(maxsize=32)
def _row_constants(mean: tuple, std: tuple, c: int, w: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``1 / (255 std)`` and ``mean / std`` tiled over a (W*C) row, built once per
    (statistics, width, device) and kept there: no host-to-device copy per batch.

    Work on (N*H, W*C) rows with the per-channel constants tiled W times: a broadcast over a
    long contiguous row vectorises, one over the trailing C=3 axis of NHWC does not (~6x).

    Raises:
        ValueError: mean/std length not C (or 1), or a std <= 0.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32)
    std_t = torch.tensor(std, dtype=torch.float32)
    if mean_t.numel() not in (1, c) or std_t.numel() not in (1, c):
        raise ValueError(f"mean/std need 1 or {c} values, got {mean_t.numel()} and {std_t.numel()}")
    if bool((std_t <= 0).any()):
        raise ValueError(f"std must be > 0, got {std_t.tolist()}")
    scale = (1.0 / (255.0 * std_t)).expand(c).repeat(w).to(device)
    shift = (mean_t / std_t).expand(c).repeat(w).to(device)
    return scale, shift
