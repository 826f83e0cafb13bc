"""Random-resized crop from stored images larger than the training crop, per batch. No Ray.

Data at resolution (``data.store_size`` > ``data.image_size``): the prepare step stores each
image as a ``store_size`` square (:mod:`cnn_ray.data.decode`), and training takes from it a
box of random area and aspect ratio, resized to ``image_size``, drawn per image and applied to
the whole batch. Three steps, shared by every data path:

* :func:`resized_crop_boxes` -- the boxes, ``(N, 4) int64`` ``(top, left, height, width)`` in
  stored pixels, from the counter-based draws (:func:`cnn_ray.data.draws.row_uniforms`);
* :func:`resized_crop` -- the host path (memory-cache worker threads, Ray Data tasks): per
  image, the box's uint8 view resized with torch's antialiased bilinear kernel on
  channels-last uint8 (what ``torchvision.transforms.v2.functional.resized_crop`` does to a
  uint8 tensor), into one output batch;
* :func:`resized_crop_torch` -- the device path (the GPU-resident cache): the batch's rows
  gathered on the device and resampled in one ``torchvision.ops.roi_align`` call
  (``aligned=True``, adaptive sampling: an average of bilinear samples per output pixel, so a
  box larger than the output is low-pass filtered much as the antialiased resize does; a
  smaller one is plain bilinear, equal to the host path's).

Technique card -- **random_resized_crop at resolution**: crop a box of ``scale`` of the stored
area (uniform) and aspect ratio ``ratio`` (log-uniform), resize it to the training size. The
values that work: ImageNet ``scale (0.08, 1)``, ``ratio (3/4, 4/3)`` (torchvision's defaults);
``(0.25-0.35, 1)`` for small images or short runs. Store larger than you train (torchvision's
recipe trains at 176 and evaluates 232 -> 224; FFCV stores 256-512 px and crops per batch).
Sources: Szegedy et al. 2015 (Inception); torchvision ``references/classification/presets.py``
(``ClassificationPresetTrain``) and ``RandomResizedCrop.get_params`` (the box algorithm here);
FFCV ``RandomResizedCropRGBImageDecoder`` (crop at decode time, per batch).

Boxes follow torchvision's ``get_params`` exactly, vectorised: up to :data:`ATTEMPTS` (10)
(area, ratio) draws per image, the first whose rounded box fits is taken, at a uniform integer
position; when none fits, a centred box with the ratio clamped into ``ratio``. Attempt 0 reads
the draw columns ``rrc_scale`` / ``rrc_ratio``, attempt ``k`` ``rrc_scale_k`` / ``rrc_ratio_k``,
the position ``rrc_y`` / ``rrc_x``. With ``random_resized_crop`` disabled the box is the whole
stored image (a plain resize to the training size).
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from cnn_ray.config import RandomResizedCrop
from cnn_ray.data.draws import DRAW_COLUMNS, uniform

__all__ = ["ATTEMPTS", "resize_batch", "resized_crop", "resized_crop_boxes", "resized_crop_torch"]

ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params
# draw columns of attempts 0..9 (cnn_ray.data.draws)
_SCALE_COLS = [DRAW_COLUMNS["rrc_scale"]] + [DRAW_COLUMNS[f"rrc_scale_{k}"]
                                             for k in range(1, ATTEMPTS)]
_RATIO_COLS = [DRAW_COLUMNS["rrc_ratio"]] + [DRAW_COLUMNS[f"rrc_ratio_{k}"]
                                             for k in range(1, ATTEMPTS)]

# The source batch is only read: a read-only array (a view of an Arrow buffer in a Ray Data
# task) is handed to torch without a copy, and torch's one-time note about it is not for users.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                        category=UserWarning, module=__name__)


def resized_crop_boxes(u: np.ndarray, cfg: Optional[RandomResizedCrop], h: int,
                       w: int) -> np.ndarray:
    """Per-image crop boxes of :func:`resized_crop`, torchvision's algorithm on the draws ``u``.

    Args:
        u: ``(N, N_DRAWS) float32`` draws in ``[0, 1)`` (:func:`~cnn_ray.data.draws.row_uniforms`).
        cfg: ``scale`` (share of ``h * w``, uniform) and ``ratio`` (width / height,
            log-uniform); None or ``enabled: false``: the whole image.
        h, w: the stored image's height and width in pixels.

    Returns:
        ``(N, 4) int64`` ``(top, left, height, width)``, inside the image: ``0 <= top``,
        ``top + height <= h``, ``1 <= height`` (same for ``left``/``width``).
    """
    n = u.shape[0]
    boxes = np.zeros((n, 4), dtype=np.int64)
    boxes[:, 2], boxes[:, 3] = h, w
    if cfg is None or not cfg.enabled or n == 0:
        return boxes
    area = uniform(u[:, _SCALE_COLS], *cfg.scale) * (h * w)  # (N, ATTEMPTS) float64
    log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    ratio = np.exp(uniform(u[:, _RATIO_COLS], log_lo, log_hi))
    cw = np.rint(np.sqrt(area * ratio)).astype(np.int64)  # rint: Python's round, half to even
    ch = np.rint(np.sqrt(area / ratio)).astype(np.int64)
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = np.argmax(fits, axis=1)
    found = fits[np.arange(n), first]
    rows = np.arange(n)
    bh, bw = ch[rows, first], cw[rows, first]
    # torchvision's fallback: a centred box, the image's own ratio clamped into cfg.ratio
    in_ratio = w / h
    if in_ratio < min(cfg.ratio):
        fh, fw = int(round(w / min(cfg.ratio))), w
    elif in_ratio > max(cfg.ratio):
        fh, fw = h, int(round(h * max(cfg.ratio)))
    else:
        fh, fw = h, w
    bh, bw = np.where(found, bh, fh), np.where(found, bw, fw)
    y = u[:, DRAW_COLUMNS["rrc_y"]].astype(np.float64)
    x = u[:, DRAW_COLUMNS["rrc_x"]].astype(np.float64)
    boxes[:, 0] = np.where(found, np.floor(y * (h - bh + 1)), (h - bh) // 2)
    boxes[:, 1] = np.where(found, np.floor(x * (w - bw + 1)), (w - bw) // 2)
    boxes[:, 2], boxes[:, 3] = bh, bw
    return boxes


def resized_crop(images: np.ndarray, boxes: np.ndarray, size: int, *,
                 flip: Optional[np.ndarray] = None) -> np.ndarray:
    """Crop ``boxes`` out of ``images`` and resize each to ``size`` x ``size`` (host, uint8),
    mirrored left-right where ``flip``.

    Per image, ``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
    align_corners=False)`` on a channels-last uint8 view of the box (torch's vectorised uint8
    kernel; no float copy of the batch): the result equals
    ``torchvision.transforms.v2.functional.resized_crop(img, top, left, height, width,
    [size, size], antialias=True)`` on the same uint8 image. Runs at the caller's torch
    threads (one in a Ray Data task); torch releases the GIL, so a prefetch thread overlaps it
    with the model step. Measured images/s: ``python -m cnn_ray.data.resized_crop``.

    Args:
        images: ``(N, H, W, C) uint8``, any ``C``; not modified (may be read-only).
        boxes: ``(N, 4)`` integer ``(top, left, height, width)`` inside the images
            (:func:`resized_crop_boxes`).
        size: output side in pixels.
        flip: ``(N,)`` bool, mirror these after the resize (``hflip``, one small torch copy
            per image instead of a second pass over the batch); None: none.

    Returns:
        A new C-contiguous ``(N, size, size, C) uint8`` array.

    Raises:
        ValueError: wrong rank/dtype, a box count other than N, or a box outside the image.
    """
    images = np.asarray(images)
    boxes = np.asarray(boxes, dtype=np.int64)
    _check(images.shape, images.dtype == np.uint8, boxes, size)
    n, c = images.shape[0], images.shape[3]
    out = np.empty((n, size, size, c), dtype=np.uint8)
    if n == 0:
        return out
    mirror = np.zeros(n, bool) if flip is None else np.asarray(flip, bool).reshape(n)
    src = torch.from_numpy(images).permute(0, 3, 1, 2)  # NCHW view of NHWC: channels_last
    dst = torch.from_numpy(out).permute(0, 3, 1, 2)
    for k, ((top, left, bh, bw), f) in enumerate(zip(boxes.tolist(), mirror.tolist())):
        crop = src[k:k + 1, :, top:top + bh, left:left + bw]
        if (bh, bw) != (size, size):
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False)
        dst[k:k + 1] = crop.flip(-1) if f else crop
    return out


def resized_crop_torch(images: torch.Tensor, boxes: torch.Tensor, size: int, *,
                       sel: Optional[torch.Tensor] = None, layout: str = "nhwc") -> torch.Tensor:
    """:func:`resized_crop` on the training device: rows ``sel`` of ``images``, one kernel.

    The rows are gathered, converted to float and resampled by ``torchvision.ops.roi_align``
    (``aligned=True``: box edges on pixel edges, as the host path; ``sampling_ratio=-1``: each
    output pixel averages ``ceil(box / size)``\\ :sup:`2` bilinear samples), then rounded back to
    uint8. Differs from the host path by the filter only (a box smaller than ``size`` is
    upsampled identically; a larger one filtered slightly differently, a few grey levels on
    natural images; ``tests/test_resolution.py`` bounds it). On CUDA this is one kernel for the
    batch instead of one resize per image; on a CPU it is slower than the host path (which
    the CPU uses).

    Args:
        images: ``(M, H, W, C)`` (``layout="nhwc"``) or ``(M, C, H, W)`` (``"nchw"``) uint8
            tensor on any device; not modified.
        boxes: ``(B, 4)`` integer ``(top, left, height, width)`` tensor on the same device.
        size: output side in pixels.
        sel: ``(B,)`` int64 rows of ``images`` (None: all, ``B == M``).

    Returns:
        A new ``(B, size, size, C)`` / ``(B, C, size, size)`` uint8 tensor on the device.

    Raises:
        ValueError: unknown layout, wrong rank/dtype, or a box count other than B.
    """
    from torchvision.ops import roi_align  # torchvision: only the device path needs it

    if layout not in ("nhwc", "nchw") or images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(f"resized_crop_torch: need a 4-D uint8 tensor and layout nhwc or "
                         f"nchw; got {tuple(images.shape)} {images.dtype}, {layout!r}")
    x = images.index_select(0, sel) if sel is not None else images
    if boxes.shape != (x.shape[0], 4):
        raise ValueError(f"resized_crop_torch: boxes must be ({x.shape[0]}, 4), got "
                         f"{tuple(boxes.shape)}")
    planar = (x.permute(0, 3, 1, 2) if layout == "nhwc" else x).float()
    b = boxes.to(torch.float32)
    rois = torch.stack([torch.arange(len(b), device=b.device, dtype=torch.float32),
                        b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], dim=1)
    out = roi_align(planar, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1,
                    aligned=True).round_().clamp_(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else out


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a whole training batch to ``size`` x ``size`` (the worker-side step of progressive
    resizing on the streaming path).

    With ``optim.budget_s`` the epoch count, and so each epoch's side of ``data.progressive``,
    is only known on the workers: the Ray Data tasks then crop at the ramp's end size and the
    worker resizes each batch down to its epoch's side with this before the step (FFCV and
    Composer's ``ProgressiveResizing`` resize the batch the same way; antialiased bilinear, as
    :func:`resized_crop`). ``torch.nn.functional.interpolate(mode="bilinear",
    antialias=True, align_corners=False)``: on a CPU tensor torch's uint8 kernel on a
    channels-last view, elsewhere in float32, rounded back to uint8.

    Args:
        images: ``(N, H, W, C) uint8`` tensor (NHWC, as batches leave the pipeline), any
            device; not modified.
        size: output side in pixels.

    Returns:
        ``(N, size, size, C) uint8`` on the same device, contiguous; ``images`` itself when
        it is already ``size`` x ``size``.

    Raises:
        ValueError: not a 4-D uint8 tensor, or ``size`` < 1.
    """
    if images.ndim != 4 or images.dtype != torch.uint8 or size < 1:
        raise ValueError(f"resize_batch: need (N, H, W, C) uint8 and size >= 1, got "
                         f"{tuple(images.shape)} {images.dtype}, size {size}")
    if tuple(images.shape[1:3]) == (size, size):
        return images
    planar = images.permute(0, 3, 1, 2)  # NCHW view of NHWC: channels_last
    if images.device.type != "cpu":
        planar = planar.float()
    out = F.interpolate(planar, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    if out.dtype != torch.uint8:
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1).contiguous()


def _check(shape: tuple, is_uint8: bool, boxes: np.ndarray, size: int) -> None:
    if len(shape) != 4 or not is_uint8:
        raise ValueError(f"images must be (N, H, W, C) uint8, got {tuple(shape)}")
    if size < 1 or boxes.shape != (shape[0], 4):
        raise ValueError(f"need size >= 1 and ({shape[0]}, 4) boxes, got size {size} and "
                         f"boxes {boxes.shape}")
    if len(boxes) and ((boxes[:, :2] < 0).any() or (boxes[:, 2:] < 1).any()
                       or (boxes[:, 0] + boxes[:, 2] > shape[1]).any()
                       or (boxes[:, 1] + boxes[:, 3] > shape[2]).any()):
        raise ValueError(f"boxes must lie inside the {shape[1]}x{shape[2]} images")


def _benchmark(n: int = 256, repeats: int = 7) -> None:
    """``python -m cnn_ray.data.resized_crop``: images/s of the host path (one torch thread,
    as in a Ray Data task) on ``n`` random RGB images at 160 -> 128 and 256 -> 224, with
    torchvision's default boxes (scale (0.08, 1))."""
    import time

    from cnn_ray.data.draws import N_DRAWS, row_uniforms

    torch.set_num_threads(1)
    cfg = RandomResizedCrop(enabled=True, scale=(0.08, 1.0))
    rng = np.random.default_rng(0)
    for stored, size in ((160, 128), (256, 224)):
        x = rng.integers(0, 256, (n, stored, stored, 3), dtype=np.uint8)
        times = []
        for epoch in range(repeats + 1):
            t0 = time.perf_counter()
            boxes = resized_crop_boxes(row_uniforms(0, epoch, np.arange(n), N_DRAWS), cfg,
                                       stored, stored)
            resized_crop(x, boxes, size)
            times.append(time.perf_counter() - t0)
        t = float(np.median(times[1:]))
        print(f"resized_crop {n}x{stored}x{stored}x3 -> {size}: median {t * 1e3:.1f} ms, "
              f"{n / t:.0f} images/s (1 thread)")


if __name__ == "__main__":
    _benchmark()
