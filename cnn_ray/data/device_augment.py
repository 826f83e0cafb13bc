"""Batch augmentation in torch on the training device (GPU-resident data). No Ray.

The device twin of :func:`cnn_ray.data.augment.augment_batch` for the techniques that are pure
index arithmetic on uint8 -- ``random_crop`` (translate with reflect or zero fill), ``hflip``
(random or the recipe's ``alternating`` mode) and ``cutout`` -- on ``(N, H, W, C)`` or
``(N, C, H, W)`` uint8 tensors that already live on the device. A crop + flip of a whole batch
is two gathers (the batch's shifted rows, then the shifted/mirrored columns), cutout one
``masked_fill_``; no host synchronisation.

Random draws: the per-row parameters (shifts, flip, cutout box) come from the SAME host
functions as the numpy path (:func:`~cnn_ray.data.draws.row_uniforms` over
``(seed, epoch, idx)``, :func:`~cnn_ray.data.geometric.crop_flip_draws`, the cutout formulas of
:func:`~cnn_ray.data.photometric.cutout_`), computed by :func:`augment_params` in numpy and copied
to the device as one small ``(N, 6) int64`` tensor. The pixels then come out bit-identical to
:func:`augment_batch` (integer gathers, no float). :class:`cnn_ray.data.memory.DeviceShard`
does that once per epoch for all its rows, so a training step never waits on the host.

``hflip.mode: alternating`` flips row ``r`` on epoch ``e`` iff
:func:`cnn_ray.recipe.alternating_flip_mask` says so (``seed`` is the augmentation seed).

The idea of augmenting a device-resident data set with a few batched tensor ops comes from
airbench (Keller Jordan, ``KellerJordan/cifar10-airbench``: ``batch_crop``, ``batch_flip_lr``);
the code here is our own (gathers with per-image offsets instead of masked shifts).

Images stored larger than the training size (``data.store_size``, ``out_size`` here): the
random-resized crop to the training size runs on the device first
(:func:`cnn_ray.data.resized_crop.resized_crop_torch`, one ``roi_align`` for the batch; boxes
from the numpy path's :func:`~cnn_ray.data.resized_crop.resized_crop_boxes`, four more int64
columns, :data:`RESIZE_COLUMNS`), then crop/flip/cutout on the result. Its pixels are close
to the host path's, not identical (a float filter; see that function).

Not supported on the device (they need a float resample or colour maths that only the numpy
path implements): ``rotation``, ``affine``, ``color_jitter``, and ``random_resized_crop`` on
images stored at the training size (the composed affine resample of
:func:`cnn_ray.data.geometric.affine_thetas`), and torchvision v2's per-image
``auto_augment`` policies and ``random_erasing`` (:mod:`cnn_ray.data.photo`);
:func:`check_device_augment` raises a ConfigError (a ValueError) naming the ``augment.*``
key, and :func:`cnn_ray.data.memory.shard_for_device` keeps such runs on the host path.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from cnn_ray.config import AugmentConfig, ConfigError
from cnn_ray.data.draws import DRAW_COLUMNS, N_DRAWS, row_uniforms
from cnn_ray.data.geometric import crop_flip_draws
from cnn_ray.data.resized_crop import resized_crop_boxes, resized_crop_torch

__all__ = [
    "PARAM_COLUMNS",
    "RESIZE_COLUMNS",
    "UNSUPPORTED_ON_DEVICE",
    "apply_params",
    "augment_batch_torch",
    "augment_params",
    "batch_crop_flip",
    "batch_cutout_",
    "check_device_augment",
    "device_supports",
    "host_to_device",
]

Device = Union[str, torch.device]

# Techniques only the numpy path implements (``augment.<name>.enabled`` must be False here).
# auto_augment and random_erasing are torchvision v2 per-image ops (cnn_ray.data.photo): on a
# GPU that would be B small launches per op per batch; those runs stay on the host path.
UNSUPPORTED_ON_DEVICE = ("random_resized_crop", "rotation", "affine", "color_jitter",
                         "auto_augment", "random_erasing")
# Columns of the per-row parameter table of augment_params (int64).
PARAM_COLUMNS = ("shift_y", "shift_x", "flip", "cutout", "cutout_y0", "cutout_x0")
# Appended to them when the images are resized to a training size (out_size): the box.
RESIZE_COLUMNS = ("rrc_top", "rrc_left", "rrc_height", "rrc_width")
_LAYOUTS = ("nhwc", "nchw")
_PADDING = ("reflect", "zeros")


def _unsupported(cfg: AugmentConfig, resize: bool) -> list[str]:
    return [k for k in UNSUPPORTED_ON_DEVICE if getattr(cfg, k).enabled
            and not (resize and k == "random_resized_crop")]


def check_device_augment(cfg: AugmentConfig, *, resize: bool = False) -> None:
    """Raise unless every enabled technique of ``cfg`` runs on the device path.

    ``resize``: the images are stored larger than the training size (``random_resized_crop``
    then runs on the device as the resize, :func:`~cnn_ray.data.resized_crop.resized_crop_torch`).

    Raises:
        ConfigError (a ValueError): naming each ``augment.<key>`` that is enabled but not
            supported here (``auto_augment``, ``random_erasing``: the host path of
            :func:`~cnn_ray.data.augment.augment_batch` runs them, per image).
    """
    bad = [f"augment.{k}" for k in _unsupported(cfg, resize)]
    if bad:
        raise ConfigError(
            f"{', '.join(bad)}: not supported by the device augmentation path (random_crop, "
            "hflip and cutout, and random_resized_crop from images stored larger than "
            "data.image_size); disable it, or keep the data on the host (the numpy path of "
            "cnn_ray.data.augment implements every technique)")


def device_supports(cfg: Optional[AugmentConfig], *, resize: bool = False) -> bool:
    """Whether :func:`check_device_augment` accepts ``cfg`` (None, no augmentation: True)."""
    return cfg is None or not _unsupported(cfg, resize)


def _steps(cfg: AugmentConfig) -> tuple[bool, bool, bool]:
    """(crop, flip, cutout): which of the device techniques change anything for ``cfg``."""
    crop = cfg.random_crop.enabled and cfg.random_crop.padding > 0
    flip = cfg.hflip.enabled and (cfg.hflip.mode == "alternating" or cfg.hflip.p > 0)
    return crop, flip, cfg.cutout.enabled and cfg.cutout.p > 0


def augment_params(idx: np.ndarray, cfg: AugmentConfig, *, seed: int, epoch: int,
                   size: tuple[int, int], out_size: Optional[int] = None,
                   always_resize: bool = False) -> np.ndarray:
    """Per-row augmentation parameters, computed on the host with the numpy path's draws.

    Args:
        idx: ``(N,)`` int64 global row indices (the key of the draws).
        cfg: the augmentation (see :func:`check_device_augment` for what is supported).
        seed: augmentation seed. epoch: 0-based epoch. size: ``(H, W)`` of the images.
        out_size: the training side when it differs from ``size`` (stored larger): the
            random-resized-crop box is added. always_resize: add it even when ``out_size``
            equals ``size`` (``data.progressive``, as :func:`~cnn_ray.data.augment.augment_batch`).

    Returns:
        ``(N, 6) int64``, columns :data:`PARAM_COLUMNS`: shifts in pixels (``[-padding,
        padding]``, 0 when off), flip 0/1, cutout 0/1 and the cutout square's top-left corner
        (may be negative; the square is clipped at the borders; in training-size pixels).
        Resizing: ``(N, 10)``, plus :data:`RESIZE_COLUMNS` (the box in stored pixels).

    Raises:
        ValueError: an unsupported technique is enabled (:func:`check_device_augment`).
    """
    resize = out_size is not None and (always_resize or tuple(size) != (out_size, out_size))
    check_device_augment(cfg, resize=resize)
    idx = np.asarray(idx, dtype=np.int64)
    crop, flip, cutout = _steps(cfg)
    n_draws = N_DRAWS if cutout or resize else DRAW_COLUMNS["flip"] + 1
    u = row_uniforms(seed, epoch, idx, n_draws)
    out = np.zeros((len(idx), len(PARAM_COLUMNS) + (len(RESIZE_COLUMNS) if resize else 0)),
                   dtype=np.int64)
    if resize:
        out[:, len(PARAM_COLUMNS):] = resized_crop_boxes(u, cfg.random_resized_crop, *size)
        size = (out_size, out_size)
    # the numpy path's own draws (random or alternating flip): identical images on any device
    out[:, 0], out[:, 1], out[:, 2] = crop_flip_draws(u, cfg, crop=crop, flip=flip, idx=idx,
                                                      epoch=epoch, seed=seed)
    if cutout:  # the formulas of photometric.cutout_
        h, w = size
        col, half = DRAW_COLUMNS, cfg.cutout.size // 2
        out[:, 3] = u[:, col["cutout_apply"]] < cfg.cutout.p
        out[:, 4] = np.floor(u[:, col["cutout_y"]].astype(np.float64) * h).astype(np.int64) - half
        out[:, 5] = np.floor(u[:, col["cutout_x"]].astype(np.float64) * w).astype(np.int64) - half
    return out


def host_to_device(a: np.ndarray, device: Device) -> torch.Tensor:
    """Copy a host array to ``device`` without blocking the host on a CUDA device.

    CUDA: staged through pinned memory and copied with ``non_blocking=True`` (torch's caching
    host allocator keeps the pinned block alive until the copy has run). Other devices: a plain
    ``.to`` (on CPU the array's own memory, copied only when it is read-only).

    Args:
        a: any numpy array of a dtype torch supports. device: the target device.

    Returns:
        A tensor of ``a``'s shape and dtype on ``device``.
    """
    device = torch.device(device)
    a = np.ascontiguousarray(a)
    if device.type == "cuda":
        # Copy into pinned memory through numpy: read-only arrays (Ray object-store views) are
        # fine, and torch.from_numpy would warn about them.
        dtype = torch.from_numpy(np.empty(0, dtype=a.dtype)).dtype
        pinned = torch.empty(a.shape, dtype=dtype, pin_memory=True)
        pinned.numpy()[...] = a
        return pinned.to(device, non_blocking=True)
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


def _fold(i: torch.Tensor, size: int, padding_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices ``i`` (any integers) folded into ``[0, size)``, and where they were valid.

    ``reflect`` mirrors as ``numpy.pad(mode='reflect')`` (any distance; all valid); ``zeros``
    clamps and marks the out-of-range ones invalid (their pixels become 0).
    """
    if padding_mode == "zeros":
        return i.clamp(0, size - 1), (i >= 0) & (i < size)
    if size == 1:
        return torch.zeros_like(i), torch.ones_like(i, dtype=torch.bool)
    period = 2 * (size - 1)
    m = torch.remainder(i, period)
    return torch.where(m < size, m, period - m), torch.ones_like(i, dtype=torch.bool)


def batch_crop_flip(images: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor,
                    flip: torch.Tensor, *, sel: Optional[torch.Tensor] = None,
                    layout: str = "nhwc", padding_mode: str = "reflect") -> torch.Tensor:
    """Shift each image by ``(shift_y, shift_x)`` pixels, then mirror it where ``flip``.

    Technique cards: **random_crop** (pad by ``padding``, crop back at a random offset: a shift
    of up to ``padding`` pixels; 4 at 32 px) and **hflip** -- as
    :func:`cnn_ray.data.geometric.crop_flip`, whose output this equals with ``reflect``.
    Source: He et al. 2016; airbench ``batch_crop`` / ``batch_flip_lr``.

    ``out[b, i, j] = images[sel[b], fold(i + sy[b]), fold(j' + sx[b])]`` with ``j' = W - 1 - j``
    where flipped, in two gathers: whole shifted rows (``index_select`` of contiguous
    ``W * C``-element rows), then the shifted/mirrored columns within them (``gather``). On
    CPU that is ~3x faster than one advanced-indexing gather, yet about half as fast as the
    numpy path's block copies (``benchmarks/benchmark_augment.py``): the host keeps the numpy path.

    Args:
        images: ``(M, H, W, C)`` (``layout="nhwc"``) or ``(M, C, H, W)`` (``"nchw"``) tensor,
            any dtype, on any device; not modified.
        shift_y, shift_x: ``(B,)`` integer shifts in pixels. flip: ``(B,)`` bool or 0/1.
        sel: ``(B,)`` int64 rows of ``images`` to take (None: all rows, ``B == M``).
        padding_mode: ``reflect`` (as the numpy path) or ``zeros`` (pixels shifted in are 0).

    Returns:
        A new ``(B, H, W, C)`` / ``(B, C, H, W)`` tensor, same dtype and device as ``images``.

    Raises:
        ValueError: unknown layout or padding mode, or a non-4-D ``images``.
    """
    if layout not in _LAYOUTS or padding_mode not in _PADDING or images.ndim != 4:
        raise ValueError(f"batch_crop_flip: need a 4-D tensor, layout in {_LAYOUTS} and "
                         f"padding_mode in {_PADDING}; got {tuple(images.shape)}, {layout!r}, "
                         f"{padding_mode!r}")
    dev = images.device
    h, w = images.shape[1:3] if layout == "nhwc" else images.shape[2:4]
    if sel is None:
        sel = torch.arange(images.shape[0], device=dev)
    j = torch.arange(w, device=dev)
    cols = shift_x[:, None] + torch.where(flip.bool()[:, None], w - 1 - j, j)
    rows, ok_r = _fold(shift_y[:, None] + torch.arange(h, device=dev), h, padding_mode)
    cols, ok_c = _fold(cols, w, padding_mode)
    b = len(sel)
    if layout == "nhwc":
        c = images.shape[3]
        flat_rows = sel[:, None] * h + rows  # (B, H) rows of the (M * H, W * C) view
        out = images.reshape(-1, w * c).index_select(0, flat_rows.reshape(-1))
        out = out.view(b, h, w, c).gather(2, cols[:, None, :, None].expand(b, h, w, c))
    else:
        c = images.shape[1]
        planes = sel[:, None] * c + torch.arange(c, device=dev)  # (B, C) planes of (M * C)
        flat_rows = planes[:, :, None] * h + rows[:, None, :]  # (B, C, H) rows of (M*C*H, W)
        out = images.reshape(-1, w).index_select(0, flat_rows.reshape(-1))
        out = out.view(b, c, h, w).gather(3, cols[:, None, None, :].expand(b, c, h, w))
    if padding_mode == "zeros":
        outside = ~(ok_r[:, :, None] & ok_c[:, None, :])  # (B, H, W)
        out.masked_fill_(outside[..., None] if layout == "nhwc" else outside[:, None], 0)
    return out


def batch_cutout_(x: torch.Tensor, apply: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
                  size: int, *, layout: str = "nhwc") -> torch.Tensor:
    """Zero a ``size`` x ``size`` square per image where ``apply``, in place (clipped).

    Technique card -- **cutout**: as :func:`cnn_ray.data.photometric.cutout_` (16 px on
    CIFAR-10, 8 px on CIFAR-100; DeVries & Taylor 2017), same squares for the same parameters.

    Args:
        x: ``(B, H, W, C)`` / ``(B, C, H, W)`` tensor (``layout``), modified in place.
        apply: ``(B,)`` bool or 0/1. y0, x0: ``(B,)`` integer top-left corners (may be < 0).
        size: side in pixels.

    Returns:
        ``x``.
    """
    h, w = x.shape[1:3] if layout == "nhwc" else x.shape[2:4]
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    in_y = (ys >= y0[:, None]) & (ys < y0[:, None] + size) & apply.bool()[:, None]
    in_x = (xs >= x0[:, None]) & (xs < x0[:, None] + size)
    square = in_y[:, :, None] & in_x[:, None, :]  # (B, H, W)
    return x.masked_fill_(square[..., None] if layout == "nhwc" else square[:, None], 0)


def apply_params(images: torch.Tensor, params: torch.Tensor, cfg: AugmentConfig, *,
                 sel: Optional[torch.Tensor] = None, layout: str = "nhwc",
                 padding_mode: str = "reflect", out_size: Optional[int] = None) -> torch.Tensor:
    """Augment ``images[sel]`` with per-row :func:`augment_params` already on the device.

    Args:
        images: ``(M, H, W, C)`` / ``(M, C, H, W)`` uint8 on the device; not modified.
        params: ``(B, 6)`` int64 on the same device (rows in the order of ``sel``); ``(B, 10)``
            with the resize box (:data:`RESIZE_COLUMNS`) when ``out_size`` is given.
        cfg: which techniques (and the cutout size). sel: ``(B,)`` int64 rows, None for all.
        out_size: the training side: the box of each row is resized to it first
            (:func:`~cnn_ray.data.resized_crop.resized_crop_torch`); None: no resize.

    Returns:
        A new ``(B, ...)`` tensor (``images[sel]`` when nothing is enabled).
    """
    crop, flip, cutout = _steps(cfg)
    if out_size is not None and params.shape[1] > len(PARAM_COLUMNS):
        out = resized_crop_torch(images, params[:, len(PARAM_COLUMNS):], out_size, sel=sel,
                                 layout=layout)  # a new tensor
        if crop or flip:
            out = batch_crop_flip(out, params[:, 0], params[:, 1], params[:, 2], layout=layout,
                                  padding_mode=padding_mode)
    elif crop or flip:
        out = batch_crop_flip(images, params[:, 0], params[:, 1], params[:, 2], sel=sel,
                              layout=layout, padding_mode=padding_mode)
    else:
        out = images[sel] if sel is not None else images.clone()
    if cutout:
        batch_cutout_(out, params[:, 3], params[:, 4], params[:, 5], cfg.cutout.size,
                      layout=layout)
    return out


def augment_batch_torch(images: torch.Tensor, idx: np.ndarray, cfg: AugmentConfig, *,
                        seed: int, epoch: int, layout: str = "nhwc",
                        padding_mode: str = "reflect",
                        out_size: Optional[int] = None,
                        always_resize: bool = False) -> torch.Tensor:
    """:func:`cnn_ray.data.augment.augment_batch` for a batch on any device (crop/flip/cutout,
    and the random-resized crop to ``out_size`` from larger stored images).

    Equal, pixel for pixel, to the numpy path for the same ``(seed, epoch, idx)`` (with the
    default ``reflect``), except that ``hflip.mode: alternating`` is honoured here; with
    ``out_size`` close to it (the resize's float filter, :func:`resized_crop_torch`).

    Args:
        images: ``(N, H, W, C)`` / ``(N, C, H, W)`` uint8 tensor on any device; not modified.
        idx: ``(N,)`` int64 global row indices, a HOST array (the draws are made on the host).
        seed, epoch: the draws' key. layout, padding_mode: as :func:`batch_crop_flip`.
        out_size: the training side when the images are stored larger; None: their own.
        always_resize: resize to ``out_size`` even at the images' own side (as
            :func:`augment_params`).

    Returns:
        A new tensor of the same shape (``out_size`` sides when given), dtype and device.

    Raises:
        ValueError: an unsupported technique is enabled; ``idx`` length differs from N.
    """
    if len(idx) != images.shape[0]:
        raise ValueError(f"idx has {len(idx)} entries for a batch of {images.shape[0]}")
    size = tuple(images.shape[1:3] if layout == "nhwc" else images.shape[2:4])
    params = host_to_device(augment_params(idx, cfg, seed=seed, epoch=epoch, size=size,
                                           out_size=out_size, always_resize=always_resize),
                            images.device)
    return apply_params(images, params, cfg, layout=layout, padding_mode=padding_mode,
                        out_size=out_size)
