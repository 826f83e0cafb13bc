"""Building the prepared data: route every row to a split, decode, write the shards.

:func:`build_shards` is the body of :func:`cnn_ray.data.prepare.prepare_dataset` once the inputs
are listed and the cache missed: per source it routes each row id to ``train``, ``val`` or
nowhere (a label out of range, a bad record found at listing; :func:`_routing`, with the seeded
held-out split of :func:`cnn_ray.data.sources.split_holdout`), decodes the kept rows in Ray Data
tasks (:func:`cnn_ray.data.decode_tasks.decoded_blocks`), checks them against the listing,
applies the bad-input policy, adds the training rows to the channel statistics
(:class:`~cnn_ray.data.shards.ChannelStats`) and writes each split with a
:class:`~cnn_ray.data.shards.ShardWriter`; then ``bad_inputs.jsonl``. Progress lines every few
seconds (:class:`_Progress`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from cnn_ray.config import DataConfig
from cnn_ray.data.bad_inputs import split_summary
from cnn_ray.data.bands import BandTransform
from cnn_ray.data.decode import BadInputError
from cnn_ray.data.decode_tasks import decoded_blocks
from cnn_ray.data.errors import InputNotVisibleError
from cnn_ray.data.prepare_bands import bands_mode, fit_bands
from cnn_ray.data.shards import BAD_INPUTS_FILE, SPLITS, ChannelStats, ShardWriter, int64_values
from cnn_ray.data.sources import Source, SourceError, split_holdout

_TRAIN, _VAL, _DROP = 0, 1, -1  # where a row id goes (:func:`_routing`)


def build_shards(cfg: DataConfig, train_src: Source, val_src: Optional[Source], tmp: str, *,
                 seed: int, progress: bool, concurrency: Optional[int],
                 num_cpus: float) -> dict[str, Any]:
    """Decode ``train_src`` (and ``val_src``; without it a seeded ``cfg.val_fraction`` of the
    training rows is held out) into the shards of both splits and ``bad_inputs.jsonl`` under
    ``tmp``; with multi-band data (:func:`~cnn_ray.data.prepare_bands.bands_mode`) the band
    transform is fitted first and every tile decoded through it.

    Returns:
        The ``prepared.json`` summary (all but its ``fingerprint``): ``class_names``,
        ``mean``/``std`` (per stored channel, of the training pixels ``x / 255``),
        ``image_shape`` (H, W, C), ``counts`` and ``shards`` per split, ``bad_count``,
        ``bad_by_split`` (:func:`cnn_ray.data.bad_inputs.split_summary`), ``sources``, and
        ``bands`` (a :meth:`BandTransform.to_dict`) for multi-band data.

    Raises:
        SourceError: the input's encoding does not fit ``data.channels`` / ``data.pca``, or no
            training image is usable.
        BadInputError: ``cfg.bad_input == "fail"`` and an input is bad (names the file).
        InputNotVisibleError: a listed file was not found on the node decoding it.
    """
    size, channels = cfg.stored_size, cfg.channels  # data.store_size, else image_size
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
        transform = fit_bands(cfg, train_src, route == _TRAIN, seed=seed,
                              concurrency=concurrency, num_cpus=num_cpus)
        say(progress, "prepare: " + transform.describe(size))
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
    for block in decoded_blocks(src, route != _DROP, cfg, seed=seed, concurrency=concurrency,
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
        say(self.enabled, self._line(bad) + f", done in {elapsed:.1f} s")


def say(enabled: bool, msg: str) -> None:
    """Print ``msg`` (flushed) when ``enabled``: the prepare step's progress and notices."""
    if enabled:
        print(msg, flush=True)

