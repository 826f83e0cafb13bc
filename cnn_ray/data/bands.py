"""Multi-band arrays: read ``.npy``/``.npz``/GeoTIFF tiles, scale each band to 8 bits, and
reduce the bands with PCA. No Ray here.

Hyperspectral and multispectral tiles (seed 000: satellite tiles with tens of bands) arrive as
arrays of any band count and dtype (``uint8``, ``uint16``, ``float32``; other real dtypes are
read the same way). cnn_ray stores every prepared image as ``uint8`` (so the pipeline, the
memory cache and the augmentations stay the same for photos and tiles); a
:class:`BandTransform` fitted on the training split at prepare time does the conversion, and is
stored with the prepared data and in every checkpoint, so validation, evaluation, prediction
and export apply the very same numbers.

The transform, per pixel ``x`` (``C`` bands, float64):

1. **Per-band scaling**: ``u = (x - lo) / (hi - lo)`` with ``lo``/``hi`` the 0.1 / 99.9th
   percentiles of the band over a pixel sample of the training split (``uint8`` inputs keep
   ``lo = 0, hi = 255``). Robust to a few hot pixels; values outside are clipped in step 3.
2. **PCA band reduction** (optional, ``data.pca``): ``z = (u - mean) @ components.T``, the
   ``k`` leading principal components of the scaled training pixels (scikit-learn's
   :class:`sklearn.decomposition.PCA`; technique: Rodarmel & Shan 2002, "Principal component
   analysis for hyperspectral image classification"; pixels are the samples, bands the
   features, as in seed 000). Each component is then scaled by its own 0.1 / 99.9th
   percentiles: ``u = (z - out_lo) / (out_hi - out_lo)``.
3. **8 bits**: ``round(clip(u, 0, 1) * 255)`` as ``uint8``.

The training job then normalises each stored band by its training-split mean/std, as for
photos. Precision: 8 bits per stored band, i.e. 1/255 of the band's (robust) training range.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from cnn_ray.data.decode import BadInputError

__all__ = ["ARRAY_EXTENSIONS", "BandTransform", "fit_band_transform", "is_array_file",
           "read_array", "to_hwc", "sample_pixels"]

ARRAY_EXTENSIONS = frozenset({".npy", ".npz"})
TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
PERCENTILES = (0.1, 99.9)


def is_array_file(path: str) -> bool:
    """A ``.npy`` or ``.npz`` file (any case)."""
    return os.path.splitext(path)[1].lower() in ARRAY_EXTENSIONS


def read_array(data: bytes, path: str, bands: int) -> np.ndarray:
    """One tile's bytes -> ``(H, W, bands)`` array of the file's own dtype.

    ``.npy``: the array. ``.npz``: its only array, or the one named ``image``. ``.tif``/``.tiff``:
    read with ``tifffile`` (the ``geo`` extra: ``pip install cnn-ray[geo]``). Anything else is
    decoded with Pillow in its own mode. ``(H, W)`` is one band; ``(C, H, W)`` (band-first, as
    GeoTIFF readers return it) is transposed when ``C == bands`` and the last axis is not.

    Raises:
        BadInputError: not an array of that kind, no usable array in an ``.npz``, a non-real
            dtype, or a band count other than ``bands`` (the message gives the shape found).
    """
    ext = os.path.splitext(path)[1].lower()
    if not data:
        raise BadInputError(path, "empty file (0 bytes)")
    try:
        if ext == ".npy":
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        elif ext == ".npz":
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                keys = list(z.keys())
                key = "image" if "image" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise BadInputError(path, f".npz holds {len(keys)} arrays {keys[:5]} and none "
                                              "is named 'image'")
                arr = z[key]
        elif ext in TIFF_EXTENSIONS:
            arr = _read_tiff(data, path)
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                arr = np.asarray(img)
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 (numpy/tifffile/Pillow raise many kinds on bad bytes)
        raise BadInputError(path, f"cannot read array: {type(exc).__name__}: {exc}") from None
    if arr.dtype.kind not in "uif":
        raise BadInputError(path, f"array dtype {arr.dtype} is not a real number type "
                                  "(expected uint8, uint16 or float32)")
    return to_hwc(arr, bands, path)


def _read_tiff(data: bytes, path: str) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        raise BadInputError(path, "reading multi-band TIFF needs tifffile: pip install "
                                  "'cnn-ray[geo]' (or tifffile)") from None
    return tifffile.imread(io.BytesIO(data))


def to_hwc(arr: np.ndarray, bands: int, path: str = "") -> np.ndarray:
    """``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` -> ``(H, W, C)`` with ``C == bands``.

    Raises:
        BadInputError: the shape holds no axis of ``bands`` bands where one is expected.
    """
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise BadInputError(path, f"array of shape {tuple(arr.shape)}: expected (H, W) or "
                                  f"(H, W, {bands}) or ({bands}, H, W)")
    if arr.shape[2] != bands and arr.shape[0] == bands:
        arr = np.moveaxis(arr, 0, 2)
    if arr.shape[2] != bands:
        raise BadInputError(path, f"array of shape {tuple(arr.shape)} has {arr.shape[2]} bands, "
                                  f"expected {bands} (data.channels)")
    if min(arr.shape[:2]) < 1:
        raise BadInputError(path, f"array of shape {tuple(arr.shape)} holds no pixels")
    return arr


def sample_pixels(arr: np.ndarray, n: int, seed: Sequence[int]) -> np.ndarray:
    """``n`` pixels (with replacement, seeded) of an ``(H, W, C)`` array as ``(n, C) float64``."""
    h, w, c = arr.shape
    flat = arr.reshape(h * w, c)
    idx = np.random.default_rng(list(seed)).integers(0, h * w, size=n)
    return flat[idx].astype(np.float64)


@dataclass(frozen=True)
class BandTransform:
    """Raw bands -> stored ``uint8`` bands (see the module docstring for the three steps).

    Attributes:
        in_bands: ``C``, bands of the raw tiles.
        source_dtype: dtype of the training tiles the transform was fitted on (``uint16``, ...).
        lo, hi: ``(C,)`` per-band scaling range, raw units.
        pca_mean: ``(C,)`` mean of the scaled training pixels, or None without PCA.
        components: ``(k, C)`` principal axes (rows, unit length), or None.
        out_lo, out_hi: ``(k,)`` per-component range, or None.
        explained_variance_ratio: ``(k,)`` share of the scaled pixels' variance per component.
    """

    in_bands: int
    source_dtype: str
    lo: np.ndarray
    hi: np.ndarray
    pca_mean: Optional[np.ndarray] = None
    components: Optional[np.ndarray] = None
    out_lo: Optional[np.ndarray] = None
    out_hi: Optional[np.ndarray] = None
    explained_variance_ratio: Optional[np.ndarray] = None

    @property
    def out_bands(self) -> int:
        """Bands stored per pixel: ``k`` with PCA, else ``in_bands``."""
        return self.in_bands if self.components is None else int(self.components.shape[0])

    @property
    def explained_variance(self) -> float:
        """Share of the scaled training pixels' variance kept (1.0 without PCA)."""
        return 1.0 if self.explained_variance_ratio is None else float(self.explained_variance_ratio.sum())

    def scaled(self, arr: np.ndarray) -> np.ndarray:
        """Steps 1-2 on ``(..., C)`` raw values -> ``(..., out_bands)`` float64 in about [0, 1]."""
        u = (np.asarray(arr, dtype=np.float64) - self.lo) / (self.hi - self.lo)
        if self.components is None:
            return u
        z = (u - self.pca_mean) @ self.components.T
        return (z - self.out_lo) / (self.out_hi - self.out_lo)

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """``(H, W, in_bands)`` (any real dtype) -> ``(H, W, out_bands)`` ``uint8``.

        Raises:
            ValueError: the last axis is not ``in_bands`` long.
        """
        if arr.shape[-1] != self.in_bands:
            raise ValueError(f"band transform expects {self.in_bands} bands, got shape {arr.shape}")
        return np.rint(np.clip(self.scaled(arr), 0.0, 1.0) * 255.0).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists of floats); inverse of :meth:`from_dict`."""
        def lst(a):
            return None if a is None else np.asarray(a, dtype=np.float64).tolist()

        return {"in_bands": self.in_bands, "out_bands": self.out_bands,
                "source_dtype": self.source_dtype, "lo": lst(self.lo), "hi": lst(self.hi),
                "pca_mean": lst(self.pca_mean), "components": lst(self.components),
                "out_lo": lst(self.out_lo), "out_hi": lst(self.out_hi),
                "explained_variance_ratio": lst(self.explained_variance_ratio),
                "percentiles": list(PERCENTILES)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BandTransform":
        """Rebuild from :meth:`to_dict` (prepared.json ``bands``, a checkpoint's ``meta.json``)."""
        def arr(key):
            return None if d.get(key) is None else np.asarray(d[key], dtype=np.float64)

        return cls(in_bands=int(d["in_bands"]), source_dtype=str(d["source_dtype"]), lo=arr("lo"),
                   hi=arr("hi"), pca_mean=arr("pca_mean"), components=arr("components"),
                   out_lo=arr("out_lo"), out_hi=arr("out_hi"),
                   explained_variance_ratio=arr("explained_variance_ratio"))

    def describe(self, image_size: int) -> str:
        """One line: bands in/out, explained variance, input bytes per image before/after."""
        before = image_size * image_size * self.in_bands * np.dtype(self.source_dtype).itemsize
        after = image_size * image_size * self.out_bands
        pca = (f" -> {self.out_bands} PCA components ({100 * self.explained_variance:.2f}% of the "
               "variance)" if self.components is not None else " -> 8 bits per band")
        return (f"bands: {self.in_bands} x {self.source_dtype}{pca}; input bytes per "
                f"{image_size}x{image_size} image {before} -> {after} ({before / after:.1f}x fewer)")


def fit_band_transform(pixels: np.ndarray, source_dtype: str, *, components: Optional[int] = None,
                       explained_variance: Optional[float] = None, seed: int = 0) -> BandTransform:
    """Fit a :class:`BandTransform` on a ``(P, C)`` pixel sample of the training split.

    Args:
        pixels: raw values, ``(P, C)``, any real dtype (``P`` in the 10^4..10^6 range is plenty).
        source_dtype: the tiles' dtype name; ``uint8`` keeps the scaling at ``[0, 255]``.
        components: keep this many principal components (``1 <= k <= C``).
        explained_variance: or keep the fewest components whose explained variance ratios sum
            to at least this share (``0 < v <= 1``). Neither: no PCA.
        seed: scikit-learn's ``random_state`` (used by its randomised solvers).

    Raises:
        ValueError: an empty sample, non-finite values, ``components`` above ``C``, or both
            PCA settings given.
    """
    x = np.asarray(pixels, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"band transform: need a (P >= 2, C) pixel sample, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("band transform: the training pixels hold NaN or infinite values")
    c = x.shape[1]
    if np.dtype(source_dtype) == np.uint8:
        lo, hi = np.zeros(c), np.full(c, 255.0)
    else:
        lo, hi = np.percentile(x, PERCENTILES, axis=0)
        hi = np.where(hi > lo, hi, lo + 1.0)  # a constant band maps to 0
    if components is None and explained_variance is None:
        return BandTransform(c, str(np.dtype(source_dtype)), lo, hi)
    if components is not None and explained_variance is not None:
        raise ValueError("data.pca: give components or explained_variance, not both")
    if components is not None and not 1 <= components <= c:
        raise ValueError(f"data.pca.components is {components}; the tiles have {c} bands")
    from sklearn.decomposition import PCA

    u = (x - lo) / (hi - lo)
    pca = PCA(n_components=components if components is not None else explained_variance,
              svd_solver="full", random_state=seed).fit(u)
    z = pca.transform(u)
    out_lo, out_hi = np.percentile(z, PERCENTILES, axis=0)
    out_hi = np.where(out_hi > out_lo, out_hi, out_lo + 1.0)
    return BandTransform(c, str(np.dtype(source_dtype)), lo, hi, pca_mean=pca.mean_,
                         components=pca.components_, out_lo=out_lo, out_hi=out_hi,
                         explained_variance_ratio=pca.explained_variance_ratio_)
