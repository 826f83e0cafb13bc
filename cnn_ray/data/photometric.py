"""Photometric batch augmentation: colour jitter (float, planar) and cutout (uint8). No Ray.

Both work in place on a whole batch with per-image draws from
:func:`cnn_ray.data.draws.row_uniforms`, each reading its own columns
(:data:`~cnn_ray.data.draws.DRAW_COLUMNS`).
"""

from __future__ import annotations

import numpy as np
import torch

from cnn_ray.config import AugmentConfig
from cnn_ray.data.buffers import scratch
from cnn_ray.data.draws import DRAW_COLUMNS, uniform

__all__ = ["color_jitter_", "cutout_"]

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def color_jitter_(x: torch.Tensor, u: np.ndarray, cfg: AugmentConfig) -> None:
    """In place on ``(N, C, H, W) float`` in [0, 255].

    Technique card -- **color_jitter**: brightness, contrast, then saturation factors in
    ``[1 - s, 1 + s]`` (blends with black, the image's mean grey level, the per-pixel grey image;
    saturation only for C == 3); 0.2-0.4. Each result is clamped to [0, 255]. Source:
    torchvision ColorJitter (fixed order here).

    Args:
        x: ``(N, C, H, W)`` float tensor, modified in place.
        u: ``(N, N_DRAWS) float32`` draws. cfg: ``color_jitter`` strengths are read.
    """
    cj = cfg.color_jitter
    n, c, h, w = x.shape

    def factor(name: str, s: float) -> torch.Tensor:
        f = uniform(u[:, DRAW_COLUMNS[name]], 1 - s, 1 + s).astype(np.float32)
        return torch.from_numpy(f).view(n, 1, 1, 1)

    def grey() -> torch.Tensor:  # (N, 1, H, W), in a reused buffer
        g = torch.from_numpy(scratch("grey", (n, 1, h, w), np.float32))
        torch.mul(x[:, 0:1], _GRAY_WEIGHTS[0], out=g)
        return g.add_(x[:, 1:2], alpha=_GRAY_WEIGHTS[1]).add_(x[:, 2:3], alpha=_GRAY_WEIGHTS[2])

    if cj.brightness > 0:
        x.mul_(factor("brightness", cj.brightness)).clamp_(0, 255)
    if cj.contrast > 0:
        f = factor("contrast", cj.contrast)
        mean = (grey() if c == 3 else x).mean(dim=(1, 2, 3), keepdim=True)
        x.mul_(f).add_(mean * (1 - f)).clamp_(0, 255)
    if cj.saturation > 0 and c == 3:
        f = factor("saturation", cj.saturation)
        g = grey().mul_(1 - f)  # before x changes
        x.mul_(f).add_(g).clamp_(0, 255)


def cutout_(x: np.ndarray, u: np.ndarray, size: int, p: float) -> None:
    """Zero a ``size`` x ``size`` square per selected image in place (clipped at the borders).

    Technique card -- **cutout**: zero a ``size`` x ``size`` square with probability ``p``,
    centre uniform over the image, clipped at the borders; the paper uses 16 px on CIFAR-10, 8 px
    on CIFAR-100 (32 px images). Source: DeVries & Taylor 2017.

    Args:
        x: ``(N, H, W, C) uint8``, modified in place.
        u: ``(N, N_DRAWS) float32`` draws. size: side in pixels. p: probability per image.
    """
    n, h, w, _ = x.shape
    col = DRAW_COLUMNS
    apply = u[:, col["cutout_apply"]] < p
    if not apply.any():
        return
    y0 = np.floor(u[:, col["cutout_y"]].astype(np.float64) * h).astype(np.int64) - size // 2
    x0 = np.floor(u[:, col["cutout_x"]].astype(np.float64) * w).astype(np.int64) - size // 2
    ys, xs = np.arange(h), np.arange(w)
    in_y = (ys >= y0[:, None]) & (ys < y0[:, None] + size) & apply[:, None]
    in_x = (xs >= x0[:, None]) & (xs < x0[:, None] + size)
    square = in_y[:, :, None] & in_x[:, None, :]  # (N, H, W)
    if x.shape[3] > 4:
        x[square] = 0
        return
    for ch in range(x.shape[3]):  # per channel: 1-byte elements, 5-10x faster than C-byte pixels
        x[..., ch][square] = 0
