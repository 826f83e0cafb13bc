"""Vectorised batch augmentation, eval resizing and normalisation.

Everything here works on whole batches: ``(N, H, W, C) uint8`` numpy arrays as they come out of
Ray Data ``map_batches`` (NHWC; ``C`` may be 1, 3 or more), or torch tensors on the training
device. No Ray is imported: this is the numeric core, tested without a cluster.

Randomness is counter-based. :func:`row_uniforms` hashes ``(seed, epoch, row idx, column)``, so an
image (named by its global int64 row index) gets the same draws for the same ``(seed, epoch)``
whatever batch, block or worker it lands in, and fresh draws every epoch. Each technique reads its
own fixed columns (:data:`DRAW_COLUMNS`), so switching one technique on or off never shifts the
draws of another.

Pipeline order inside :func:`augment_batch` (each step skipped when disabled):

1. ``random_crop`` + ``hflip`` in uint8 numpy (row/slice copies, no float conversion);
2. ``random_resized_crop`` + ``rotation`` + ``affine`` composed into one 2x3 matrix per image and
   resampled once (bilinear ``grid_sample``);
3. ``color_jitter`` on float;
4. ``cutout`` on the uint8 result.
"""

from __future__ import annotations

import math
import threading
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cnn_ray.config import AugmentConfig

__all__ = [
    "DRAW_COLUMNS",
    "N_DRAWS",
    "augment_batch",
    "normalize_batch",
    "resize_center_crop",
    "row_uniforms",
]

# One fixed column of row_uniforms per random draw. Append new draws at the end; never renumber,
# or seeded runs stop being repeatable across versions.
DRAW_COLUMNS: dict[str, int] = {
    "crop_y": 0,
    "crop_x": 1,
    "flip": 2,
    "rrc_scale": 3,
    "rrc_ratio": 4,
    "rrc_x": 5,
    "rrc_y": 6,
    "rotation": 7,
    "translate_x": 8,
    "translate_y": 9,
    "shear": 10,
    "brightness": 11,
    "contrast": 12,
    "saturation": 13,
    "cutout_apply": 14,
    "cutout_y": 15,
    "cutout_x": 16,
}
N_DRAWS = len(DRAW_COLUMNS)

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# --------------------------------------------------------------------------- randomness
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def _mix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al. 2014) on uint64 arrays; wraps mod 2**64."""
    z = z ^ (z >> np.uint64(30))
    z = z * _MIX1
    z = z ^ (z >> np.uint64(27))
    z = z * _MIX2
    return z ^ (z >> np.uint64(31))


def row_uniforms(seed: int, epoch: int, idx: np.ndarray, n: int) -> np.ndarray:
    """Counter-based uniforms: one row of ``n`` draws per image, a pure function of its inputs.

    Value ``[i, k]`` is a splitmix64 hash of ``(seed, epoch, idx[i], k)``: the same image (global
    row index) gets the same draws for the same ``(seed, epoch)`` in any batch or on any worker,
    different draws in every other epoch and for every other image. Column ``k`` does not depend
    on ``n``, so asking for more columns never changes the earlier ones.

    Args:
        seed: run seed (any int; taken mod 2**64).
        epoch: epoch number (any int; taken mod 2**64).
        idx: ``(N,)`` integer global row indices.
        n: draws per row (``>= 0``).

    Returns:
        ``(N, n) float32`` in ``[0, 1)``, multiples of ``2**-24`` (exact in float32).

    Raises:
        ValueError: ``idx`` is not 1-D integer, or ``n < 0``.
    """
    idx = np.asarray(idx)
    if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
        raise ValueError(f"idx must be a 1-D integer array, got {idx.shape} {idx.dtype}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    with np.errstate(over="ignore"):
        key = _mix64(np.array([int(seed) & _MASK64], dtype=np.uint64) + _GOLDEN)
        key = _mix64((key ^ np.uint64(int(epoch) & _MASK64)) + _GOLDEN)
        rows = _mix64((idx.astype(np.int64).view(np.uint64) ^ key) + _GOLDEN)
        # splitmix64 stream per row: the k-th output is mix(state + (k + 1) * golden).
        steps = (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        z = _mix64(rows[:, None] + steps)
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def _uniform(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * u.astype(np.float64)


# ------------------------------------------------------------------ scratch buffers
class _Scratch(threading.local):
    """Per-thread reusable work buffers, grown on demand and never shrunk.

    A fresh multi-megabyte array is a fresh ``mmap``: every page faults on first touch, which on a
    VM costs more than the copy itself (~0.5 ms per 1.5 MB). Intermediates therefore live here;
    only the returned batch is newly allocated.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}


_SCRATCH = _Scratch()


def _scratch(name: str, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buf = _SCRATCH.buffers.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, 64), dtype=np.uint8)
        _SCRATCH.buffers[name] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


# ------------------------------------------------------------------ crop + flip (uint8)
def _reflect_index(i: np.ndarray, size: int) -> np.ndarray:
    """Map integer indices onto ``[0, size)`` as numpy ``pad(mode='reflect')`` does (any range)."""
    if size == 1:
        return np.zeros_like(i)
    period = 2 * (size - 1)
    m = np.mod(i, period)
    return np.where(m < size, m, period - m)


def _shift_rows_flat(out: np.ndarray, src: np.ndarray, k: int) -> None:
    """``out[:, i] = src[:, i + k]`` on ``(G, H*W*C)`` views: a column shift as one block copy.

    Shifting every row of an image by ``s`` pixels is shifting the flattened image by ``s * C``
    bytes; the only wrong bytes (wrapped in from the neighbouring row) are the edge columns,
    which :func:`_fill_edges` overwrites afterwards.
    """
    length = out.shape[1]
    if k >= 0:
        out[:, : length - k] = src[:, k:]
    else:
        out[:, -k:] = src[:, : length + k]


def _mirror_columns(out: np.ndarray, src: np.ndarray, s: int) -> None:
    """``out[..., j, :] = src[..., w - 1 - j + s, :]`` where that column exists.

    Columns whose source lies in the reflect padding are left to :func:`_fill_edges`.
    """
    w, c = src.shape[2], src.shape[3]
    j0, j1 = max(s, 0), min(w + s, w)  # valid j: 0 <= w - 1 - j + s < w
    rev = src[:, :, w - j1 + s : w - j0 + s][:, :, ::-1]
    if c <= 4:
        # Per-channel copies: the inner loop runs along W, not over C-byte pixels.
        for ch in range(c):
            out[:, :, j0:j1, ch] = rev[..., ch]
    else:
        out[:, :, j0:j1] = rev


def _fill_edges(out: np.ndarray, src: np.ndarray, sx: np.ndarray, flip: np.ndarray) -> None:
    """Columns the group copies left: sources in the reflect padding, one gather for the batch."""
    w, c = src.shape[2], src.shape[3]
    j = np.arange(w)
    raw = sx[:, None] + np.where(flip[:, None], w - 1 - j, j)
    nn, jj = np.nonzero((raw < 0) | (raw >= w))
    if not nn.size:
        return
    rr = _reflect_index(raw[nn, jj], w)
    if c > 4:
        out[nn, :, jj] = src[nn, :, rr]
        return
    # (N, W, C, H) views: each gathered run is a column of one channel, H bytes long.
    out_t, src_t = out.transpose(0, 2, 3, 1), src.transpose(0, 2, 3, 1)
    for ch in range(c):
        out_t[nn, jj, ch] = src_t[nn, rr, ch]


def _crop_flip(x: np.ndarray, sy: np.ndarray, sx: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Shift each image by ``(sy, sx)`` pixels with reflect fill, then mirror where ``flip``.

    Same result as ``np.pad(x[i], reflect)[p+sy : p+sy+H, p+sx : p+sx+W]`` (then ``[:, ::-1]``)
    per image, built from block copies only:

    1. sort the images so that those sharing ``(sx, flip)`` form one contiguous slice;
    2. per slice, shift (one flat block copy) or mirror (per-channel copies) the columns into a
       buffer with ``py`` spare rows top and bottom, then fill the edge columns in one gather;
    3. reflect-fill those rows (whole-row copies);
    4. gather one ``H``-row window per image, undoing the sort: the only fresh allocation.
    """
    n, h, w, c = x.shape
    px, py = int(np.abs(sx).max()), int(np.abs(sy).max())
    key = (sx + px) * 2 + flip
    order = np.argsort(key, kind="stable")
    xs = _scratch("sorted", x.shape, np.uint8)
    np.take(x, order, axis=0, out=xs)
    buf = _scratch("shifted", (n, h + 2 * py, w, c), np.uint8)
    mid = buf[:, py : py + h]
    s = buf.strides
    # (N, H*W*C) views of the same memory, for the non-mirrored groups' flat shifts.
    mid_flat = np.lib.stride_tricks.as_strided(mid, (n, h * w * c), (s[0], s[3]))
    xs_flat = xs.reshape(n, h * w * c)
    skey = key[order]
    starts = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])
    ssx, sflip = sx[order], flip[order]
    for a, b in zip(starts, np.r_[starts[1:], n]):
        shift, mirror = int(ssx[a]), bool(sflip[a])
        if abs(shift) >= w:
            continue  # every column comes from the padding
        if mirror:
            _mirror_columns(mid[a:b], xs[a:b], shift)
        else:
            _shift_rows_flat(mid_flat[a:b], xs_flat[a:b], shift * c)
    _fill_edges(mid, xs, ssx, sflip)
    if py:
        buf[:, :py] = buf[:, py + _reflect_index(np.arange(-py, 0), h)]
        buf[:, py + h :] = buf[:, py + _reflect_index(np.arange(h, h + py), h)]
    windows = np.lib.stride_tricks.as_strided(
        buf, (n, 2 * py + 1, h, w, c), (s[0], s[1], s[1], s[2], s[3]), writeable=False
    )
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    return windows[inverse, sy + py]


# --------------------------------------------------------------- geometric (one resample)
def _affine_thetas(u: np.ndarray, cfg: AugmentConfig, h: int, w: int) -> np.ndarray | None:
    """Per-image ``(N, 2, 3)`` float64 output->input maps in ``affine_grid`` normalised coords.

    Built in centred pixel coordinates (x right, y down, origin at the image centre) so rotation
    and shear stay angle-true on non-square images, as ``p_in = D @ R @ Sh @ (p_out - t) + c``:
    translate ``t``, shear ``Sh``, rotation ``R``, then the resized-crop box (scale ``D``, centre
    ``c``). Returns None when every matrix is the identity (nothing to resample).
    """
    n = u.shape[0]
    col = DRAW_COLUMNS
    a = np.broadcast_to(np.eye(2), (n, 2, 2)).copy()
    off = np.zeros((n, 2))
    rrc, rot, aff = cfg.random_resized_crop, cfg.rotation, cfg.affine
    if aff.enabled and aff.translate > 0:
        off[:, 0] = -_uniform(u[:, col["translate_x"]], -aff.translate, aff.translate) * w
        off[:, 1] = -_uniform(u[:, col["translate_y"]], -aff.translate, aff.translate) * h
    if aff.enabled and aff.shear > 0:
        sh = np.tan(np.deg2rad(_uniform(u[:, col["shear"]], -aff.shear, aff.shear)))
        m = np.broadcast_to(np.eye(2), (n, 2, 2)).copy()
        m[:, 0, 1] = sh
        a, off = m @ a, np.einsum("nij,nj->ni", m, off)
    if rot.enabled and rot.degrees > 0:
        ang = np.deg2rad(_uniform(u[:, col["rotation"]], -rot.degrees, rot.degrees))
        cos, sin = np.cos(ang), np.sin(ang)
        m = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
        a, off = m @ a, np.einsum("nij,nj->ni", m, off)
    if rrc.enabled:
        area = _uniform(u[:, col["rrc_scale"]], *rrc.scale) * (h * w)
        ratio = np.exp(_uniform(u[:, col["rrc_ratio"]], *np.log(rrc.ratio)))
        # One draw, clamped to the image (torchvision retries 10x, then falls back to a centre
        # crop); clamping keeps it vectorised at a small bias towards less extreme boxes.
        cw = np.minimum(np.sqrt(area * ratio), w)
        ch = np.minimum(np.sqrt(area / ratio), h)
        cx = u[:, col["rrc_x"]] * (w - cw) + cw / 2 - w / 2
        cy = u[:, col["rrc_y"]] * (h - ch) + ch / 2 - h / 2
        a[:, 0] *= (cw / w)[:, None]
        a[:, 1] *= (ch / h)[:, None]
        off = off * np.stack([cw / w, ch / h], -1) + np.stack([cx, cy], -1)
    # To normalised coords: S^-1 A S with S = diag(w/2, h/2), offset / (w/2, h/2).
    theta = np.empty((n, 2, 3))
    theta[:, 0, 0], theta[:, 0, 1] = a[:, 0, 0], a[:, 0, 1] * (h / w)
    theta[:, 1, 0], theta[:, 1, 1] = a[:, 1, 0] * (w / h), a[:, 1, 1]
    theta[:, 0, 2], theta[:, 1, 2] = off[:, 0] * (2 / w), off[:, 1] * (2 / h)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if np.all(np.abs(theta - identity) < 1e-9):
        return None
    return theta


def _affine_grid(theta: np.ndarray, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, h, w), align_corners=False)`` written plane by plane.

    ``affine_grid`` runs a batched matmul with an inner size of 3, several times slower on CPU
    than two broadcast multiply-adds per plane.
    """
    n = theta.shape[0]
    t = theta.astype(np.float32)
    xs = (np.arange(w, dtype=np.float32) * 2 + 1) / w - 1
    ys = (np.arange(h, dtype=np.float32) * 2 + 1) / h - 1
    # Planes stored (N, 2, H, W) and handed over as an (N, H, W, 2) view: contiguous writes here,
    # and grid_sample reads a planar grid slightly faster than an interleaved one.
    grid = _scratch("grid", (n, 2, h, w), np.float32)
    for k in range(2):
        along_x = t[:, k, 0, None, None] * xs[None, None, :] + t[:, k, 2, None, None]
        np.add(along_x, t[:, k, 1, None, None] * ys[None, :, None], out=grid[:, k])
    return torch.from_numpy(grid).permute(0, 2, 3, 1)


def _to_planar_float(x: np.ndarray) -> torch.Tensor:
    """``(N, H, W, C) uint8`` -> ``(N, C, H, W) float32`` (a reused buffer; consumed at once)."""
    n, h, w, c = x.shape
    planar = _scratch("planar", (n, c, h, w), np.float32)
    _copy_channels(planar, x, to_planar=True)
    return torch.from_numpy(planar)


def _copy_channels(dst: np.ndarray, src: np.ndarray, *, to_planar: bool) -> None:
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


# ------------------------------------------------------------------------ colour (float)
def _color_jitter_(x: torch.Tensor, u: np.ndarray, cfg: AugmentConfig) -> None:
    """In place on ``(N, C, H, W) float`` in [0, 255].

    Brightness blends with black, contrast with the image's mean grey level, saturation with the
    per-pixel grey image (RGB only); each result is clamped to [0, 255], as torchvision does.
    """
    cj = cfg.color_jitter
    n, c, h, w = x.shape

    def factor(name: str, s: float) -> torch.Tensor:
        f = _uniform(u[:, DRAW_COLUMNS[name]], 1 - s, 1 + s).astype(np.float32)
        return torch.from_numpy(f).view(n, 1, 1, 1)

    def grey() -> torch.Tensor:  # (N, 1, H, W), in a reused buffer
        g = torch.from_numpy(_scratch("grey", (n, 1, h, w), np.float32))
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


def _to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Round ``(N, C, H, W) float`` into a new C-contiguous ``(N, H, W, C) uint8`` array."""
    n, c, h, w = x.shape
    out = np.empty((n, h, w, c), dtype=np.uint8)
    _copy_channels(out, x.round_().clamp_(0, 255).numpy(), to_planar=False)
    return out


# ------------------------------------------------------------------------------ cutout
def _cutout_(x: np.ndarray, u: np.ndarray, size: int, p: float) -> None:
    """Zero a ``size`` x ``size`` square per selected image in place (clipped at the borders)."""
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


# ------------------------------------------------------------------------------- public
def augment_batch(
    images: np.ndarray,
    idx: np.ndarray,
    cfg: AugmentConfig,
    *,
    seed: int,
    epoch: int,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Augment a training batch; every draw comes from :func:`row_uniforms` ``(seed, epoch, idx)``.

    Techniques (each only when ``cfg.<name>.enabled``; a strength of 0 is the identity):

    - **random_crop** -- reflect-pad by ``padding`` and crop back at a random offset, i.e. shift
      by up to ``padding`` pixels. ``padding=4`` at 32 px (about 1/8 of the side). Source: the
      standard CIFAR augmentation (He et al. 2016); airbench ``batch_crop``.
    - **hflip** -- mirror left-right with probability ``p`` (0.5). Source: as above; airbench
      ``batch_flip_lr``. Not for digits/text, where mirroring changes the label.
    - **random_resized_crop** -- crop a box of area ``scale`` (fraction of the image) and aspect
      ``ratio`` (log-uniform) and resize it back. ImageNet: ``(0.08, 1)``; small images:
      ``(0.35, 1)``. Source: Szegedy et al. 2015 (Inception). The box is one draw clamped to the
      image instead of torchvision's 10 retries.
    - **rotation** -- rotate by ``U(-degrees, degrees)`` about the centre; 5-15 degrees.
    - **affine** -- shift by ``U(-translate, translate)`` of each side and shear along x by
      ``U(-shear, shear)`` degrees; translate 0.1, shear 5-10. Source: torchvision RandomAffine.
      The last three are composed into one 2x3 matrix per image and resampled once (bilinear
      ``grid_sample``; ``padding_mode`` fills what comes from outside the image).
    - **color_jitter** -- brightness, contrast, then saturation factors in ``[1 - s, 1 + s]``
      (blends with black, the image mean grey, the per-pixel grey; saturation only for C == 3);
      0.2-0.4. Source: torchvision ColorJitter (fixed order here).
    - **cutout** -- zero a ``size`` x ``size`` square with probability ``p``, centre uniform over
      the image, clipped at the borders; the paper uses 16 px on CIFAR-10, 8 px on CIFAR-100
      (32 px images). Source: DeVries & Taylor 2017.

    Order: crop+flip (uint8), one geometric resample, colour, cutout. With only crop and flip on,
    the batch never leaves uint8 numpy.

    Args:
        images: ``(N, H, W, C) uint8``; not modified.
        idx: ``(N,)`` int64 global row indices (the per-image random stream).
        cfg: which techniques and how strong.
        seed: run seed. epoch: epoch number (draws change every epoch).
        padding_mode: ``zeros`` (default, as torchvision's fill=0), ``reflection`` or ``border``:
            what the geometric resample reads outside the image.

    Returns:
        ``(N, H, W, C) uint8``, C-contiguous; ``images`` itself when nothing is enabled.

    Raises:
        ValueError: wrong rank/dtype, ``idx`` length != N, unknown ``padding_mode``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, H, W, C) uint8, got {images.shape} {images.dtype}")
    idx = np.asarray(idx)
    if idx.shape != (images.shape[0],):
        raise ValueError(f"idx must have shape ({images.shape[0]},), got {idx.shape}")
    if padding_mode not in ("zeros", "reflection", "border"):
        raise ValueError(f"padding_mode must be zeros, reflection or border, got {padding_mode!r}")
    n, h, w, c = images.shape
    crop = cfg.random_crop.enabled and cfg.random_crop.padding > 0
    flip = cfg.hflip.enabled and cfg.hflip.p > 0
    geometric = cfg.random_resized_crop.enabled or cfg.rotation.enabled or cfg.affine.enabled
    cj = cfg.color_jitter
    color = cj.enabled and (cj.brightness > 0 or cj.contrast > 0 or (cj.saturation > 0 and c == 3))
    cutout = cfg.cutout.enabled and cfg.cutout.p > 0
    if n == 0 or not (crop or flip or geometric or color or cutout):
        return images

    u = row_uniforms(seed, epoch, idx, N_DRAWS)
    col = DRAW_COLUMNS
    out = images
    if crop or flip:
        zeros = np.zeros(n, dtype=np.int64)
        shifts = []
        for name, size in (("crop_y", h), ("crop_x", w)):
            if not crop:
                shifts.append(zeros)
                continue
            pad = cfg.random_crop.padding
            d = np.floor(u[:, col[name]].astype(np.float64) * (2 * pad + 1)).astype(np.int64)
            shifts.append(d - pad)
        flips = u[:, col["flip"]] < cfg.hflip.p if flip else np.zeros(n, dtype=bool)
        out = _crop_flip(out, shifts[0], shifts[1], flips)

    theta = _affine_thetas(u, cfg, h, w) if geometric else None
    if theta is not None or color:
        # Float stage in planar NCHW: grid_sample's layout, and per-image/per-channel broadcasts
        # there are several times faster than over interleaved NHWC pixels.
        x = _to_planar_float(out)
        if theta is not None:
            x = F.grid_sample(x, _affine_grid(theta, h, w), mode="bilinear",
                              padding_mode=padding_mode, align_corners=False)
        if color:
            _color_jitter_(x, u, cfg)
        out = _to_uint8_nhwc(x)

    if cutout:
        if out is images:
            out = images.copy()
        _cutout_(out, u, cfg.cutout.size, cfg.cutout.p)
    return out


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
    c = images.shape[3]
    mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
    if mean_t.numel() not in (1, c) or std_t.numel() not in (1, c):
        raise ValueError(f"mean/std need 1 or {c} values, got {mean_t.numel()} and {std_t.numel()}")
    if bool((std_t <= 0).any()):
        raise ValueError(f"std must be > 0, got {std_t.tolist()}")
    n, h, w, _ = images.shape
    # Work on (N*H, W*C) rows with the per-channel constants tiled W times: a broadcast over a
    # long contiguous row vectorises, one over the trailing C=3 axis of NHWC does not (~6x).
    scale = (1.0 / (255.0 * std_t)).expand(c).repeat(w).to(images.device)
    shift = (mean_t / std_t).expand(c).repeat(w).to(images.device)
    x = images.contiguous().view(n * h, w * c).to(torch.float32)
    x.mul_(scale).sub_(shift)
    if dtype != torch.float32:
        x = x.to(dtype)
    x = x.view(n, h, w, c).permute(0, 3, 1, 2)  # NCHW view of NHWC memory = channels_last
    return x if channels_last else x.contiguous()


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
            **{k: {"enabled": True} for k in AugmentConfig.model_fields}
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
