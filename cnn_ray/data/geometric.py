"""Geometric batch augmentation: crop + flip in uint8, and one affine resample. No Ray.

Two stages, each on a whole ``(N, H, W, C)`` batch with per-image draws from
:func:`cnn_ray.data.draws.row_uniforms`:

* :func:`crop_flip` -- ``random_crop`` + ``hflip`` as uint8 block copies (no float conversion);
* :func:`affine_thetas` + :func:`affine_grid` -- ``random_resized_crop`` + ``rotation`` +
  ``affine`` composed into one 2x3 matrix per image, for a single bilinear ``grid_sample``.
"""

from __future__ import annotations

import numpy as np
import torch

from cnn_ray.config import AugmentConfig
from cnn_ray.data.buffers import scratch
from cnn_ray.data.draws import DRAW_COLUMNS, uniform
from cnn_ray.recipe.flip import alternating_flip_mask

__all__ = ["affine_grid", "affine_thetas", "crop_flip", "crop_flip_draws"]


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


def _shift_columns(mid: np.ndarray, xs: np.ndarray, ssx: np.ndarray, sflip: np.ndarray) -> None:
    """Write the sorted images ``xs`` into ``mid``, columns shifted by ``ssx`` (mirrored where
    ``sflip``), one block copy per run of images sharing ``(sx, flip)``; edges reflect-filled."""
    n, h, w, c = xs.shape
    s = mid.strides
    # (N, H*W*C) views of the same memory, for the non-mirrored groups' flat shifts.
    mid_flat = np.lib.stride_tricks.as_strided(mid, (n, h * w * c), (s[0], s[3]))
    xs_flat = xs.reshape(n, h * w * c)
    skey = ssx * 2 + sflip
    starts = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], n]):
        shift, mirror = int(ssx[a]), bool(sflip[a])
        if abs(shift) >= w:
            continue  # every column comes from the padding
        if mirror:
            _mirror_columns(mid[a:b], xs[a:b], shift)
        else:
            _shift_rows_flat(mid_flat[a:b], xs_flat[a:b], shift * c)
    _fill_edges(mid, xs, ssx, sflip)


def crop_flip(x: np.ndarray, sy: np.ndarray, sx: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Shift each image by ``(sy, sx)`` pixels with reflect fill, then mirror where ``flip``.

    Technique cards:

    - **random_crop** -- reflect-pad by ``padding`` and crop back at a random offset, i.e. shift
      by up to ``padding`` pixels. ``padding=4`` at 32 px (about 1/8 of the side). Source: the
      standard CIFAR augmentation (He et al. 2016); airbench ``batch_crop``.
    - **hflip** -- mirror left-right with probability ``p`` (0.5). Source: as above; airbench
      ``batch_flip_lr``. Not for digits/text, where mirroring changes the label.

    Same result as ``np.pad(x[i], reflect)[p+sy : p+sy+H, p+sx : p+sx+W]`` (then ``[:, ::-1]``)
    per image, built from block copies only:

    1. sort the images so that those sharing ``(sx, flip)`` form one contiguous slice;
    2. per slice, shift (one flat block copy) or mirror (per-channel copies) the columns into a
       buffer with ``py`` spare rows top and bottom, then fill the edge columns in one gather;
    3. reflect-fill those rows (whole-row copies);
    4. gather one ``H``-row window per image, undoing the sort: the only fresh allocation.

    Args:
        x: ``(N, H, W, C) uint8``; not modified. sy, sx: ``(N,)`` int64 shifts in pixels.
        flip: ``(N,)`` bool.

    Returns:
        A new ``(N, H, W, C) uint8`` array.
    """
    n, h, w, c = x.shape
    px, py = int(np.abs(sx).max()), int(np.abs(sy).max())
    order = np.argsort((sx + px) * 2 + flip, kind="stable")
    xs = scratch("sorted", x.shape, np.uint8)
    np.take(x, order, axis=0, out=xs)
    buf = scratch("shifted", (n, h + 2 * py, w, c), np.uint8)
    _shift_columns(buf[:, py : py + h], xs, sx[order], flip[order])
    if py:
        buf[:, :py] = buf[:, py + _reflect_index(np.arange(-py, 0), h)]
        buf[:, py + h :] = buf[:, py + _reflect_index(np.arange(h, h + py), h)]
    s = buf.strides
    windows = np.lib.stride_tricks.as_strided(
        buf, (n, 2 * py + 1, h, w, c), (s[0], s[1], s[1], s[2], s[3]), writeable=False
    )
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    return windows[inverse, sy + py]


def crop_flip_draws(
    u: np.ndarray, cfg: AugmentConfig, *, crop: bool, flip: bool, idx: np.ndarray, epoch: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-image ``(sy, sx, flip)`` arguments of :func:`crop_flip` from the draws ``u``.

    ``hflip.mode``: ``random`` -- image ``i`` is flipped when its ``flip`` draw is below
    ``hflip.p`` (a fresh coin every epoch); ``alternating`` -- it is flipped when
    :func:`cnn_ray.recipe.alternating_flip_mask` ``(idx, epoch, seed)`` says so (a coin per
    image on epoch 0, then the opposite of the previous epoch's state; ``p`` unused), so each
    image is seen both ways in any two consecutive epochs. Card: :mod:`cnn_ray.recipe.flip`.

    Args:
        u: ``(N, N_DRAWS) float32`` from :func:`~cnn_ray.data.draws.row_uniforms`.
        cfg: ``random_crop.padding``, ``hflip.p`` and ``hflip.mode`` are read.
        crop, flip: whether each technique is on (off: zero shifts / no flips).
        idx: ``(N,)`` int64 global row indices (the rows ``u`` was drawn for).
        epoch: the 0-based training epoch; ``alternating`` flips on its parity.
        seed: the run seed (``alternating``: the epoch-0 coin of each row).

    Returns:
        ``sy, sx``: ``(N,)`` int64 in ``[-padding, padding]``; ``flip``: ``(N,)`` bool.
    """
    n = u.shape[0]
    zeros = np.zeros(n, dtype=np.int64)
    shifts = []
    for name in ("crop_y", "crop_x"):
        if not crop:
            shifts.append(zeros)
            continue
        pad = cfg.random_crop.padding
        d = np.floor(u[:, DRAW_COLUMNS[name]].astype(np.float64) * (2 * pad + 1)).astype(np.int64)
        shifts.append(d - pad)
    if not flip:
        flips = np.zeros(n, dtype=bool)
    elif cfg.hflip.mode == "alternating":
        flips = alternating_flip_mask(idx, epoch, seed)
    else:
        flips = u[:, DRAW_COLUMNS["flip"]] < cfg.hflip.p
    return shifts[0], shifts[1], flips


# --------------------------------------------------------------- geometric (one resample)
def _then(m: np.ndarray, a: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compose the ``(N, 2, 2)`` linear maps ``m`` after the map ``(a, off)``."""
    return m @ a, np.einsum("nij,nj->ni", m, off)


def _translate_shear_rotate(
    u: np.ndarray, cfg: AugmentConfig, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(A, offset)`` of ``R @ Sh @ (p - t)`` in centred pixel coordinates: ``(N, 2, 2)``,
    ``(N, 2)`` float64 (the identity where ``affine``/``rotation`` are off)."""
    n = u.shape[0]
    col = DRAW_COLUMNS
    a = np.broadcast_to(np.eye(2), (n, 2, 2)).copy()
    off = np.zeros((n, 2))
    rot, aff = cfg.rotation, cfg.affine
    if aff.enabled and aff.translate > 0:
        off[:, 0] = -uniform(u[:, col["translate_x"]], -aff.translate, aff.translate) * w
        off[:, 1] = -uniform(u[:, col["translate_y"]], -aff.translate, aff.translate) * h
    if aff.enabled and aff.shear > 0:
        sh = np.tan(np.deg2rad(uniform(u[:, col["shear"]], -aff.shear, aff.shear)))
        m = np.broadcast_to(np.eye(2), (n, 2, 2)).copy()
        m[:, 0, 1] = sh
        a, off = _then(m, a, off)
    if rot.enabled and rot.degrees > 0:
        ang = np.deg2rad(uniform(u[:, col["rotation"]], -rot.degrees, rot.degrees))
        cos, sin = np.cos(ang), np.sin(ang)
        m = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
        a, off = _then(m, a, off)
    return a, off


def _resized_crop(
    u: np.ndarray, cfg: AugmentConfig, h: int, w: int, a: np.ndarray, off: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Follow ``(a, off)`` by the resized-crop box: scale ``D`` to the box, move to its centre."""
    rrc, col = cfg.random_resized_crop, DRAW_COLUMNS
    area = uniform(u[:, col["rrc_scale"]], *rrc.scale) * (h * w)
    ratio = np.exp(uniform(u[:, col["rrc_ratio"]], *np.log(rrc.ratio)))
    # One draw, clamped to the image (torchvision retries 10x, then falls back to a centre
    # crop); clamping keeps it vectorised at a small bias towards less extreme boxes.
    cw = np.minimum(np.sqrt(area * ratio), w)
    ch = np.minimum(np.sqrt(area / ratio), h)
    cx = u[:, col["rrc_x"]] * (w - cw) + cw / 2 - w / 2
    cy = u[:, col["rrc_y"]] * (h - ch) + ch / 2 - h / 2
    a[:, 0] *= (cw / w)[:, None]
    a[:, 1] *= (ch / h)[:, None]
    return a, off * np.stack([cw / w, ch / h], -1) + np.stack([cx, cy], -1)


def affine_thetas(u: np.ndarray, cfg: AugmentConfig, h: int, w: int) -> np.ndarray | None:
    """Per-image ``(N, 2, 3)`` float64 output->input maps in ``affine_grid`` normalised coords.

    Technique cards (composed into one matrix per image, resampled once):

    - **random_resized_crop** -- crop a box of area ``scale`` (fraction of the image) and aspect
      ``ratio`` (log-uniform) and resize it back. ImageNet: ``(0.08, 1)``; small images:
      ``(0.35, 1)``. Source: Szegedy et al. 2015 (Inception). The box is one draw clamped to the
      image instead of torchvision's 10 retries.
    - **rotation** -- rotate by ``U(-degrees, degrees)`` about the centre; 5-15 degrees.
    - **affine** -- shift by ``U(-translate, translate)`` of each side and shear along x by
      ``U(-shear, shear)`` degrees; translate 0.1, shear 5-10. Source: torchvision RandomAffine.

    Built in centred pixel coordinates (x right, y down, origin at the image centre) so rotation
    and shear stay angle-true on non-square images, as ``p_in = D @ R @ Sh @ (p_out - t) + c``:
    translate ``t``, shear ``Sh``, rotation ``R``, then the resized-crop box (scale ``D``, centre
    ``c``).

    Args:
        u: ``(N, N_DRAWS) float32`` draws. cfg: the three techniques' settings. h, w: image size.

    Returns:
        ``(N, 2, 3)`` float64, or None when every matrix is the identity (nothing to resample).
    """
    n = u.shape[0]
    a, off = _translate_shear_rotate(u, cfg, h, w)
    if cfg.random_resized_crop.enabled:
        a, off = _resized_crop(u, cfg, h, w, a, off)
    # To normalised coords: S^-1 A S with S = diag(w/2, h/2), offset / (w/2, h/2).
    theta = np.empty((n, 2, 3))
    theta[:, 0, 0], theta[:, 0, 1] = a[:, 0, 0], a[:, 0, 1] * (h / w)
    theta[:, 1, 0], theta[:, 1, 1] = a[:, 1, 0] * (w / h), a[:, 1, 1]
    theta[:, 0, 2], theta[:, 1, 2] = off[:, 0] * (2 / w), off[:, 1] * (2 / h)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if np.all(np.abs(theta - identity) < 1e-9):
        return None
    return theta


def affine_grid(theta: np.ndarray, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, h, w), align_corners=False)`` written plane by plane.

    ``affine_grid`` runs a batched matmul with an inner size of 3, several times slower on CPU
    than two broadcast multiply-adds per plane.

    Args:
        theta: ``(N, 2, 3)`` float output->input maps. h, w: output size in pixels.

    Returns:
        ``(N, h, w, 2) float32`` sampling grid (a view of a reused buffer; consume it at once).
    """
    n = theta.shape[0]
    t = theta.astype(np.float32)
    xs = (np.arange(w, dtype=np.float32) * 2 + 1) / w - 1
    ys = (np.arange(h, dtype=np.float32) * 2 + 1) / h - 1
    # Planes stored (N, 2, H, W) and handed over as an (N, H, W, 2) view: contiguous writes here,
    # and grid_sample reads a planar grid slightly faster than an interleaved one.
    grid = scratch("grid", (n, 2, h, w), np.float32)
    for k in range(2):
        along_x = t[:, k, 0, None, None] * xs[None, None, :] + t[:, k, 2, None, None]
        np.add(along_x, t[:, k, 1, None, None] * ys[None, :, None], out=grid[:, k])
    return torch.from_numpy(grid).permute(0, 2, 3, 1)
