"""Decoding in Ray Data tasks: work items -> decoded, resized pyarrow tables.

Shared by the prepare step (:func:`cnn_ray.data.prepare.prepare_dataset`, through
:func:`decoded_blocks`) and the raw-data path (:func:`cnn_ray.data.pipeline.decode_raw_dataset`,
which maps :func:`decode_block` over :func:`parquet_work_items` or one item per file).

A work item is a file (``path``, ``label``, ``rid``: its row id in the source) or a Parquet row
group (``file``, ``row_group``, ``file_row``, ``rid`` of its first row). :func:`decode_block`
turns a block of them into tables of ``image`` (fixed-size binary of a ``(size, size, C)``
uint8 HWC image), ``label`` (int64), ``rid`` (int64), ``path`` and ``reason`` (set on bad rows
only: their image is zeros), ``node`` (set where the file was not found on the decoding node)
and ``s``/``ss`` (per-row int64 channel sums and sums of squares of the uint8 pixels,
:func:`cnn_ray.data.shards.channel_sums`, for the statistics). The
per-image work is :mod:`cnn_ray.data.decode` (encoded images) and
:mod:`cnn_ray.data.bands` (multi-band arrays). Ray is only imported by :func:`decoded_blocks`
and :func:`node_name`; the task functions themselves run without it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cnn_ray.config import DataConfig
from cnn_ray.data import remote
from cnn_ray.data.bands import BandTransform, read_array
from cnn_ray.data.decode import BadInputError, decode_image, resize_array
from cnn_ray.data.shards import channel_sums, fixed_size_binary
from cnn_ray.data.sources import Source, SourceError
from cnn_ray.io import is_uri

_BLOCK_BYTES = 8 << 20  # decoded bytes per Ray Data block (~a few hundred CIFAR images ... 50 ImageNet)


def decoded_blocks(src: Source, keep: np.ndarray, cfg: DataConfig, *, seed: int,
                   concurrency: Optional[int], num_cpus: float,
                   transform: Optional[BandTransform] = None) -> Iterator[pa.Table]:
    """Ray Data pipeline: work items -> read + decode/resize in parallel tasks -> pyarrow blocks
    (the tables of :func:`decode_block`, in a fixed order for the same input and seed).

    Folder/manifest: one item per image whose row id ``keep`` (bool, one per row id) marks, as
    (path, label, row id) in a seeded random order, cut into blocks of a few hundred. Parquet:
    every row (``keep`` unused), one item per row group, read and decoded in the task in slices
    of ``rows_per_block`` (ray.data.read_parquet was slow to start on tiny inputs here and does
    not give row ids). ``concurrency``: most tasks at once (default the cluster's CPUs);
    ``num_cpus``: logical CPUs per task; ``transform``: the band transform of multi-band data.
    """
    import ray
    import ray.data

    size, channels = cfg.stored_size, cfg.channels  # data.store_size, else image_size
    rows_per_block = max(16, min(512, _BLOCK_BYTES // (size * size * channels)))
    bands = transform.to_dict() if transform is not None else None
    pool = concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized()
                              else os.cpu_count() or 1)
    fn_kwargs = {"size": size, "channels": channels, "encoding": src.image_encoding,
                 "src_shape": src.image_shape, "rows_per_block": rows_per_block, "bands": bands,
                 "dtype": src.array_dtype}
    if src.kind == "parquet":
        items = parquet_work_items(src)
        batch_size = 1
    else:
        kept = [r for r in src.records if keep[r.row]]
        order = np.random.default_rng([seed, 1]).permutation(len(kept))  # shards then hold all classes
        items = [{"path": kept[i].path, "label": kept[i].label, "rid": kept[i].row} for i in order]
        batch_size = max(1, min(rows_per_block, math.ceil(len(items) / (2 * pool))))
    if not items:
        return
    num_blocks = math.ceil(len(items) / batch_size)
    ds = ray.data.from_items(items, override_num_blocks=num_blocks)
    ds = ds.map_batches(decode_block, batch_size=batch_size, batch_format="pyarrow",
                        fn_kwargs=fn_kwargs, compute=ray.data.TaskPoolStrategy(size=min(pool, num_blocks)),
                        num_cpus=num_cpus, resources=cfg.resources or None)
    ds.context.execution_options.preserve_order = True  # same input -> same order -> same idx
    ds.context.enable_progress_bars = False  # our own progress line instead
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)


def parquet_work_items(src: Source) -> list[dict[str, Any]]:
    """One decode work item per row group of a Parquet source: file, row group, first rows."""
    items, first = [], 0
    for f in src.files:
        meta, local = pq.read_metadata(f), 0
        for g in range(meta.num_row_groups):
            items.append({"file": f, "row_group": g, "file_row": local, "rid": first})
            local += meta.row_group(g).num_rows
            first += meta.row_group(g).num_rows
    return items


def decode_block(batch: pa.Table, *, rows_per_block: int, **kw) -> Iterator[pa.Table]:
    """Ray Data task: a block of work items -> decoded tables (bad rows: zero image + a reason;
    columns in the module docstring). ``kw``: ``size``, ``channels``, ``encoding`` (``file``,
    ``bytes`` or ``array``), ``src_shape``, ``bands``, ``dtype`` (see :func:`_decode_rows`);
    a Parquet row group is yielded in tables of at most ``rows_per_block`` rows."""
    if "row_group" not in batch.column_names:
        rid = batch.column("rid").cast(pa.int64())
        yield _decode_rows(batch.column("path").to_pylist(), None, batch.column("label"), rid, **kw)
        return
    for item in batch.to_pylist():
        offset = 0
        for part in pq.ParquetFile(item["file"]).iter_batches(
                batch_size=rows_per_block, row_groups=[item["row_group"]], columns=["image", "label"]):
            n = part.num_rows
            rid = pa.array(np.arange(item["rid"] + offset, item["rid"] + offset + n, dtype=np.int64))
            yield _decode_rows([item["file"]] * n, part.column("image"), part.column("label"), rid,
                               first_row=item["file_row"] + offset, **kw)
            offset += n


def _decode_rows(paths: list[str], column: Optional[pa.Array], label: pa.Array, rid: pa.Array, *,
                 size: int, channels: int, encoding: str, src_shape: Optional[tuple[int, int, int]],
                 first_row: Optional[int] = None, bands: Optional[dict] = None,
                 dtype: str = "uint8") -> pa.Table:
    """Decode ``n`` images given as files (``column=None``), encoded bytes, or raw arrays.

    ``bands`` (a :meth:`BandTransform.to_dict`): the files are multi-band tiles of ``channels``
    bands, read as arrays and mapped to ``bands["out_bands"]`` uint8 bands by the transform;
    raw-array rows (``dtype`` pixels) go through it too."""
    n = len(paths)
    transform = BandTransform.from_dict(bands) if bands is not None else None
    out_channels = transform.out_bands if transform is not None else channels
    images = np.zeros((n, size, size, out_channels), dtype=np.uint8)
    reasons: list[Optional[str]] = [None] * n
    nodes: list[Optional[str]] = [None] * n  # set where the file is not found on this node
    if encoding == "array":
        h, w, c = src_shape
        raw = array_values(column, n, h * w * c, dtype).reshape(n, h, w, c)
        for i in range(n):
            images[i] = resize_array(transform.apply(raw[i]) if transform is not None else raw[i], size)
    else:
        blobs = column.to_pylist() if column is not None else None
        for i in range(n):
            name = paths[i] if first_row is None else f"{paths[i]} (row {first_row + i})"
            try:
                data = blobs[i] if blobs is not None else read_file(paths[i])
                if transform is not None:
                    images[i] = resize_array(transform.apply(read_array(data, name, channels)), size)
                else:
                    images[i] = decode_image(data or b"", size=size, channels=channels, path=name)
            except FileNotFoundError:
                nodes[i] = node_name()
                reasons[i] = f"file not found on node {nodes[i]}"
            except BadInputError as exc:
                reasons[i] = exc.reason if first_row is None else f"row {first_row + i}: {exc.reason}"
    s, ss = channel_sums(images)
    return pa.table({
        "image": fixed_size_binary(images),
        "label": label.cast(pa.int64()),
        "rid": rid,
        "path": pa.array([p if r else None for p, r in zip(paths, reasons)], pa.string()),
        "reason": pa.array(reasons, pa.string()),
        "node": pa.array(nodes, pa.string()),
        "s": pa.FixedSizeListArray.from_arrays(pa.array(s.ravel()), out_channels),
        "ss": pa.FixedSizeListArray.from_arrays(pa.array(ss.ravel()), out_channels),
    })


def read_file(path: str) -> bytes:
    """The file's bytes (a local path or a storage URI, :mod:`cnn_ray.data.remote`). Raises
    ``FileNotFoundError`` (missing here) or :class:`BadInputError`."""
    try:
        if is_uri(path):
            return remote.read_bytes(path)
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BadInputError(path, f"cannot read file: {exc.strerror or exc}") from None


def array_values(col: pa.ChunkedArray, n: int, width: int, dtype: str = "uint8") -> np.ndarray:
    """Flat pixels (``n * width`` values) of a raw-array image column (fixed_size_binary of
    uint8, or a (fixed-size) list of ``dtype``), as that numpy dtype. Raises
    :class:`SourceError` when the column holds another number of values per row."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr.type, pa.ExtensionType):
        arr = arr.storage
    if pa.types.is_fixed_size_binary(arr.type):
        out = np.frombuffer(arr.buffers()[1], np.uint8, count=n * width, offset=arr.offset * width)
    else:
        out = arr.flatten().to_numpy(zero_copy_only=False)
    if out.size != n * width:
        raise SourceError(f"image arrays hold {out.size / max(n, 1):.0f} values per row, expected {width}")
    return out.astype(dtype, copy=False)


def node_name() -> str:
    """This process's Ray node id (``ray.get_runtime_context().get_node_id()``) and host name;
    the host name alone outside Ray."""
    import socket

    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{ray.get_runtime_context().get_node_id()} ({host})"
    except Exception:  # noqa: BLE001 (a name for a message: never fail here)
        pass
    return host

