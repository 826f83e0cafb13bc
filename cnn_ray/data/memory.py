"""In-memory training data (``data.cache: memory``): read once, share, augment on the worker.

The driver reads the prepared (already decoded and resized) uint8 shards ONCE
(:func:`read_prepared_arrays`) and puts them in Ray's object store; every Train worker -- and,
in a sweep, every trial -- maps them zero-copy, keeps its share (:meth:`InMemoryShard.from_arrays`)
and then every epoch shuffles it with a seeded permutation and augments whole batches with
:func:`cnn_ray.data.augment.augment_batch` in a background thread while the model trains on the
previous batch. There is no per-epoch (or per-trial) Ray Data execution to start (several
seconds each on a loaded 2-core machine) and no object-store traffic after the first ``get``.

When to use it: the data set fits in memory (CIFAR-10 at 32 px is 150 MB for all 50,000 images)
and augmentation is cheap next to the model step (crop + flip are uint8 slice copies). Sweeps of
short trials over a small data set gain most. Streaming (``cache: none``) stays the default: it
scales past memory and moves augmentation off the training process. Source: airbench (Keller
Jordan, 2024) keeps CIFAR-10 on the device and augments whole batches there; DALI and FFCV make
the same point about data loaders.

Random draws are the same counter-based draws as the streaming path (``(seed, epoch, idx)``),
so an image gets new draws every epoch and different images on different workers get
different draws. The order is a full (within-share) permutation seeded by
``(seed, epoch, rank)``; rank ``r`` of ``w`` keeps rows ``r, r + w, ...`` (equal shares for
training, like ``DistributedSampler`` without global reshuffling; every row for evaluation).

Data at resolution (``data.store_size`` > ``data.image_size``): the training rows are held
at their stored size (``store_size`` squared times C bytes each) and every batch is
random-resized cropped to ``image_size`` as it is made (:mod:`cnn_ray.data.resized_crop`; on
the GPU in one ``roi_align``); the validation rows get the validation transform once, when
read (:class:`~cnn_ray.data.preprocess.EvalTransform`), so they take ``eval.image_size``
squared times C bytes each. :func:`check_cache_fits` refuses, before training, a data set
that does not fit ``data.cache_max_mb`` (never a silent fallback to streaming).

Progressive resizing (``data.progressive``): the worker passes each epoch's side
(:meth:`~cnn_ray.config.DataConfig.crop_size_at`) as ``out_size`` with ``always_resize``, so
every epoch of the ramp takes the same random-resized crop from the stored rows, the epochs at
the stored side included (FFCV's progressive resizing crops at decode time the same way).

GPU-resident variant (:class:`DeviceShard`, chosen by :func:`shard_for_device`): on a CUDA
worker the share is copied to the GPU once (uint8) and every batch is gathered, cropped,
flipped (and cut out) there by :mod:`cnn_ray.data.device_augment` -- the same rows in the same
order with the same pixels as the numpy path, no background thread and no per-batch host->device
copy. On CPU the numpy path stays: it is faster there (``benchmarks/benchmark_augment.py``).

No Ray here: the Train glue (:mod:`cnn_ray.train.launch`, :mod:`cnn_ray.train.worker`) does the
``ray.put`` / ``ray.get``.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import torch

from cnn_ray.config import AugmentConfig, ConfigError, TrainConfig
from cnn_ray.data.augment import augment_batch, resize_center_crop
from cnn_ray.data.device_augment import (apply_params, augment_params, check_device_augment,
                                         device_supports, host_to_device)
from cnn_ray.data.shards import read_shard_images

__all__ = ["DeviceShard", "InMemoryShard", "check_cache_fits", "epoch_order",
           "read_prepared_arrays", "shard_for_device"]


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0) -> np.ndarray:
    """Row order of one epoch: ``(n,) int64``, a permutation seeded by ``(seed, epoch, rank)``
    (numpy ``default_rng``), or ``arange(n)`` without ``shuffle``."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch), int(rank)]).permutation(n)


class InMemoryShard:
    """One worker's images, labels and global row indices, held in memory.

    Attributes:
        images: ``(N, H, W, C)`` ``uint8`` (NHWC, as in the prepared shards).
        labels: ``(N,)`` ``int64`` class indices.
        idx: ``(N,)`` ``int64`` global row indices (the key of the augmentation draws).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, idx: np.ndarray):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"InMemoryShard: images must be (N, H, W, C) uint8, got "
                             f"{images.shape} {images.dtype}")
        if not (len(images) == len(labels) == len(idx)):
            raise ValueError(f"InMemoryShard: {len(images)} images, {len(labels)} labels and "
                             f"{len(idx)} idx must match")
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.idx = np.asarray(idx, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes + self.labels.nbytes + self.idx.nbytes)

    @classmethod
    def from_tables(cls, tables: Iterable[pa.Table], image_shape: tuple[int, int, int], *,
                    image_size: Optional[int] = None,
                    resize_size: Optional[int] = None) -> "InMemoryShard":
        """Collect prepared-shard batches (``image`` fixed-size binary, ``label``, ``idx``).

        Args:
            tables: pyarrow tables, e.g. ``shard.iter_batches(batch_format="pyarrow")``.
            image_shape: ``(H, W, C)`` stored in the shards.
            image_size: the validation transform (:func:`resize_center_crop`, eval): resize
                the stored image to ``resize_size`` (default ``image_size``) and keep the
                centre ``image_size`` square; None: the stored images as they are.
        Raises:
            ValueError: a table whose image width does not match ``image_shape``.
        """
        h, w, c = (int(v) for v in image_shape)
        images, labels, idx = [], [], []
        for table in tables:
            if len(table) == 0:
                continue
            im, lb, ix = read_shard_images(table, (h, w, c))
            if image_size is not None:
                im = resize_center_crop(im, image_size, resize=resize_size)
            images.append(im)  # a view of the Arrow buffer; np.concatenate below copies once
            labels.append(np.asarray(lb, dtype=np.int64))
            idx.append(np.asarray(ix, dtype=np.int64))
        if not images:
            side_h, side_w = (image_size, image_size) if image_size else (h, w)
            return cls(np.zeros((0, side_h, side_w, c), np.uint8), np.zeros(0, np.int64),
                       np.zeros(0, np.int64))
        return cls(np.concatenate(images), np.concatenate(labels), np.concatenate(idx))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, rank: int = 0, world: int = 1,
                    equal: bool = True) -> "InMemoryShard":
        """Rank ``rank`` of ``world``'s share of :func:`read_prepared_arrays` output.

        Rows ``rank, rank + world, ...``; with ``equal`` every rank keeps ``N // world`` rows (the
        remainder is left out, as in ``streaming_split(equal=True)``) so that DDP ranks run the
        same number of steps; without it (evaluation) every row is kept by exactly one rank.
        """
        n = len(arrays["label"])
        stop = (n // world) * world if equal else n
        sl = slice(rank, stop, world)
        return cls(arrays["image"][sl], arrays["label"][sl], arrays["idx"][sl])

    def order(self, *, shuffle: bool, seed: int, epoch: int, rank: int = 0) -> np.ndarray:
        """Row order for one epoch: a permutation seeded by ``(seed, epoch, rank)``."""
        return epoch_order(len(self), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank)

    def to_device(self, device: torch.device | str) -> "DeviceShard":
        """This shard's rows as tensors on ``device`` (:class:`DeviceShard`)."""
        return DeviceShard(self, device)

    def batches(self, batch_size: int, *, augment: Optional[AugmentConfig] = None, seed: int = 0,
                epoch: int = 0, rank: int = 0, shuffle: bool = True, drop_last: bool = False,
                prefetch: int = 2, out_size: Optional[int] = None,
                always_resize: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of ``{"image": (B, H, W, C) uint8, "label": (B,) int64}`` torch batches.

        ``augment`` (training) applies :func:`augment_batch` with draws from
        ``(seed, epoch, idx)``, resizing the stored images to ``out_size`` (the training side,
        ``data.image_size``, or the epoch's side of ``data.progressive``; random-resized crop
        from larger stored images) when given, also at the stored side with ``always_resize``;
        None (evaluation) yields the stored images. With ``prefetch``
        > 0 batches are prepared by one background thread up to ``prefetch`` ahead (numpy
        copies and torch kernels release the GIL, so this overlaps with the model step).

        Raises:
            ValueError: ``batch_size`` < 1.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows = self.order(shuffle=shuffle, seed=seed, epoch=epoch, rank=rank)
        stops = range(0, len(rows), batch_size)

        def make(start: int) -> Optional[dict[str, torch.Tensor]]:
            sel = rows[start:start + batch_size]
            if drop_last and len(sel) < batch_size:
                return None
            images = self.images[sel]
            if augment is not None:
                images = augment_batch(images, self.idx[sel], augment, seed=seed, epoch=epoch,
                                       out_size=out_size, always_resize=always_resize)
            return {"image": torch.from_numpy(np.ascontiguousarray(images)),
                    "label": torch.from_numpy(self.labels[sel])}

        if prefetch <= 0:
            for start in stops:
                b = make(start)
                if b is not None:
                    yield b
            return
        yield from _prefetched((make(s) for s in stops), prefetch)


class DeviceShard:
    """An :class:`InMemoryShard` held on a torch device (GPU-resident data).

    Attributes:
        device: where the tensors live.
        images: ``(N, H, W, C) uint8`` tensor on ``device`` (NHWC, as stored).
        labels: ``(N,) int64`` tensor on ``device``.
        idx: ``(N,) int64`` tensor on ``device``; a host copy is kept for the draws.

    Batches are gathered and augmented on the device by :mod:`cnn_ray.data.device_augment`.
    Each epoch costs one small host->device copy (the row order and the per-row parameters,
    ``N x 7`` int64, computed by the numpy path's own functions); batches then never wait on
    the host, so no background thread is needed (CUDA kernels run asynchronously).
    """

    def __init__(self, shard: InMemoryShard, device: torch.device | str):
        self.device = torch.device(device)
        self.images = host_to_device(shard.images, self.device)
        self.labels = host_to_device(shard.labels, self.device)
        self.idx = host_to_device(shard.idx, self.device)
        self._idx_host = np.array(shard.idx, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def nbytes(self) -> int:
        return int(sum(t.numel() * t.element_size() for t in (self.images, self.labels, self.idx)))

    def batches(self, batch_size: int, *, augment: Optional[AugmentConfig] = None, seed: int = 0,
                epoch: int = 0, rank: int = 0, shuffle: bool = True, drop_last: bool = False,
                prefetch: int = 0, padding_mode: str = "reflect",
                out_size: Optional[int] = None,
                always_resize: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of ``{"image": (B, H, W, C) uint8, "label": (B,) int64}`` on ``device``.

        Drop-in for :meth:`InMemoryShard.batches` with the same rows in the same order
        (:func:`epoch_order`) and, with ``augment``, the same pixels (crop, flip -- including
        ``hflip.mode: alternating`` -- and cutout; ``padding_mode="zeros"`` fills shifted-in
        pixels with 0 instead of reflecting); with ``out_size`` below the stored side the same
        random-resized-crop boxes, resampled on the device
        (:func:`~cnn_ray.data.resized_crop.resized_crop_torch`: close to the host's pixels,
        not identical), also at the stored side with ``always_resize`` (``data.progressive``).
        ``prefetch`` is accepted and ignored.

        Raises:
            ValueError: ``batch_size`` < 1; ``augment`` enables a technique the device path
                does not support (named as ``augment.<key>``). Raised at the call, not lazily.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        size = tuple(self.images.shape[1:3])
        resize = out_size is not None and (always_resize or out_size != size[0])
        out_size = out_size if augment is not None and resize else None
        if augment is not None:
            check_device_augment(augment, resize=out_size is not None)
        rows = epoch_order(len(self), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank)
        if augment is None and not shuffle:
            return self._slices(batch_size, drop_last)
        table = rows[:, None]
        if augment is not None:
            params = augment_params(self._idx_host[rows], augment, seed=seed, epoch=epoch,
                                    size=size, out_size=out_size, always_resize=True)
            table = np.concatenate([table, params], axis=1)
        return self._gathered(host_to_device(table, self.device), batch_size, augment,
                              drop_last, padding_mode, out_size)

    def _stops(self, batch_size: int, drop_last: bool) -> Iterator[tuple[int, int]]:
        n = len(self)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if drop_last and stop - start < batch_size:
                return
            yield start, stop

    def _slices(self, batch_size: int, drop_last: bool) -> Iterator[dict[str, torch.Tensor]]:
        """Stored order, no augmentation: views of the device tensors."""
        for start, stop in self._stops(batch_size, drop_last):
            yield {"image": self.images[start:stop], "label": self.labels[start:stop]}

    def _gathered(self, table: torch.Tensor, batch_size: int, augment: Optional[AugmentConfig],
                  drop_last: bool, padding_mode: str,
                  out_size: Optional[int] = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of ``table`` rows (device ``(N, 1, 7 or 11) int64``: row, then parameters)."""
        for start, stop in self._stops(batch_size, drop_last):
            part = table[start:stop]
            sel = part[:, 0]
            if augment is None:
                image = self.images.index_select(0, sel)
            else:
                image = apply_params(self.images, part[:, 1:], augment, sel=sel,
                                     padding_mode=padding_mode, out_size=out_size)
            yield {"image": image, "label": self.labels.index_select(0, sel)}


def shard_for_device(shard: InMemoryShard, device: torch.device | str,
                     augment: Optional[AugmentConfig] = None, *,
                     prefer_device: Optional[bool] = None, out_size: Optional[int] = None,
                     always_resize: bool = False) -> InMemoryShard | DeviceShard:
    """The shard a worker on ``device`` should draw batches from.

    Args:
        shard: this worker's rows on the host.
        device: the worker's training device.
        augment: the augmentation its batches get (None: evaluation).
        prefer_device: None (default): :class:`DeviceShard` on a CUDA device when ``augment``
            is supported there, else ``shard`` (the numpy path; it is the faster one on CPU and
            implements every technique); True: always the device path; False: never.
        out_size: the training side its batches are resized to (``data.image_size``), when
            the rows are stored larger: ``random_resized_crop`` then runs on the device too.
        always_resize: the batches are resized whatever ``out_size`` is (``data.progressive``:
            each epoch its own side, the stored one included), so the device path is chosen
            (and checked) for the resize, valid for every size of the ramp.

    Returns:
        ``shard`` itself or ``shard.to_device(device)``; both have ``batches(...)`` with the
        same signature and yield the same rows in the same order.

    Raises:
        ValueError: ``prefer_device=True`` with an ``augment`` the device path does not support.
    """
    device = torch.device(device)
    resize = out_size is not None and (always_resize
                                       or shard.images.shape[1:3] != (out_size, out_size))
    if prefer_device is None:
        prefer_device = device.type == "cuda" and device_supports(augment, resize=resize)
    if not prefer_device:
        return shard
    if augment is not None:
        check_device_augment(augment, resize=resize)
    return shard.to_device(device)


def read_prepared_arrays(files: Iterable[str], image_shape: tuple[int, int, int], *,
                         image_size: Optional[int] = None,
                         resize_size: Optional[int] = None) -> dict[str, np.ndarray]:
    """Read prepared Parquet shards whole into ``{"image", "label", "idx"}`` numpy arrays.

    Args:
        files: shard paths or URIs (``PreparedData.train_files`` / ``val_files``), in order.
        image_shape: ``(H, W, C)`` stored in the shards.
        image_size, resize_size: the validation transform, applied once here (eval; see
            :meth:`InMemoryShard.from_tables`); None: the stored images.
    Returns:
        ``image`` ``(N, H, W, C)`` uint8, ``label`` ``(N,)`` int64, ``idx`` ``(N,)`` int64.
    Raises:
        ValueError: a shard whose image width does not match ``image_shape``;
        OSError / pyarrow errors naming a file that cannot be read.
    """
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        tables.append(pq.read_table(f, columns=["image", "label", "idx"]))
    s = InMemoryShard.from_tables(tables, image_shape, image_size=image_size,
                                  resize_size=resize_size)
    return {"image": s.images, "label": s.labels, "idx": s.idx}


def check_cache_fits(cfg: TrainConfig, num_train: int, num_val: int,
                     image_shape: tuple[int, int, int]) -> int:
    """Bytes ``data.cache: memory`` holds for ``cfg``: ``num_train`` training images as stored
    (``image_shape`` ``(H, W, C)`` of the prepared data: ``data.store_size`` squares, else
    ``data.image_size``) plus ``num_val`` validation images at ``eval.image_size`` (after the
    validation transform), uint8.

    Raises:
        ConfigError: more than ``data.cache_max_mb`` (MB = 1e6 bytes); the message gives both
            parts, the limit, and the ways out (raise ``data.cache_max_mb``, stream with
            ``data.cache: none``, or store smaller).
    """
    (h, w, channels), (_, crop) = (int(v) for v in image_shape), cfg.eval_sizes()
    train_b, val_b = num_train * h * w * channels, num_val * crop * crop * channels
    total, limit = train_b + val_b, cfg.data.cache_max_mb * 1e6
    if total > limit:
        stored = (f"data.store_size={cfg.data.store_size}" if cfg.data.store_size is not None
                  else f"data.image_size={cfg.data.image_size}")
        raise ConfigError(
            f"data.cache=memory: the data set takes {total / 1e6:.0f} MB, more than "
            f"data.cache_max_mb={cfg.data.cache_max_mb:g}: {num_train} training images stored at "
            f"{h}x{w}x{channels} ({stored}) are {train_b / 1e6:.0f} MB and {num_val} "
            f"validation images at {crop}x{crop}x{channels} (eval.image_size) are "
            f"{val_b / 1e6:.0f} MB. Raise data.cache_max_mb to at least "
            f"{math.ceil(total / 1e6)}, or stream with data.cache=none"
            + (", or store smaller (data.store_size)" if cfg.data.store_size is not None else ""))
    return int(total)


_DONE = object()


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """Run ``items`` in a daemon thread, ``depth`` ahead; re-raise its error in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                if item is not None:
                    q.put(item)
            q.put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    t = threading.Thread(target=produce, name="cnn_ray-batches", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)
