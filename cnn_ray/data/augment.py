"""Vectorised batch augmentation (the public entry point), eval resizing and normalisation.

Everything here works on whole batches: ``(N, H, W, C) uint8`` numpy arrays as they come out of
Ray Data ``map_batches`` (NHWC; ``C`` may be 1, 3 or more), or torch tensors on the training
device. No Ray is imported: this is the numeric core, tested without a cluster.

:func:`augment_batch` orchestrates; the work lives by job in

* :mod:`cnn_ray.data.draws` -- counter-based per-image randomness (:func:`row_uniforms` hashes
  ``(seed, epoch, row idx, column)``; each technique reads its own :data:`DRAW_COLUMNS`, so
  switching one on or off never shifts the draws of another);
* :mod:`cnn_ray.data.geometric` -- crop + flip in uint8, the composed affine resample;
* :mod:`cnn_ray.data.resized_crop` -- the random-resized crop from larger stored images;
* :mod:`cnn_ray.data.photometric` -- colour jitter, cutout;
* :mod:`cnn_ray.data.photo` -- torchvision v2's auto-augment policies and random erasing, per
  image (seeded per image from :func:`~cnn_ray.data.draws.row_seeds`);
* :mod:`cnn_ray.data.buffers` -- per-thread scratch buffers, NHWC <-> NCHW copies;
* :mod:`cnn_ray.data.preprocess` -- :func:`resize_center_crop`, :func:`normalize_batch`.

Pipeline order inside :func:`augment_batch` (each step skipped when disabled):

0. images stored larger than the training size (``out_size``, ``data.store_size``): the
   random-resized crop to ``out_size`` (:mod:`cnn_ray.data.resized_crop`, uint8, per image);
1. ``random_crop`` + ``hflip`` in uint8 numpy (row/slice copies, no float conversion);
2. ``random_resized_crop`` + ``rotation`` + ``affine`` composed into one 2x3 matrix per image and
   resampled once (bilinear ``grid_sample``);
3. ``color_jitter`` on float;
4. ``auto_augment`` (TrivialAugmentWide / RandAugment / AutoAugment) per image on uint8, after
   the crop and flip as in torchvision's presets;
5. ``cutout`` on the uint8 result;
6. ``random_erasing`` per image on uint8 (before normalisation, which the training device does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from cnn_ray.config import AugmentConfig
from cnn_ray.data.buffers import to_planar_float, to_uint8_nhwc
from cnn_ray.data.draws import DRAW_COLUMNS, N_DRAWS, row_uniforms
from cnn_ray.data.geometric import affine_grid, affine_thetas, crop_flip, crop_flip_draws
from cnn_ray.data.photo import auto_augment_, random_erasing_
from cnn_ray.data.photometric import color_jitter_, cutout_
from cnn_ray.data.preprocess import normalize_batch, resize_center_crop
from cnn_ray.data.resized_crop import resized_crop, resized_crop_boxes

__all__ = [
    "DRAW_COLUMNS",
    "N_DRAWS",
    "augment_batch",
    "normalize_batch",
    "resize_center_crop",
    "row_uniforms",
]

_PADDING_MODES = ("zeros", "reflection", "border")


@dataclass(frozen=True)
class _Steps:
    """Which steps of :func:`augment_batch` change anything for this config and channel count."""

    crop: bool
    flip: bool
    geometric: bool
    color: bool
    cutout: bool
    policy: bool = False
    erasing: bool = False

    @classmethod
    def of(cls, cfg: AugmentConfig, channels: int) -> "_Steps":
        cj = cfg.color_jitter
        return cls(
            crop=cfg.random_crop.enabled and cfg.random_crop.padding > 0,
            flip=cfg.hflip.enabled and (cfg.hflip.p > 0 or cfg.hflip.mode == "alternating"),
            geometric=cfg.random_resized_crop.enabled or cfg.rotation.enabled
            or cfg.affine.enabled,
            color=cj.enabled and (cj.brightness > 0 or cj.contrast > 0
                                  or (cj.saturation > 0 and channels == 3)),
            cutout=cfg.cutout.enabled and cfg.cutout.p > 0,
            policy=cfg.auto_augment.enabled,
            erasing=cfg.random_erasing.enabled and cfg.random_erasing.p > 0,
        )

    def any(self) -> bool:
        return (self.crop or self.flip or self.geometric or self.color or self.cutout
                or self.policy or self.erasing)


def _check_batch(
    images: np.ndarray, idx: np.ndarray, padding_mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, idx)`` as arrays; ValueError on wrong rank/dtype, length or padding mode."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, C) uint8, got {images.shape} {images.dtype}")
    idx = np.asarray(idx)
    if idx.shape != (images.shape[0],):
        raise ValueError(f"idx must have shape ({images.shape[0]},), got {idx.shape}")
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"padding_mode must be zeros, reflection or border, got {padding_mode!r}")
    return images, idx


def _float_stage(x: np.ndarray, u: np.ndarray, cfg: AugmentConfig, theta: Optional[np.ndarray],
                 *, color: bool, padding_mode: str) -> np.ndarray:
    """The geometric resample (when ``theta`` is given) and colour jitter, on float.

    Runs in planar NCHW: grid_sample's layout, and per-image/per-channel broadcasts there are
    several times faster than over interleaved NHWC pixels. ``(N, H, W, C) uint8`` in, a new
    ``(N, H, W, C) uint8`` array out.
    """
    h, w = x.shape[1:3]
    planar: torch.Tensor = to_planar_float(x)
    if theta is not None:
        planar = F.grid_sample(planar, affine_grid(theta, h, w), mode="bilinear",
                               padding_mode=padding_mode, align_corners=False)
    if color:
        color_jitter_(planar, u, cfg)
    return to_uint8_nhwc(planar)


def augment_batch(
    images: np.ndarray,
    idx: np.ndarray,
    cfg: AugmentConfig,
    *,
    seed: int,
    epoch: int,
    padding_mode: str = "zeros",
    out_size: Optional[int] = None,
    always_resize: bool = False,
) -> np.ndarray:
    """Augment a training batch; every draw comes from :func:`row_uniforms` ``(seed, epoch, idx)``.

    Techniques, each only when ``cfg.<name>.enabled`` (a strength of 0 is the identity); their
    cards (what, values that work, source) are on the functions that do them:
    ``random_crop``, ``hflip`` (:func:`~cnn_ray.data.geometric.crop_flip`, uint8);
    ``random_resized_crop``, ``rotation``, ``affine``
    (:func:`~cnn_ray.data.geometric.affine_thetas`: one 2x3 matrix per image, one bilinear
    ``grid_sample``); ``color_jitter``
    (:func:`~cnn_ray.data.photometric.color_jitter_`); ``cutout``
    (:func:`~cnn_ray.data.photometric.cutout_`); ``auto_augment`` before cutout and
    ``random_erasing`` last (:func:`~cnn_ray.data.photo.auto_augment_`,
    :func:`~cnn_ray.data.photo.random_erasing_`: torchvision v2 per image, seeded per image).
    In that order; with only crop and flip on, the batch never leaves uint8 numpy.

    Args:
        images: ``(N, H, W, C) uint8``; not modified.
        idx: ``(N,)`` int64 global row indices (the per-image random stream).
        cfg: which techniques and how strong.
        seed: run seed. epoch: the 0-based training epoch (draws change every epoch;
            ``hflip.mode: alternating`` flips each image on alternate epochs by its parity).
        padding_mode: ``zeros`` (default, as torchvision's fill=0), ``reflection`` or ``border``:
            what the geometric resample reads outside the image.
        out_size: the training side in pixels when the images are stored larger
            (``data.store_size``): step 0 then takes each image's random-resized-crop box
            (:func:`~cnn_ray.data.resized_crop.resized_crop_boxes`, torchvision's algorithm; the
            whole image when ``random_resized_crop`` is off) and resizes it to ``out_size``
            (:func:`~cnn_ray.data.resized_crop.resized_crop`), and the steps above run on the
            result without a second resized crop. None or the images' own side: as before.
        always_resize: with ``out_size``, take step 0 even when ``out_size`` is the images'
            own side (``data.progressive``: every epoch of the ramp, the last ones at the
            stored side included, gets the same random-resized crop).

    Returns:
        ``(N, H, W, C) uint8`` (``H = W = out_size`` when given), C-contiguous; ``images``
        itself when nothing is enabled and no resize is needed.

    Raises:
        ValueError: wrong rank/dtype, ``idx`` length != N, unknown ``padding_mode``;
            ``auto_augment`` on images that do not have 1 or 3 bands.
    """
    images, idx = _check_batch(images, idx, padding_mode)
    n, h, w, c = images.shape
    u = None
    if out_size is not None and (always_resize or (h, w) != (out_size, out_size)):
        u = row_uniforms(seed, epoch, idx, N_DRAWS)
        first = _Steps.of(cfg, c)
        flips = None  # flip only (no shift): mirrored as part of the resize, no second pass
        if first.flip and not first.crop:
            flips = crop_flip_draws(u, cfg, crop=False, flip=True, idx=idx, epoch=epoch,
                                    seed=seed)[2]
        images = resized_crop(images, resized_crop_boxes(u, cfg.random_resized_crop, h, w),
                              out_size, flip=flips)
        cfg = _without(cfg, "random_resized_crop", *(("hflip",) if flips is not None else ()))
        h = w = out_size
    steps = _Steps.of(cfg, c)
    if n == 0 or not steps.any():
        return images
    u = row_uniforms(seed, epoch, idx, N_DRAWS) if u is None else u
    out = images
    if steps.crop or steps.flip:
        draws = crop_flip_draws(u, cfg, crop=steps.crop, flip=steps.flip, idx=idx, epoch=epoch,
                                seed=seed)
        out = crop_flip(out, *draws)
    theta = affine_thetas(u, cfg, h, w) if steps.geometric else None
    if theta is not None or steps.color:
        out = _float_stage(out, u, cfg, theta, color=steps.color, padding_mode=padding_mode)
    if (steps.policy or steps.cutout or steps.erasing) and out is images:
        out = images.copy()
    if steps.policy:
        auto_augment_(out, idx, cfg.auto_augment, seed=seed, epoch=epoch)
    if steps.cutout:
        cutout_(out, u, cfg.cutout.size, cfg.cutout.p)
    if steps.erasing:
        random_erasing_(out, idx, cfg.random_erasing, seed=seed, epoch=epoch)
    return out


def _without(cfg: AugmentConfig, *names: str) -> AugmentConfig:
    """``cfg`` with the techniques ``names`` off (already applied with the resize to the
    training size); ``cfg`` itself when they are off already."""
    update = {k: getattr(cfg, k).model_copy(update={"enabled": False}) for k in names
              if getattr(cfg, k).enabled}
    return cfg.model_copy(update=update) if update else cfg


def _benchmark(n: int = 512, size: int = 32, repeats: int = 101) -> None:
    """``python -m cnn_ray.data.augment``: median ms per batch of ``n`` random RGB images.

    Runs with one torch thread, as in a Ray Data task (Ray sets ``OMP_NUM_THREADS`` from the
    task's ``num_cpus``).
    """
    import time

    torch.set_num_threads(1)
    x = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    idx = np.arange(n, dtype=np.int64)
    cases = {
        "default (crop + flip)": AugmentConfig(),
        "all techniques on": AugmentConfig(
            **{k: {"enabled": True} for k in AugmentConfig.model_fields if k != "auto_augment"},
            auto_augment={"policy": "trivial_augment_wide"},
        ),
    }
    for label, cfg in cases.items():
        times = []
        for epoch in range(repeats + 1):
            start = time.perf_counter()
            augment_batch(x, idx, cfg, seed=0, epoch=epoch)
            times.append(time.perf_counter() - start)
        t = np.array(times[1:]) * 1e3
        print(f"{label:22s} {n}x{size}x{size}x3: median {np.median(t):6.2f} ms, min {t.min():.2f} ms")


if __name__ == "__main__":
    _benchmark()
