"""Deterministic batch preprocessing: eval resize + centre crop, and normalisation. No Ray.

:func:`resize_center_crop` (and :class:`EvalTransform`, a run's validation sizes) runs on
``(N, H, W, C) uint8`` numpy batches in the data pipeline; :func:`normalize_batch` runs on
the training device, after the uint8 batch arrived there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from cnn_ray.config import TrainConfig

__all__ = ["EvalTransform", "normalize_batch", "resize_center_crop"]


def resize_center_crop(images: np.ndarray, size: int, *,
                       resize: Optional[int] = None) -> np.ndarray:
    """Eval preprocessing: resize the shorter side to ``resize`` (default ``size``) and
    centre-crop ``size`` x ``size``.

    torchvision's ``Resize(resize)`` + ``CenterCrop(size)`` on uint8 tensors (the long side
    becomes ``int(resize * long / short)``, the crop's corner ``round((side - size) / 2)``),
    bilinear with antialiasing (``F.interpolate`` on uint8 channels-last).

    Args:
        images: ``(N, H, W, C) uint8``.
        size: output side in pixels (``>= 1``).
        resize: the shorter side before the crop, ``>= size`` (None: ``size``, so the whole
            shorter side is kept).

    Returns:
        ``(N, size, size, C) uint8``; ``images`` itself (no copy) when already ``size`` x
        ``size`` and ``resize`` is ``size``.

    Raises:
        ValueError: wrong rank/dtype, ``size < 1`` or ``resize < size``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, C) uint8, got {images.shape} {images.dtype}")
    resize = size if resize is None else resize
    if size < 1 or resize < size:
        raise ValueError(f"need 1 <= size <= resize, got size {size}, resize {resize}")
    n, h, w, _ = images.shape
    if h == size and w == size and resize == size:
        return images
    if h <= w:
        nh, nw = resize, max(resize, int(resize * w / h))
    else:
        nh, nw = max(resize, int(resize * h / w)), resize
    if (nh, nw) != (h, w) and n > 0:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        resized = x.permute(0, 2, 3, 1).numpy()
    else:
        resized = images.reshape(n, nh, nw, images.shape[3])
    top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
    return np.ascontiguousarray(resized[:, top : top + size, left : left + size])


@dataclass(frozen=True)
class EvalTransform:
    """A run's validation transform on its stored images, the one that evaluation, prediction
    and export apply (and checkpoints record, ``meta.json`` ``eval_transform``).

    The stored square (side ``stored_size``: ``data.store_size`` or ``data.image_size``) is
    resized to ``resize_size`` and its centre ``image_size`` square kept: torchvision's
    ``Resize(resize_size)`` + ``CenterCrop(image_size)`` (``references/classification/presets.py``
    ``ClassificationPresetEval``: 256 -> 224 classic, 232 -> 224 in the newer recipes), with
    ``image_size`` above the training size for FixRes (Touvron et al. 2019). As the stored
    square is itself the centre of the original, the crop is the original's centre too; the
    only difference from torchvision on the original is a second resample when
    ``stored_size != resize_size``. All sides in pixels.
    """

    stored_size: int
    resize_size: int
    image_size: int

    @classmethod
    def of(cls, cfg: "TrainConfig") -> "EvalTransform":
        """The transform of ``cfg`` (``data.store_size``/``image_size``, ``eval.resize_size``/
        ``image_size``, defaults resolved by :meth:`~cnn_ray.config.TrainConfig.eval_sizes`)."""
        resize, crop = cfg.eval_sizes()
        return cls(stored_size=cfg.data.stored_size, resize_size=resize, image_size=crop)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W, C) uint8`` stored images -> ``(N, image_size, image_size, C) uint8``
        (:func:`resize_center_crop`; the input itself when nothing changes)."""
        return resize_center_crop(images, self.image_size, resize=self.resize_size)

    def to_dict(self) -> dict[str, int]:
        """``{"stored_size", "resize_size", "image_size"}`` (JSON-ready)."""
        return {"stored_size": self.stored_size, "resize_size": self.resize_size,
                "image_size": self.image_size}

    @classmethod
    def from_dict(cls, raw: dict) -> "EvalTransform":
        """Inverse of :meth:`to_dict`. Raises ``KeyError`` naming a missing key."""
        return cls(stored_size=int(raw["stored_size"]), resize_size=int(raw["resize_size"]),
                   image_size=int(raw["image_size"]))


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
