"""The prepare step: decode every input image once into fixed-size Parquet shards (Ray Data glue).

:func:`prepare_dataset` lists the input (:func:`cnn_ray.data.sources.discover`), decodes and
resizes every image once in parallel Ray Data tasks, splits train/val, and writes::

    out_dir/
      prepared.json        fingerprint, class_names, mean, std, image_shape, counts, shards, bad_count
      bad_inputs.jsonl     one {"path", "reason", "split"} per input left out (or noted)
      train/part-00000.parquet ...   shard_size rows each (the last one smaller)
      val/part-00000.parquet ...

Shard schema: ``image`` ``fixed_size_binary(H*W*C)`` (HWC ``uint8`` bytes), ``label`` ``int64``,
``idx`` ``int64``. ``idx`` runs ``0..num_rows-1`` within a split: unique and stable for the same
input and settings (the augmentation RNG keys on it). Each file's metadata key ``cnn_ray`` holds
JSON ``{class_names, mean, std, image_shape, split, num_rows}``; ``mean``/``std`` are per channel,
in ``[0, 1]`` units, of the training split, and are the same in every shard of both splits.

Folder/manifest rows are written in a seeded random order (so a shard holds every class and
a local shuffle buffer sees a mix); Parquet inputs keep their row order.

Caching: the fingerprint hashes the input listing (paths, sizes, mtimes) and the settings
that change the output (image_size, channels, val, val_fraction, format, shard_size, seed). A
re-run with the same fingerprint returns the existing data without work unless ``force=True``.
The data is built in ``<out_dir>.tmp-<pid>`` and renamed into place, so an interrupted run never
leaves a complete-looking ``out_dir``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cnn_ray.config import DataConfig
from cnn_ray.data.decode import BadInputError, decode_image, resize_array
from cnn_ray.data.sources import METADATA_KEY, Source, SourceError, discover, read_metadata, split_holdout

PREPARE_VERSION = 1  # bump when the output layout or decode recipe changes (invalidates caches)
_TRAIN, _VAL, _DROP = 0, 1, -1
_SPLITS = ("train", "val")
_BLOCK_BYTES = 8 << 20  # decoded bytes per Ray Data block (~a few hundred CIFAR images ... 50 ImageNet)
_ROW_GROUP_BYTES = 32 << 20  # decoded bytes per Parquet row group
_MAX_OPEN_SHARDS = 128  # shard files kept open per split until their metadata is final


@dataclass
class PreparedData:
    """A prepared dataset on disk (see the module docstring for the layout).

    ``mean``/``std``: per channel, ``[0, 1]`` units, of the training split.
    ``image_shape``: ``(H, W, C)``. ``train_files``/``val_files``: absolute shard paths in order.
    """

    root: str
    class_names: list[str]
    mean: list[float]
    std: list[float]
    image_shape: tuple[int, int, int]
    num_train: int
    num_val: int
    train_files: list[str]
    val_files: list[str]
    bad_count: int
    fingerprint: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------- public API
def prepare_dataset(
    cfg: DataConfig,
    out_dir: str,
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    concurrency: Optional[int] = None,
    num_cpus: float = 0.25,
) -> PreparedData:
    """Decode ``cfg.train`` (and ``cfg.val``) once into Parquet shards under ``out_dir``.

    Args:
        cfg: the data settings (train/val paths, format, image_size, channels, val_fraction,
            shard_size, bad_input).
        out_dir: where the prepared dataset goes (created; replaced when stale or ``force``).
        seed: seeds the held-out split and the row order.
        force: rebuild even if ``out_dir`` is up to date.
        progress: print a progress line every few seconds (and the skip notice).
        concurrency: most decode tasks at once; default the cluster's CPU count.
        num_cpus: logical CPUs each decode task reserves (fractional, so prepare runs while
            other work holds CPUs).

    Returns:
        The :class:`PreparedData` now in ``out_dir``.

    Raises:
        BadInputError: ``cfg.bad_input == "fail"`` and an input is bad (names the file).
        SourceError: an input's layout/schema is unusable, or no training image is usable.
    """
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    train_src = discover(cfg.train, cfg.format, channels=cfg.channels)
    val_src = (discover(cfg.val, cfg.format, class_names=train_src.class_names, channels=cfg.channels)
               if cfg.val else None)
    fp = fingerprint(cfg, train_src, val_src, seed)
    if not force and _is_current(out_dir, fp):
        data = load_prepared(out_dir)
        if cfg.bad_input == "fail" and data.bad_count:
            first = _first_bad(out_dir)
            raise BadInputError(first.get("path", out_dir),
                                first.get("reason", "bad input (see bad_inputs.jsonl)"))
        _say(progress, f"prepare: {out_dir} is up to date (fingerprint {fp[:12]}), skipping; "
                       "force=True rebuilds")
        return data
    _check_replaceable(out_dir)
    _remove_stale_tmp(out_dir)
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        summary = _build(cfg, train_src, val_src, tmp, seed=seed, progress=progress,
                         concurrency=concurrency, num_cpus=num_cpus)
        summary["fingerprint"] = fp
        with open(os.path.join(tmp, "prepared.json"), "w") as f:
            json.dump(summary, f, indent=1)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_prepared(out_dir)


def load_prepared(out_dir: str) -> PreparedData:
    """Read ``out_dir/prepared.json``. Raises ``FileNotFoundError`` if it is not a prepared dataset."""
    root = os.path.abspath(os.path.expanduser(out_dir))
    meta_path = os.path.join(root, "prepared.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{root}: not a prepared dataset (no prepared.json); run prepare_dataset")
    with open(meta_path) as f:
        m = json.load(f)
    return PreparedData(
        root=root, class_names=m["class_names"], mean=m["mean"], std=m["std"],
        image_shape=tuple(m["image_shape"]), num_train=m["counts"]["train"], num_val=m["counts"]["val"],
        train_files=[os.path.join(root, p) for p in m["shards"]["train"]],
        val_files=[os.path.join(root, p) for p in m["shards"]["val"]],
        bad_count=m["bad_count"], fingerprint=m["fingerprint"],
    )


def read_shard_images(
    table: pa.Table, image_shape: Optional[tuple[int, int, int]] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and idx of a prepared-shard table, without copying when possible.

    Args:
        table: rows with ``image`` (``fixed_size_binary(H*W*C)``), ``label`` and ``idx``, e.g. a
            ``batch_format="pyarrow"`` batch from ``ray.data.read_parquet`` of prepared shards.
        image_shape: ``(H, W, C)``; default from the ``cnn_ray`` schema metadata.

    ``ray.data.read_parquet`` drops the file's schema metadata, so inside a Ray Data pipeline pass
    ``image_shape`` (from :class:`PreparedData`).

    Returns:
        ``images`` ``(N, H, W, C)`` ``uint8`` (a view of the Arrow buffer when the
        column is one chunk), ``labels`` ``(N,)`` ``int64``, ``idx`` ``(N,)`` ``int64``.
    """
    if image_shape is None:
        image_shape = read_metadata(table.schema).get("image_shape")
        if image_shape is None:
            raise ValueError("read_shard_images: the table has no 'cnn_ray' image_shape metadata; "
                             "pass image_shape=(H, W, C) (PreparedData.image_shape)")
    h, w, c = (int(v) for v in image_shape)
    col = table.column("image")
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    width = arr.type.byte_width
    if width != h * w * c:
        raise ValueError(f"read_shard_images: image column holds {width} bytes per row, "
                         f"image_shape {[h, w, c]} needs {h * w * c}")
    n = len(arr)
    images = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=n * width,
                           offset=arr.offset * width).reshape(n, h, w, c)
    return images, _int64(table.column("label")), _int64(table.column("idx"))


def fingerprint(cfg: DataConfig, train: Source, val: Optional[Source], seed: int) -> str:
    """sha256 of the input listings and the settings that change the prepared output."""
    key = {
        "version": PREPARE_VERSION,
        "train": [train.kind, train.listing_digest, train.class_names],
        "val": [val.kind, val.listing_digest] if val else None,
        "cfg": {k: getattr(cfg, k) for k in ("train", "val", "val_fraction", "format", "image_size",
                                             "channels", "shard_size")},
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------ building
def _build(cfg: DataConfig, train_src: Source, val_src: Optional[Source], tmp: str, *, seed: int,
           progress: bool, concurrency: Optional[int], num_cpus: float) -> dict[str, Any]:
    size, channels = cfg.image_size, cfg.channels
    for src in (train_src, val_src):
        if src is not None and src.image_encoding == "array" and src.image_shape[2] != channels:
            raise SourceError(f"{src.path}: arrays have {src.image_shape[2]} channels but "
                              f"data.channels is {channels}; set data.channels: {src.image_shape[2]}")
        if src is not None and src.image_encoding != "array" and channels not in (1, 3, 4):
            raise SourceError(f"{src.path}: encoded images decode to 1 (L), 3 (RGB) or 4 (RGBA) "
                              f"channels; data.channels is {channels}")
    shape = (size, size, channels)
    writers = {s: _ShardWriter(os.path.join(tmp, s), s, cfg.shard_size, shape) for s in _SPLITS}
    stats = _ChannelStats(channels)
    bad: list[dict[str, Any]] = []
    passes = [("train", train_src)] + ([("val", val_src)] if val_src else [])
    for name, src in passes:
        route, labels, problems = _routing(src, name, val_src is None, cfg.val_fraction, seed)
        problems = [dict(p, split=name) for p in problems]
        if cfg.bad_input == "fail":
            first = next((p for p in problems if p.get("row") is not None), None)
            if first:
                raise BadInputError(first["path"], first["reason"])
        bad += problems
        bad += _decode_pass(src, name, route, labels, writers, stats, cfg, seed=seed, progress=progress,
                            concurrency=concurrency, num_cpus=num_cpus)
    if writers["train"].num_rows == 0:
        raise SourceError(f"{cfg.train}: no usable training images ({len(bad)} bad inputs)")
    mean, std = stats.mean_std()
    for s in _SPLITS:
        writers[s].close({"class_names": train_src.class_names, "mean": mean, "std": std,
                          "image_shape": list(shape), "split": s})
    with open(os.path.join(tmp, "bad_inputs.jsonl"), "w") as f:
        for b in bad:
            f.write(json.dumps({"path": b["path"], "reason": b["reason"], "split": b["split"]}) + "\n")
    return {
        "class_names": train_src.class_names, "mean": mean, "std": std, "image_shape": list(shape),
        "counts": {s: writers[s].num_rows for s in _SPLITS},
        "shards": {s: [os.path.relpath(p, tmp) for p in writers[s].files] for s in _SPLITS},
        "bad_count": sum(1 for b in bad if b.get("row") is not None),
        "sources": {n: {"kind": s.kind, "path": s.path} for n, s in passes},
    }


def _routing(src: Source, name: str, hold_out: bool, val_fraction: float, seed: int):
    """Per row id: which split it goes to (or dropped), plus the bad records found so far."""
    labels = src.labels()
    problems = list(src.problems)
    if src.kind == "parquet":  # label range is only known now
        bad_rows = np.flatnonzero((labels < 0) | (labels >= len(src.class_names)))
        for r in bad_rows:
            f, local = _parquet_row(src, int(r))
            problems.append({"path": f, "row": int(r), "reason": f"row {local}: label {labels[r]} "
                                                               f"out of range [0, {len(src.class_names)})"})
        labels[bad_rows] = -1
    route = np.full(len(labels), _DROP, dtype=np.int8)
    if name == "val":
        route[labels >= 0] = _VAL
    elif hold_out:
        tr, va = split_holdout(labels, val_fraction, seed)
        route[tr], route[va] = _TRAIN, _VAL
    else:
        route[labels >= 0] = _TRAIN
    return route, labels, problems


def _parquet_row(src: Source, row: int) -> tuple[str, int]:
    starts = np.cumsum([0] + list(src.file_rows))
    i = int(np.searchsorted(starts, row, side="right") - 1)
    return src.files[i], row - int(starts[i])


def _decode_pass(src: Source, name: str, route: np.ndarray, labels: np.ndarray, writers: dict,
                 stats: "_ChannelStats", cfg: DataConfig, *, seed: int, progress: bool,
                 concurrency: Optional[int], num_cpus: float) -> list[dict[str, Any]]:
    """Decode one source with Ray Data and route its rows to the split writers."""
    bad: list[dict[str, Any]] = []
    report = _Progress(f"prepare {name}", int((route != _DROP).sum()), progress)
    seen = 0
    for block in _decoded_blocks(src, route, cfg, seed=seed, concurrency=concurrency, num_cpus=num_cpus):
        rid = _int64(block.column("rid"))
        seen += len(rid)
        ok = block.column("reason").is_null().to_numpy(zero_copy_only=False)
        dest = route[rid]
        keep = dest != _DROP
        if not np.array_equal(_int64(block.column("label"))[keep], labels[rid][keep]):
            raise RuntimeError(f"{src.path}: decoded rows do not match the listing (label mismatch)")
        for i in np.flatnonzero(~ok & keep):
            path, reason = block.column("path")[int(i)].as_py(), block.column("reason")[int(i)].as_py()
            if cfg.bad_input == "fail":
                raise BadInputError(path, reason)
            bad.append({"path": path, "reason": reason, "row": int(rid[i]), "split": name})
        for split_id, split in ((_TRAIN, "train"), (_VAL, "val")):
            mask = ok & (dest == split_id)
            if mask.any():
                rows = block.filter(pa.array(mask))
                if split == "train":
                    stats.add(rows)
                writers[split].add(rows.column("image"), _int64(rows.column("label")))
        report.update(int(keep.sum()), len(bad))
    report.done(len(bad))
    expected = src.num_rows if src.kind == "parquet" else int(sum(route[r.row] != _DROP for r in src.records))
    if seen != expected:
        raise RuntimeError(f"{src.path}: decoded {seen} rows, expected {expected}")
    return bad


def _decoded_blocks(src: Source, route: np.ndarray, cfg: DataConfig, *, seed: int,
                    concurrency: Optional[int], num_cpus: float) -> Iterator[pa.Table]:
    """Ray Data pipeline: work items -> read + decode/resize in parallel tasks -> pyarrow blocks.

    Folder/manifest: one item per image (path, label, row id) in a seeded random order, cut into
    blocks of a few hundred. Parquet: one item per row group, read and decoded in the task in
    slices of ``rows_per_block`` (ray.data.read_parquet was slow to start on tiny inputs here
    and does not give row ids).
    """
    import ray
    import ray.data

    size, channels = cfg.image_size, cfg.channels
    rows_per_block = max(16, min(512, _BLOCK_BYTES // (size * size * channels)))
    pool = concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized()
                              else os.cpu_count() or 1)
    fn_kwargs = {"size": size, "channels": channels, "encoding": src.image_encoding,
                 "src_shape": src.image_shape, "rows_per_block": rows_per_block}
    if src.kind == "parquet":
        items = parquet_work_items(src)
        batch_size = 1
    else:
        keep = [r for r in src.records if route[r.row] != _DROP]
        order = np.random.default_rng([seed, 1]).permutation(len(keep))  # shards then hold all classes
        items = [{"path": keep[i].path, "label": keep[i].label, "rid": keep[i].row} for i in order]
        batch_size = max(1, min(rows_per_block, math.ceil(len(items) / (2 * pool))))
    if not items:
        return
    num_blocks = math.ceil(len(items) / batch_size)
    ds = ray.data.from_items(items, override_num_blocks=num_blocks)
    ds = ds.map_batches(decode_block, batch_size=batch_size, batch_format="pyarrow",
                        fn_kwargs=fn_kwargs, compute=ray.data.TaskPoolStrategy(size=min(pool, num_blocks)),
                        num_cpus=num_cpus)
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
    """Ray Data task: a block of work items -> decoded tables (bad rows: zero image + a reason)."""
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
                 first_row: Optional[int] = None) -> pa.Table:
    """Decode ``n`` images given as files (``column=None``), encoded bytes, or raw arrays."""
    n = len(paths)
    images = np.zeros((n, size, size, channels), dtype=np.uint8)
    reasons: list[Optional[str]] = [None] * n
    if encoding == "array":
        h, w, c = src_shape
        raw = _uint8_values(column, n, h * w * c).reshape(n, h, w, c)
        for i in range(n):
            images[i] = resize_array(raw[i], size)
    else:
        blobs = column.to_pylist() if column is not None else None
        for i in range(n):
            name = paths[i] if first_row is None else f"{paths[i]} (row {first_row + i})"
            try:
                data = blobs[i] if blobs is not None else _read_file(paths[i])
                images[i] = decode_image(data or b"", size=size, channels=channels, path=name)
            except BadInputError as exc:
                reasons[i] = exc.reason if first_row is None else f"row {first_row + i}: {exc.reason}"
    s, ss = _row_sums(images)
    return pa.table({
        "image": _fixed_size_binary(images),
        "label": label.cast(pa.int64()),
        "rid": rid,
        "path": pa.array([p if r else None for p, r in zip(paths, reasons)], pa.string()),
        "reason": pa.array(reasons, pa.string()),
        "s": pa.FixedSizeListArray.from_arrays(pa.array(s.ravel()), channels),
        "ss": pa.FixedSizeListArray.from_arrays(pa.array(ss.ravel()), channels),
    })


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise BadInputError(path, f"cannot read file: {exc.strerror or exc}") from None


def _uint8_values(col: pa.ChunkedArray, n: int, width: int) -> np.ndarray:
    """Flat uint8 pixels of a raw-array image column (fixed_size_binary / (fixed_size_)list<uint8>)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr.type, pa.ExtensionType):
        arr = arr.storage
    if pa.types.is_fixed_size_binary(arr.type):
        out = np.frombuffer(arr.buffers()[1], np.uint8, count=n * width, offset=arr.offset * width)
    else:
        out = arr.flatten().to_numpy(zero_copy_only=False)
    if out.size != n * width:
        raise SourceError(f"image arrays hold {out.size / max(n, 1):.0f} bytes per row, expected {width}")
    return out


def _row_sums(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row, per-channel sum and sum of squares (int64, exact), in bounded-memory chunks."""
    n, c = images.shape[0], images.shape[-1]
    flat = images.reshape(n, -1, c)
    s = np.zeros((n, c), np.int64)
    ss = np.zeros((n, c), np.int64)
    step = max(1, (16 << 20) // max(flat[0].size, 1))
    for i in range(0, n, step):
        x = flat[i:i + step].astype(np.int32)
        s[i:i + step] = x.sum(axis=1, dtype=np.int64)
        ss[i:i + step] = np.einsum("npc,npc->nc", x, x, dtype=np.int64)
    return s, ss


def _fixed_size_binary(images: np.ndarray) -> pa.Array:
    """(N, H, W, C) uint8 -> fixed_size_binary(H*W*C) array sharing the numpy buffer."""
    n = images.shape[0]
    width = int(np.prod(images.shape[1:]))
    buf = pa.py_buffer(np.ascontiguousarray(images))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, buf])


def _int64(col) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.cast(pa.int64()).to_numpy(zero_copy_only=False)


# ------------------------------------------------------------------------------- helpers
class _ChannelStats:
    """Exact running per-channel sum / sum of squares over the training rows."""

    def __init__(self, channels: int):
        self.sum = [0] * channels
        self.sumsq = [0] * channels
        self.pixels = 0
        self.channels = channels
        self.pixels_per_image = 0

    def add(self, rows: pa.Table) -> None:
        c = self.channels
        s = rows.column("s").combine_chunks().flatten().to_numpy().reshape(-1, c)
        ss = rows.column("ss").combine_chunks().flatten().to_numpy().reshape(-1, c)
        width = rows.column("image").type.byte_width
        for k in range(c):  # python ints: no overflow however many images
            self.sum[k] += int(s[:, k].sum())
            self.sumsq[k] += int(ss[:, k].sum())
        self.pixels += rows.num_rows * (width // c)

    def mean_std(self) -> tuple[list[float], list[float]]:
        if not self.pixels:
            return [0.0] * self.channels, [1.0] * self.channels
        mean = [s / self.pixels / 255.0 for s in self.sum]
        var = [max(q / self.pixels / 255.0**2 - m * m, 0.0) for q, m in zip(self.sumsq, mean)]
        return mean, [math.sqrt(v) for v in var]


class _ShardWriter:
    """Writes one split as part-NNNNN.parquet shards of ``shard_size`` rows.

    Every shard's writer stays open until :meth:`close`, which adds the ``cnn_ray`` metadata
    (mean/std are only known at the end) to each footer: no second pass over the data. One open
    file per shard (a 1M-image set with 10k-row shards holds 100); past ``_MAX_OPEN_SHARDS``
    the oldest is closed and rewritten with its metadata at the end (only with tiny shards).
    ``store_schema=False``: with no serialized Arrow schema in the footer, readers take the
    schema metadata from the footer's key-value pairs, so the late ``cnn_ray`` key shows up in
    ``pq.read_schema(...).metadata`` (the column types are plain Parquet types and read back
    identically).
    """

    def __init__(self, folder: str, split: str, shard_size: int, shape: tuple[int, int, int]):
        self.folder, self.split, self.shard_size = folder, split, shard_size
        self.width = int(np.prod(shape))
        self.schema = pa.schema([("image", pa.binary(self.width)), ("label", pa.int64()),
                                 ("idx", pa.int64())])
        self.row_group = max(64, min(shard_size, _ROW_GROUP_BYTES // self.width))
        self.files: list[str] = []
        self._writers: list[list] = []  # [writer or None once closed early, [rows in file]]
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._in_shard = shard_size  # rows in the current shard (full -> open a new one)
        self.num_rows = 0

    def add(self, images: pa.ChunkedArray, labels: np.ndarray) -> None:
        n = len(labels)
        idx = np.arange(self.num_rows, self.num_rows + n, dtype=np.int64)
        self.num_rows += n
        table = pa.table([images, pa.array(labels, pa.int64()), pa.array(idx)], schema=self.schema)
        while table.num_rows:
            room = self.shard_size - self._in_shard - self._pending_rows
            if room == 0:
                self._flush()
                self._open()
                room = self.shard_size
            take = table.slice(0, room)
            table = table.slice(take.num_rows)
            self._pending.append(take)
            self._pending_rows += take.num_rows
            if self._pending_rows >= self.row_group:
                self._flush()

    def _open(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, f"part-{len(self.files):05d}.parquet")
        open_writers = [w for w in self._writers if w[0] is not None]
        if len(open_writers) >= _MAX_OPEN_SHARDS:  # tiny shards: close now, rewrite footer at the end
            writer, count = open_writers[0]
            writer.close()
            open_writers[0][0] = None
        self._writers.append([self._new_writer(path), [0]])
        self.files.append(path)
        self._in_shard = 0

    def _new_writer(self, path: str) -> pq.ParquetWriter:
        return pq.ParquetWriter(path, self.schema, compression="none", store_schema=False)

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        writer, count = self._writers[-1]
        writer.write_table(pa.concat_tables(self._pending), row_group_size=self._pending_rows)
        count[0] += self._pending_rows
        self._in_shard += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def close(self, meta: dict[str, Any]) -> None:
        self._flush()
        for path, (writer, count) in zip(self.files, self._writers):
            kv = {METADATA_KEY.decode(): json.dumps(dict(meta, num_rows=count[0]))}
            if writer is None:  # closed early (see _open): write it again with the metadata
                table = pq.read_table(path)
                writer = self._new_writer(path + ".tmp")
                writer.write_table(table, row_group_size=self.row_group)
                writer.add_key_value_metadata(kv)
                writer.close()
                os.replace(path + ".tmp", path)
                continue
            writer.add_key_value_metadata(kv)
            writer.close()


class _Progress:
    """``prepare train: 20480/45000 images (45%), 3100 img/s, 0 bad`` every few seconds."""

    def __init__(self, label: str, total: int, enabled: bool, every_s: float = 5.0):
        self.label, self.total, self.enabled, self.every_s = label, total, enabled, every_s
        self.done_rows = 0
        self.start = self.last = time.monotonic()

    def _line(self, bad: int) -> str:
        rate = self.done_rows / max(time.monotonic() - self.start, 1e-9)
        pct = 100.0 * self.done_rows / self.total if self.total else 100.0
        return f"{self.label}: {self.done_rows}/{self.total} images ({pct:.0f}%), {rate:.0f} img/s, {bad} bad"

    def update(self, rows: int, bad: int) -> None:
        self.done_rows += rows
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_s:
            self.last = now
            print(self._line(bad), flush=True)

    def done(self, bad: int) -> None:
        elapsed = time.monotonic() - self.start
        _say(self.enabled, self._line(bad) + f", done in {elapsed:.1f} s")


def _say(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg, flush=True)


def _is_current(out_dir: str, fp: str) -> bool:
    try:
        with open(os.path.join(out_dir, "prepared.json")) as f:
            return json.load(f).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def _first_bad(out_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(out_dir, "bad_inputs.jsonl")) as f:
            return json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return {}


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Move the finished ``tmp`` to ``out_dir``, replacing an older one (two renames)."""
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    old = None
    if os.path.exists(out_dir):
        _check_replaceable(out_dir)
        old = f"{out_dir}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _check_replaceable(out_dir: str) -> None:
    """Refuse to replace a non-empty folder that is not a prepared dataset (user data)."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and \
            not os.path.isfile(os.path.join(out_dir, "prepared.json")):
        raise FileExistsError(f"{out_dir}: exists and is not a prepared dataset; refusing to "
                              "replace it (choose another prepared_dir or remove it)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not a folder")


def _remove_stale_tmp(out_dir: str) -> None:
    """Delete ``<out_dir>.tmp-<pid>`` / ``.old-<pid>`` left by processes that no longer run."""
    parent, base = os.path.split(out_dir)
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        for tag in (".tmp-", ".old-"):
            if name.startswith(base + tag) and name[len(base) + len(tag):].isdigit():
                pid = int(name[len(base) + len(tag):])
                if pid != os.getpid() and not _pid_alive(pid):
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
