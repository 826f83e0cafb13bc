"""The prepared-data format on disk: Parquet shards of decoded images and their metadata. No Ray.

:func:`cnn_ray.data.prepare.prepare_dataset` (the Ray glue) decodes every input image once and
writes, with the helpers here::

    out_dir/
      prepared.json        fingerprint, class_names, mean, std, image_shape, counts, shards, bad_count
      bad_inputs.jsonl     one {"path", "reason", "split"} per input left out (or noted)
      train/part-00000.parquet ...   shard_size rows each (the last one smaller)
      val/part-00000.parquet ...

Shard schema: ``image`` ``fixed_size_binary(H*W*C)`` (HWC ``uint8`` bytes), ``label`` ``int64``,
``idx`` ``int64``. ``idx`` runs ``0..num_rows-1`` within a split: unique and stable for the same
input and settings (the augmentation RNG keys on it). Each file's metadata key ``cnn_ray``
(:data:`METADATA_KEY`) holds JSON ``{class_names, mean, std, image_shape, split, num_rows}``;
``mean``/``std`` are per channel, in ``[0, 1]`` units, of the training split
(:class:`ChannelStats`), and are the same in every shard of both splits.

Readers: :func:`load_prepared` (``prepared.json``), :func:`read_shard_images` (a shard table to
numpy without copying), :func:`read_metadata` (the ``cnn_ray`` key of any Parquet schema).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cnn_ray.io import atomic_path

METADATA_KEY = b"cnn_ray"  # Parquet/Arrow schema metadata key of the JSON metadata
PREPARED_FILE = "prepared.json"
BAD_INPUTS_FILE = "bad_inputs.jsonl"
SPLITS = ("train", "val")
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
    bands: Optional[dict] = None  # the BandTransform of multi-band tiles (cnn_ray.data.bands)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_prepared(out_dir: str) -> PreparedData:
    """Read ``out_dir/prepared.json``. Raises ``FileNotFoundError`` if it is not a prepared dataset."""
    root = os.path.abspath(os.path.expanduser(out_dir))
    meta_path = os.path.join(root, PREPARED_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{root}: not a prepared dataset (no prepared.json); run prepare_dataset")
    with open(meta_path) as f:
        m = json.load(f)
    return PreparedData(
        root=root, class_names=m["class_names"], mean=m["mean"], std=m["std"],
        image_shape=tuple(m["image_shape"]), num_train=m["counts"]["train"], num_val=m["counts"]["val"],
        train_files=[os.path.join(root, p) for p in m["shards"]["train"]],
        val_files=[os.path.join(root, p) for p in m["shards"]["val"]],
        bad_count=m["bad_count"], fingerprint=m["fingerprint"], bands=m.get("bands"),
    )


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The ``cnn_ray`` JSON from a Parquet/Arrow schema's metadata (``{}`` if absent)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


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

    Raises:
        ValueError: no ``image_shape`` given or in the metadata, or the image width does not
            match it.
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
    return images, int64_values(table.column("label")), int64_values(table.column("idx"))


def fixed_size_binary(images: np.ndarray) -> pa.Array:
    """``(N, H, W, C)`` ``uint8`` -> ``fixed_size_binary(H*W*C)`` array sharing the numpy buffer."""
    n = images.shape[0]
    width = int(np.prod(images.shape[1:]))
    buf = pa.py_buffer(np.ascontiguousarray(images))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, buf])


def int64_values(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An integer Arrow column as a ``(N,)`` ``int64`` numpy array."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.cast(pa.int64()).to_numpy(zero_copy_only=False)


# ------------------------------------------------------------------------------ statistics
def channel_sums(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-channel sum and sum of squares of ``(N, H, W, C)`` ``uint8`` pixels.

    Returns two ``(N, C)`` ``int64`` arrays (exact: integer arithmetic, in bounded-memory
    chunks), to be summed by :class:`ChannelStats` over any subset of the rows.
    """
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


class ChannelStats:
    """Exact running per-channel mean and (population) std of ``x / 255`` over ``uint8`` images.

    Sums are Python integers (no overflow, no round-off however many images), so adding the
    rows in any grouping gives the same result. The one implementation of the normalisation
    statistics: the prepare step (shard metadata) and the raw-data path both use it.
    """

    def __init__(self, channels: int):
        self.channels = channels
        self.sum = [0] * channels
        self.sumsq = [0] * channels
        self.pixels = 0  # pixels per channel added so far

    def add_sums(self, sums: np.ndarray, sumsq: np.ndarray, pixels_per_image: int) -> None:
        """Add the :func:`channel_sums` of some images (``(N, C)`` each, ``H * W`` pixels each)."""
        sums = np.asarray(sums).reshape(-1, self.channels)
        sumsq = np.asarray(sumsq).reshape(-1, self.channels)
        for k in range(self.channels):
            self.sum[k] += int(sums[:, k].sum())
            self.sumsq[k] += int(sumsq[:, k].sum())
        self.pixels += len(sums) * int(pixels_per_image)

    def add_images(self, images: np.ndarray) -> None:
        """Add ``(N, H, W, C)`` ``uint8`` images. Raises ``ValueError`` on another rank/dtype/C."""
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[3] != self.channels:
            raise ValueError(f"images must be (N, H, W, {self.channels}) uint8, got "
                             f"{images.shape} {images.dtype}")
        self.add_sums(*channel_sums(images), images.shape[1] * images.shape[2])

    def mean_std(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` per channel as lists of floats in ``[0, 1]`` units; ``([0.0] * C,
        [1.0] * C)`` before any pixel was added (std floored at 0 against round-off)."""
        if not self.pixels:
            return [0.0] * self.channels, [1.0] * self.channels
        mean = [s / self.pixels / 255.0 for s in self.sum]
        var = [max(q / self.pixels / 255.0**2 - m * m, 0.0) for q, m in zip(self.sumsq, mean)]
        return mean, [math.sqrt(v) for v in var]


# ------------------------------------------------------------------------------ writing
def shard_schema(image_shape: tuple[int, int, int]) -> pa.Schema:
    """The shard schema: ``image`` ``fixed_size_binary(H*W*C)``, ``label`` and ``idx`` ``int64``."""
    return pa.schema([("image", pa.binary(int(np.prod(image_shape)))), ("label", pa.int64()),
                      ("idx", pa.int64())])


class ShardWriter:
    """Writes one split as ``part-NNNNN.parquet`` shards of ``shard_size`` rows.

    :meth:`add` numbers the rows (``idx`` ``0..``) in the order they arrive. Every shard's
    writer stays open until :meth:`close`, which adds the ``cnn_ray`` metadata (mean/std are only
    known at the end) to each footer: no second pass over the data. One open file per shard (a
    1M-image set with 10k-row shards holds 100); past ``_MAX_OPEN_SHARDS`` the oldest is closed
    and rewritten with its metadata at the end (only with tiny shards).
    ``store_schema=False``: with no serialized Arrow schema in the footer, readers take the
    schema metadata from the footer's key-value pairs, so the late ``cnn_ray`` key shows up in
    ``pq.read_schema(...).metadata`` (the column types are plain Parquet types and read back
    identically).
    """

    def __init__(self, folder: str, split: str, shard_size: int, shape: tuple[int, int, int]):
        self.folder, self.split, self.shard_size = folder, split, shard_size
        self.width = int(np.prod(shape))
        self.schema = shard_schema(shape)
        self.row_group = max(64, min(shard_size, _ROW_GROUP_BYTES // self.width))
        self.files: list[str] = []
        self._writers: list[list] = []  # [writer or None once closed early, [rows in file]]
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._in_shard = shard_size  # rows in the current shard (full -> open a new one)
        self.num_rows = 0

    def add(self, images: pa.Array | pa.ChunkedArray, labels: np.ndarray) -> None:
        """Append rows: ``images`` ``fixed_size_binary(H*W*C)``, ``labels`` ``(N,)`` integers."""
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
            open_writers[0][0].close()
            open_writers[0][0] = None
        self._writers.append([self._new_writer(path), [0]])
        self.files.append(path)
        self._in_shard = 0

    def _new_writer(self, path: str | os.PathLike) -> pq.ParquetWriter:
        return pq.ParquetWriter(str(path), self.schema, compression="none", store_schema=False)

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        writer, count = self._writers[-1]
        writer.write_table(pa.concat_tables(self._pending), row_group_size=self._pending_rows)
        count[0] += self._pending_rows
        self._in_shard += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def close(self, meta: dict[str, Any]) -> None:
        """Flush and close every shard with ``meta`` plus its ``num_rows`` as the ``cnn_ray`` key."""
        self._flush()
        for path, (writer, count) in zip(self.files, self._writers):
            kv = {METADATA_KEY.decode(): json.dumps(dict(meta, num_rows=count[0]))}
            if writer is None:  # closed early (see _open): write it again with the metadata
                table = pq.read_table(path)
                with atomic_path(path) as tmp:
                    writer = self._new_writer(tmp)
                    writer.write_table(table, row_group_size=self.row_group)
                    writer.add_key_value_metadata(kv)
                    writer.close()
                continue
            writer.add_key_value_metadata(kv)
            writer.close()
