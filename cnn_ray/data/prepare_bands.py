"""Fitting the band transform of multi-band data in the prepare step (Ray Data tasks).

:func:`bands_mode` says whether a source is read as multi-band arrays; :func:`fit_bands`
samples :data:`SAMPLE_PIXELS` seeded pixels of ``data.band_sample_images`` seeded training tiles
in Ray Data tasks (:func:`sample_block` for files, :func:`sample_parquet_block` for Parquet raw
arrays) and fits the per-band scaling and optional PCA on the driver
(:func:`cnn_ray.data.bands.fit_band_transform`). The prepare step then decodes every tile through
that transform (:mod:`cnn_ray.data.decode_tasks`).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cnn_ray.config import DataConfig
from cnn_ray.data.bands import BandTransform, fit_band_transform, is_array_file, read_array, sample_pixels
from cnn_ray.data.decode import BadInputError
from cnn_ray.data.decode_tasks import array_values, parquet_work_items, read_file
from cnn_ray.data.sources import Source, SourceError

SAMPLE_PIXELS = 512  # pixels per sampled tile when fitting the band transform


def bands_mode(cfg: DataConfig, src: Source) -> bool:
    """Whether ``src`` is read as multi-band arrays through a :class:`BandTransform`: folder or
    manifest files with ``data.pca`` set, a band count other than 1/3/4, or ``.npy``/``.npz``
    tiles among them; Parquet raw arrays of uint16/float32 pixels, or with ``data.pca``
    (:mod:`cnn_ray.data.bands`)."""
    if src.kind == "parquet":
        return src.image_encoding == "array" and (src.array_dtype != "uint8" or cfg.pca is not None)
    return (cfg.pca is not None or cfg.channels not in (1, 3, 4)
            or any(is_array_file(r.path) for r in src.records))


def fit_bands(cfg: DataConfig, src: Source, is_train: np.ndarray, *, seed: int,
              concurrency: Optional[int], num_cpus: float) -> BandTransform:
    """Fit the band scaling (and ``data.pca``) on ``data.band_sample_images`` seeded training
    tiles (``is_train``: bool per row id of ``src``), :data:`SAMPLE_PIXELS` pixels each, read in
    Ray Data tasks of ``num_cpus`` logical CPUs, at most ``concurrency`` at once (default the
    cluster's CPUs): where the decoding runs, not on the driver.

    Raises:
        SourceError: no sampled tile could be read, or the tiles mix dtypes (names two files).
    """
    import ray.data

    rng = np.random.default_rng([seed, 2])
    if src.kind == "parquet":
        rows = np.flatnonzero(is_train)
        pick = np.sort(rng.choice(rows, size=min(len(rows), cfg.band_sample_images), replace=False))
        items = _parquet_sample_items(src, pick)
        fn, kw = sample_parquet_block, {"shape": src.image_shape, "dtype": src.array_dtype}
    else:
        train = [r for r in src.records if is_train[r.row]]
        pick = rng.choice(len(train), size=min(len(train), cfg.band_sample_images), replace=False)
        items = [{"path": train[i].path, "rid": train[i].row} for i in np.sort(pick)]
        fn, kw = sample_block, {"bands": cfg.channels}
    if not items:
        raise SourceError(f"{src.path}: no training tiles to fit the band transform on")
    pool = concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 2 * pool))
    ds = ds.map_batches(fn, batch_size=None, batch_format="pyarrow",
                        fn_kwargs={**kw, "pixels": SAMPLE_PIXELS, "seed": seed},
                        compute=ray.data.TaskPoolStrategy(size=min(pool, len(items))),
                        num_cpus=num_cpus, resources=cfg.resources or None)
    ds.context.enable_progress_bars = False
    chunks, dtypes = [], {}
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in block.to_pylist():
            if row["reason"] is None:
                chunks.append(np.frombuffer(row["pixels"], np.float64).reshape(-1, cfg.channels))
                dtypes.setdefault(row["dtype"], row["path"])
    if not chunks:
        raise SourceError(f"{src.path}: none of the {len(items)} sampled training tiles could be "
                          "read to fit the band transform (see the decode errors with "
                          "data.bad_input=fail)")
    if len(dtypes) > 1:
        (d1, f1), (d2, f2) = list(dtypes.items())[:2]
        raise SourceError(f"{src.path}: the tiles mix dtypes ({d1}: {f1}; {d2}: {f2}); one "
                          "band scaling needs one dtype: convert them to one")
    pca = cfg.pca
    try:
        return fit_band_transform(np.concatenate(chunks), next(iter(dtypes)),
                                  components=pca.components if pca else None,
                                  explained_variance=pca.explained_variance if pca else None,
                                  seed=seed)
    except ValueError as exc:
        raise SourceError(f"{src.path}: {exc}") from None


def _parquet_sample_items(src: Source, rows: np.ndarray) -> list[dict[str, Any]]:
    """One work item per row group holding sampled row ids: file, row group, the local row
    offsets inside the group and their row ids."""
    items = []
    for item in parquet_work_items(src):
        n = pq.ParquetFile(item["file"]).metadata.row_group(item["row_group"]).num_rows
        inside = rows[(rows >= item["rid"]) & (rows < item["rid"] + n)]
        if len(inside):
            items.append({"file": item["file"], "row_group": item["row_group"],
                          "local": (inside - item["rid"]).tolist(), "rids": inside.tolist()})
    return items


def sample_parquet_block(batch: pa.Table, *, shape: tuple[int, int, int], dtype: str, pixels: int,
                         seed: int) -> pa.Table:
    """Ray Data task: Parquet row groups -> ``pixels`` seeded raw pixels of each sampled row."""
    h, w, c = shape
    out = {"pixels": [], "dtype": [], "path": [], "reason": []}
    for item in batch.to_pylist():
        col = pq.ParquetFile(item["file"]).read_row_group(item["row_group"], columns=["image"])["image"]
        col = col.take(pa.array(item["local"]))
        values = array_values(col, len(item["local"]), h * w * c, dtype).reshape(-1, h, w, c)
        for arr, rid in zip(values, item["rids"]):
            out["pixels"].append(sample_pixels(arr, pixels, (seed, 3, rid)).tobytes())
            out["dtype"].append(dtype)
            out["path"].append(f"{item['file']} (row id {rid})")
            out["reason"].append(None)
    return pa.table({"pixels": pa.array(out["pixels"], pa.binary()),
                     "dtype": pa.array(out["dtype"], pa.string()),
                     "path": pa.array(out["path"], pa.string()),
                     "reason": pa.array(out["reason"], pa.string())})


def sample_block(batch: pa.Table, *, bands: int, pixels: int, seed: int) -> pa.Table:
    """Ray Data task: tiles -> ``pixels`` seeded raw pixels each (float64 bytes), their dtype,
    or the reason the tile could not be read."""
    out = {"pixels": [], "dtype": [], "path": [], "reason": []}
    for path, rid in zip(batch.column("path").to_pylist(), batch.column("rid").to_pylist()):
        try:
            arr = read_array(read_file(path), path, bands)
            out["pixels"].append(sample_pixels(arr, pixels, (seed, 3, rid)).tobytes())
            out["dtype"].append(str(arr.dtype))
            out["reason"].append(None)
        except (BadInputError, FileNotFoundError) as exc:
            out["pixels"].append(b"")
            out["dtype"].append("")
            out["reason"].append(str(exc))
        out["path"].append(path)
    return pa.table({"pixels": pa.array(out["pixels"], pa.binary()),
                     "dtype": pa.array(out["dtype"], pa.string()),
                     "path": pa.array(out["path"], pa.string()),
                     "reason": pa.array(out["reason"], pa.string())})

