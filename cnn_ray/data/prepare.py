"""The prepare step: decode every input image once into fixed-size Parquet shards (Ray Data glue).

:func:`prepare_dataset` lists the input (:func:`cnn_ray.data.sources.discover`), decodes and
resizes every image once in parallel Ray Data tasks, splits train/val, and writes the shards,
``prepared.json`` and ``bad_inputs.jsonl`` in the format of :mod:`cnn_ray.data.shards` (which
also reads them back, without Ray).

Folder/manifest rows are written in a seeded random order (so a shard holds every class and
a local shuffle buffer sees a mix); Parquet inputs keep their row order.

Caching: the fingerprint hashes the input listing (paths, sizes, mtimes) and the settings
that change the output (image_size, channels, val, val_fraction, format, shard_size, seed). A
re-run with the same fingerprint returns the existing data without work unless ``force=True``.
The data is built in ``<out_dir>.tmp-<pid>-<random>`` and renamed into place
(:func:`cnn_ray.io.atomic_directory`), so an interrupted run never leaves a complete-looking
``out_dir``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cnn_ray.config import DataConfig
from cnn_ray.data.bad_inputs import check_bad_fraction, split_summary
from cnn_ray.data.bands import BandTransform, fit_band_transform, is_array_file, read_array, sample_pixels
from cnn_ray.data.decode import BadInputError, decode_image, resize_array
from cnn_ray.data.errors import InputNotVisibleError
from cnn_ray.data.shards import (BAD_INPUTS_FILE, PREPARED_FILE, SPLITS, ChannelStats, PreparedData,
                                 ShardWriter, channel_sums, fixed_size_binary, int64_values,
                                 load_prepared)
from cnn_ray.data.sources import ManifestSpec, Source, SourceError, discover, split_holdout
from cnn_ray.data import remote
from cnn_ray.io import atomic_directory, is_uri, iter_jsonl, remove_stale_temps

PREPARE_VERSION = 1  # bump when the output layout or decode recipe changes (invalidates caches)
_TRAIN, _VAL, _DROP = 0, 1, -1
_BLOCK_BYTES = 8 << 20  # decoded bytes per Ray Data block (~a few hundred CIFAR images ... 50 ImageNet)


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
        TooManyBadInputsError: more than ``cfg.max_bad_fraction`` of a split's inputs are bad
            (the prepared data and its ``bad_inputs.jsonl`` are kept; below the limit a warning
            line is printed instead, see :mod:`cnn_ray.data.bad_inputs`).
        InputNotVisibleError: a file listed here was not found on the node decoding it.
    """
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    spec = ManifestSpec.of(cfg)
    train_src = discover(cfg.train, cfg.format, channels=cfg.channels, manifest=spec)
    val_src = (discover(cfg.val, cfg.format, class_names=train_src.class_names, channels=cfg.channels,
                        manifest=spec) if cfg.val else None)
    fp = fingerprint(cfg, train_src, val_src, seed)
    if not force and _is_current(out_dir, fp):
        data = load_prepared(out_dir)
        if cfg.bad_input == "fail" and data.bad_count:
            first = _first_bad(out_dir)
            raise BadInputError(first.get("path", out_dir),
                                first.get("reason", "bad input (see bad_inputs.jsonl)"))
        _say(progress, f"prepare: {out_dir} is up to date (fingerprint {fp[:12]}), skipping; "
                       "force=True rebuilds")
        _check_bad(cfg, out_dir, data)
        return data
    _check_replaceable(out_dir)
    remove_stale_temps(out_dir)
    with atomic_directory(out_dir) as tmp:
        summary = _build(cfg, train_src, val_src, str(tmp), seed=seed, progress=progress,
                         concurrency=concurrency, num_cpus=num_cpus)
        summary["fingerprint"] = fp
        with open(tmp / PREPARED_FILE, "w") as f:
            json.dump(summary, f, indent=1)
        _check_replaceable(out_dir)
    data = load_prepared(out_dir)
    _check_bad(cfg, out_dir, data)
    return data


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
    if bands_mode(cfg, train):  # only then: keeps earlier fingerprints valid
        key["bands"] = [cfg.pca.model_dump() if cfg.pca else None, cfg.band_sample_images]
    spec = ManifestSpec.of(cfg)
    if spec != ManifestSpec():  # only when set: the default keeps earlier fingerprints valid
        key["manifest"] = [spec.path_column, spec.label_column, spec.path_template]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------ building
def bands_mode(cfg: DataConfig, src: Source) -> bool:
    """Whether ``src`` is read as multi-band arrays through a :class:`BandTransform`: folder or
    manifest files with ``data.pca`` set, a band count other than 1/3/4, or ``.npy``/``.npz``
    tiles among them; Parquet raw arrays of uint16/float32 pixels, or with ``data.pca``
    (:mod:`cnn_ray.data.bands`)."""
    if src.kind == "parquet":
        return src.image_encoding == "array" and (src.array_dtype != "uint8" or cfg.pca is not None)
    return (cfg.pca is not None or cfg.channels not in (1, 3, 4)
            or any(is_array_file(r.path) for r in src.records))


def _build(cfg: DataConfig, train_src: Source, val_src: Optional[Source], tmp: str, *, seed: int,
           progress: bool, concurrency: Optional[int], num_cpus: float) -> dict[str, Any]:
    size, channels = cfg.image_size, cfg.channels
    for src in (train_src, val_src):
        if src is not None and src.image_encoding == "bytes" and cfg.pca is not None:
            raise SourceError(f"{src.path}: data.pca reduces raw-array tiles; this Parquet "
                              "input holds encoded images (store the pixels as a list of "
                              "uint8/uint16/float32 with image_shape metadata, or remove data.pca)")
        if src is not None and src.image_encoding == "array" and src.image_shape[2] != channels:
            raise SourceError(f"{src.path}: arrays have {src.image_shape[2]} channels but "
                              f"data.channels is {channels}; set data.channels: {src.image_shape[2]}")
        if (src is not None and src.image_encoding == "bytes" and channels not in (1, 3, 4)):
            raise SourceError(f"{src.path}: encoded images decode to 1 (L), 3 (RGB) or 4 (RGBA) "
                              f"channels; data.channels is {channels}")
    transform = None
    if bands_mode(cfg, train_src):
        route, _, _ = _routing(train_src, "train", val_src is None, cfg.val_fraction, seed)
        transform = _fit_bands(cfg, train_src, route, seed=seed, concurrency=concurrency,
                               num_cpus=num_cpus)
        _say(progress, "prepare: " + transform.describe(size))
        channels = transform.out_bands
    shape = (size, size, channels)
    writers = {s: ShardWriter(os.path.join(tmp, s), s, cfg.shard_size, shape) for s in SPLITS}
    stats = ChannelStats(channels)
    bad: list[dict[str, Any]] = []
    passes = [("train", train_src)] + ([("val", val_src)] if val_src else [])
    summaries: dict[str, dict[str, Any]] = {}
    for name, src in passes:
        route, labels, problems = _routing(src, name, val_src is None, cfg.val_fraction, seed)
        problems = [dict(p, split=name) for p in problems]
        listed = [p for p in problems if p.get("row") is not None]
        if cfg.bad_input == "fail" and listed:
            raise BadInputError(listed[0]["path"], listed[0]["reason"])
        decoded = _decode_pass(src, name, route, labels, writers, stats, cfg, seed=seed,
                               progress=progress, concurrency=concurrency, num_cpus=num_cpus,
                               listed_bad=len(listed), transform=transform)
        summaries[name] = split_summary(problems + decoded, src.num_rows)
        bad += problems + decoded
    if writers["train"].num_rows == 0:
        raise SourceError(f"{cfg.train}: no usable training images ({len(bad)} bad inputs)")
    mean, std = stats.mean_std()
    bands = transform.to_dict() if transform is not None else None
    for s in SPLITS:
        writers[s].close({"class_names": train_src.class_names, "mean": mean, "std": std,
                          "image_shape": list(shape), "split": s,
                          **({"bands": bands} if bands else {})})
    with open(os.path.join(tmp, BAD_INPUTS_FILE), "w") as f:
        for b in bad:
            f.write(json.dumps({"path": b["path"], "reason": b["reason"], "split": b["split"],
                                "kind": b.get("kind") or "undecodable"}) + "\n")
    return {
        "class_names": train_src.class_names, "mean": mean, "std": std, "image_shape": list(shape),
        "counts": {s: writers[s].num_rows for s in SPLITS},
        "shards": {s: [os.path.relpath(p, tmp) for p in writers[s].files] for s in SPLITS},
        "bad_count": sum(1 for b in bad if b.get("row") is not None),
        "bad_by_split": summaries,
        "sources": {n: {"kind": s.kind, "path": s.path} for n, s in passes},
        **({"bands": bands} if bands else {}),
    }


def _fit_bands(cfg: DataConfig, src: Source, route: np.ndarray, *, seed: int,
               concurrency: Optional[int], num_cpus: float) -> BandTransform:
    """Fit the band scaling (and ``data.pca``) on ``data.band_sample_images`` seeded training
    tiles, 512 pixels each, read in Ray Data tasks (where the decoding runs, not on the driver).

    Raises:
        SourceError: no sampled tile could be read, or the tiles mix dtypes (names two files).
    """
    import ray.data

    rng = np.random.default_rng([seed, 2])
    if src.kind == "parquet":
        rows = np.flatnonzero(route == _TRAIN)
        pick = np.sort(rng.choice(rows, size=min(len(rows), cfg.band_sample_images), replace=False))
        items = _parquet_sample_items(src, pick)
        fn, kw = sample_parquet_block, {"shape": src.image_shape, "dtype": src.array_dtype}
    else:
        train = [r for r in src.records if route[r.row] == _TRAIN]
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


SAMPLE_PIXELS = 512  # pixels per sampled tile when fitting the band transform


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
        values = _array_values(col, len(item["local"]), h * w * c, dtype).reshape(-1, h, w, c)
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
            arr = read_array(_read_file(path), path, bands)
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


def _routing(src: Source, name: str, hold_out: bool, val_fraction: float, seed: int):
    """Per row id: which split it goes to (or dropped), plus the bad records found so far."""
    labels = src.labels()
    problems = list(src.problems)
    if src.kind == "parquet":  # label range is only known now
        bad_rows = np.flatnonzero((labels < 0) | (labels >= len(src.class_names)))
        for r in bad_rows:
            f, local = _parquet_row(src, int(r))
            problems.append({"path": f, "row": int(r), "kind": "bad_record",
                             "reason": f"row {local}: label {labels[r]} "
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
                 stats: ChannelStats, cfg: DataConfig, *, seed: int, progress: bool,
                 concurrency: Optional[int], num_cpus: float, listed_bad: int = 0,
                 transform: Optional[BandTransform] = None) -> list[dict[str, Any]]:
    """Decode one source with Ray Data and route its rows to the split writers.

    Returns the rows that failed to decode (``kind: undecodable``); ``listed_bad`` (rows left out
    at listing) only shows in the progress line. Raises :class:`InputNotVisibleError` when a
    file listed by the driver was not found where it was decoded (folder/manifest sources)."""
    bad: list[dict[str, Any]] = []
    report = _Progress(f"prepare {name}", int((route != _DROP).sum()), progress, listed_bad)
    seen = 0
    for block in _decoded_blocks(src, route, cfg, seed=seed, concurrency=concurrency,
                                 num_cpus=num_cpus, transform=transform):
        rid = int64_values(block.column("rid"))
        seen += len(rid)
        ok = block.column("reason").is_null().to_numpy(zero_copy_only=False)
        dest = route[rid]
        keep = dest != _DROP
        if not np.array_equal(int64_values(block.column("label"))[keep], labels[rid][keep]):
            raise RuntimeError(f"{src.path}: decoded rows do not match the listing (label mismatch)")
        for i in np.flatnonzero(~ok & keep):
            path, reason = block.column("path")[int(i)].as_py(), block.column("reason")[int(i)].as_py()
            node = block.column("node")[int(i)].as_py()
            if node is not None and src.kind != "parquet":  # the driver saw it at listing
                raise InputNotVisibleError(path, node)
            if cfg.bad_input == "fail":
                raise BadInputError(path, reason)
            bad.append({"path": path, "reason": reason, "row": int(rid[i]), "split": name,
                        "kind": "missing" if node is not None else "undecodable"})
        for split_id, split in ((_TRAIN, "train"), (_VAL, "val")):
            mask = ok & (dest == split_id)
            if mask.any():
                rows = block.filter(pa.array(mask))
                if split == "train":
                    _add_stats(stats, rows)
                writers[split].add(rows.column("image"), int64_values(rows.column("label")))
        report.update(int(keep.sum()), len(bad))
    report.done(len(bad))
    expected = src.num_rows if src.kind == "parquet" else int(sum(route[r.row] != _DROP for r in src.records))
    if seen != expected:
        raise RuntimeError(f"{src.path}: decoded {seen} rows, expected {expected}")
    return bad


def _decoded_blocks(src: Source, route: np.ndarray, cfg: DataConfig, *, seed: int,
                    concurrency: Optional[int], num_cpus: float,
                    transform: Optional[BandTransform] = None) -> Iterator[pa.Table]:
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
        raw = _array_values(column, n, h * w * c, dtype).reshape(n, h, w, c)
        for i in range(n):
            images[i] = resize_array(transform.apply(raw[i]) if transform is not None else raw[i], size)
    else:
        blobs = column.to_pylist() if column is not None else None
        for i in range(n):
            name = paths[i] if first_row is None else f"{paths[i]} (row {first_row + i})"
            try:
                data = blobs[i] if blobs is not None else _read_file(paths[i])
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


def _read_file(path: str) -> bytes:
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


def _array_values(col: pa.ChunkedArray, n: int, width: int, dtype: str = "uint8") -> np.ndarray:
    """Flat pixels of a raw-array image column (fixed_size_binary of uint8, or a
    (fixed-size) list of ``dtype``), as that numpy dtype."""
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


# ------------------------------------------------------------------------------- helpers
def _add_stats(stats: ChannelStats, rows: pa.Table) -> None:
    """Add decoded training rows (their ``s``/``ss`` per-row channel sums) to ``stats``."""
    c = stats.channels
    s = rows.column("s").combine_chunks().flatten().to_numpy().reshape(-1, c)
    ss = rows.column("ss").combine_chunks().flatten().to_numpy().reshape(-1, c)
    stats.add_sums(s, ss, rows.column("image").type.byte_width // c)


class _Progress:
    """``prepare train: 20480/45000 images (45%), 3100 img/s, ETA 0:08, 0 bad`` every few
    seconds; rows left out at listing (``listed_bad``) are counted in the bad figure and named:
    ``..., 9222 bad (9222 left out at listing: see bad_inputs.jsonl)``."""

    def __init__(self, label: str, total: int, enabled: bool, listed_bad: int = 0,
                 every_s: float = 5.0):
        self.label, self.total, self.enabled, self.every_s = label, total, enabled, every_s
        self.listed_bad = listed_bad
        self.done_rows = 0
        self.start = self.last = time.monotonic()

    def _line(self, bad: int) -> str:
        from cnn_ray.watch import format_duration

        rate = self.done_rows / max(time.monotonic() - self.start, 1e-9)
        pct = 100.0 * self.done_rows / self.total if self.total else 100.0
        eta = (f", ETA {format_duration((self.total - self.done_rows) / rate)}"
               if rate > 0 and self.done_rows < self.total else "")
        listed = (f" ({self.listed_bad} left out at listing: see bad_inputs.jsonl)"
                  if self.listed_bad else "")
        return (f"{self.label}: {self.done_rows}/{self.total} images ({pct:.0f}%), {rate:.0f} img/s"
                f"{eta}, {bad + self.listed_bad} bad{listed}")

    def update(self, rows: int, bad: int) -> None:
        self.done_rows += rows
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every_s:
            self.last = now
            print(self._line(bad), flush=True)

    def done(self, bad: int) -> None:
        elapsed = time.monotonic() - self.start
        _say(self.enabled, self._line(bad) + f", done in {elapsed:.1f} s")


def _check_bad(cfg: DataConfig, out_dir: str, data: PreparedData) -> None:
    """Apply ``cfg.max_bad_fraction`` to the prepared data's per-split bad counts (data prepared
    before they were recorded: one figure over all splits)."""
    if cfg.bad_input == "fail":
        return  # a bad input already stopped the job
    try:
        with open(os.path.join(out_dir, PREPARED_FILE)) as f:
            summaries = json.load(f).get("bad_by_split")
    except (OSError, ValueError):
        summaries = None
    if summaries is None:
        first = [f"{b.get('path')} ({b.get('reason')})" for b, _ in zip(
            iter_jsonl(os.path.join(out_dir, BAD_INPUTS_FILE)), range(5))] if data.bad_count else []
        summaries = {"all": {"inputs": data.num_train + data.num_val + data.bad_count,
                             "bad": data.bad_count, "by_kind": {}, "first": first}}
    check_bad_fraction(summaries, cfg.max_bad_fraction, os.path.join(out_dir, BAD_INPUTS_FILE),
                       source={"train": cfg.train, "val": cfg.val or ""})


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


def _say(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg, flush=True)


def _is_current(out_dir: str, fp: str) -> bool:
    try:
        with open(os.path.join(out_dir, PREPARED_FILE)) as f:
            return json.load(f).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def _first_bad(out_dir: str) -> dict[str, Any]:
    try:
        return next(iter_jsonl(os.path.join(out_dir, BAD_INPUTS_FILE)), {})
    except OSError:
        return {}


def _check_replaceable(out_dir: str) -> None:
    """Refuse to replace a non-empty folder that is not a prepared dataset (user data)."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and \
            not os.path.isfile(os.path.join(out_dir, PREPARED_FILE)):
        raise FileExistsError(f"{out_dir}: exists and is not a prepared dataset; refusing to "
                              "replace it (choose another prepared_dir or remove it)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not a folder")
