"""Counter-based per-image random draws for batch augmentation. No Ray, no torch.

:func:`row_uniforms` hashes ``(seed, epoch, row idx, column)``, so an image (named by its global
int64 row index) gets the same draws for the same ``(seed, epoch)`` whatever batch, block or
worker it lands in, and fresh draws every epoch. Each technique reads its own fixed columns
(:data:`DRAW_COLUMNS`), so switching one technique on or off never shifts the draws of another.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DRAW_COLUMNS", "N_DRAWS", "row_seeds", "row_uniforms", "uniform"]

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
    # random_resized_crop from a larger stored image (cnn_ray.data.resized_crop): torchvision's
    # further attempts 1..9 of (area, ratio); attempt 0 is rrc_scale / rrc_ratio above
    **{f"rrc_{what}_{k}": 17 + 2 * (k - 1) + j for k in range(1, 10)
       for j, what in enumerate(("scale", "ratio"))},
    # per-image torch seeds (row_seeds, not row_uniforms) of the torchvision v2 ops
    # (cnn_ray.data.photo): the policy of augment.auto_augment, then augment.random_erasing
    "auto_augment_seed": 35,
    "random_erasing_seed": 36,
}
N_DRAWS = len(DRAW_COLUMNS)

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
    idx = _row_index(idx)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return (_row_hashes(seed, epoch, idx, np.arange(n)) >> np.uint64(40)).astype(
        np.float32) * np.float32(2.0**-24)


def _row_index(idx) -> np.ndarray:
    """``idx`` as a 1-D integer array. Raises ValueError naming its shape and dtype otherwise."""
    idx = np.asarray(idx)
    if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
        raise ValueError(f"idx must be a 1-D integer array, got {idx.shape} {idx.dtype}")
    return idx


def _row_hashes(seed: int, epoch: int, idx: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``(N, len(cols)) uint64``: the splitmix64 hash of ``(seed, epoch, idx[i], cols[k])``."""
    with np.errstate(over="ignore"):
        key = _mix64(np.array([int(seed) & _MASK64], dtype=np.uint64) + _GOLDEN)
        key = _mix64((key ^ np.uint64(int(epoch) & _MASK64)) + _GOLDEN)
        rows = _mix64((idx.astype(np.int64).view(np.uint64) ^ key) + _GOLDEN)
        # splitmix64 stream per row: the k-th output is mix(state + (k + 1) * golden).
        steps = ((np.asarray(cols, dtype=np.uint64) + np.uint64(1)) * _GOLDEN)[None, :]
        return _mix64(rows[:, None] + steps)


def row_seeds(seed: int, epoch: int, idx: np.ndarray, column: int) -> np.ndarray:
    """Per-image integer seeds: the full hash behind :func:`row_uniforms` column ``column``.

    For code that draws with torch's generator (torchvision ``transforms.v2``): seeding it per
    image with these gives each image the same draws for the same ``(seed, epoch)`` in any batch
    or worker, and new draws every epoch (as :func:`row_uniforms`; 63 bits, not 24).

    Returns:
        ``(N,) int64`` in ``[0, 2**63)``.

    Raises:
        ValueError: ``idx`` is not 1-D integer, or ``column < 0``.
    """
    idx = _row_index(idx)
    if column < 0:
        raise ValueError(f"column must be >= 0, got {column}")
    return (_row_hashes(seed, epoch, idx, np.array([column]))[:, 0] >> np.uint64(1)).astype(
        np.int64)

def uniform(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map draws ``u`` in ``[0, 1)`` onto ``[lo, hi)``, as float64 (same shape as ``u``)."""
    return lo + (hi - lo) * u.astype(np.float64)
