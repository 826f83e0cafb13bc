"""Ray Data glue: stream prepared shards (or raw files), shuffle, augment, hand to Train.

The train dataset is ``read_parquet(shards, shuffle=files) -> [random_shuffle] ->
map_batches(AugmentBatches)``: augmentation runs in Ray Data tasks on whole batches
(``cnn_ray.data.augment``), outside the training process. Batches leave the pipeline as uint8
NHWC (4x smaller than float in the object store); normalisation happens on the training device.

Random draws: each image's augmentation is a hash of (seed, epoch, row idx), so a row gets the
same draws whatever worker or batch it lands in, new draws every epoch, and the same run twice
with one seed gives the same draws. The epoch is Ray Data's execution counter
(``DataContext._execution_idx``, the counter behind ``RandomSeedConfig(reseed_after_execution=
True)``): every ``iter_torch_batches`` pass over a Train shard is a new execution.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

import ray
from ray.data import Dataset

from cnn_ray.config import AugmentConfig, DataConfig
from cnn_ray.data.augment import augment_batch, resize_center_crop


def _execution_epoch() -> int:
    ctx = ray.data.DataContext.get_current()
    return int(getattr(ctx, "_execution_idx", 0))


class AugmentBatches:
    """``map_batches`` function: pyarrow shard batch -> augmented ``{"image", "label"}``.

    Input: a ``pyarrow.Table`` batch of a prepared shard (``image`` fixed-size binary, ``label``,
    ``idx``). Output: ``{"image": (N, H, W, C) uint8, "label": (N,) int64}``. The epoch used for
    the draws is ``epoch_offset`` plus Ray Data's execution counter.
    """

    def __init__(self, cfg: AugmentConfig, *, seed: int, epoch_offset: int = 0, train: bool = True,
                 image_size: Optional[int] = None):
        self.cfg = cfg
        self.seed = seed
        self.epoch_offset = epoch_offset
        self.train = train
        self.image_size = image_size

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        from cnn_ray.data.prepare import read_shard_images

        images, labels, idx = read_shard_images(batch)
        if self.image_size is not None and images.shape[1:3] != (self.image_size, self.image_size):
            images = resize_center_crop(images, self.image_size)
        if self.train:
            images = augment_batch(images, idx, self.cfg, seed=self.seed,
                                   epoch=self.epoch_offset + _execution_epoch())
        return {"image": images, "label": labels}


def read_shards(files: list[str], data: DataConfig, *, seed: int, train: bool) -> Dataset:
    """``read_parquet`` of prepared shard files, file order shuffled per epoch when training."""
    shuffle = None
    if train and data.shuffle != "none":
        shuffle = ray.data.FileShuffleConfig(seed=seed, reseed_after_execution=True)
    return ray.data.read_parquet(files, shuffle=shuffle, columns=["image", "label", "idx"])


def build_train_dataset(files: list[str], data: DataConfig, augment: AugmentConfig, *, seed: int,
                        epoch_offset: int = 0, batch_rows: int = 256) -> Dataset:
    """The streaming, augmented training dataset over prepared shards.

    ``data.shuffle``: ``none``; ``files`` (shard order per epoch); ``local`` (plus the shuffle
    buffer in ``iter_torch_batches``, applied by the worker); ``full`` (a ``random_shuffle``
    of all rows every epoch, before augmentation; costly, all rows go through the object store).
    """
    ds = read_shards(files, data, seed=seed, train=True)
    if data.shuffle == "full":
        ds = ds.random_shuffle(seed=ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True))
    return ds.map_batches(
        AugmentBatches(augment, seed=seed, epoch_offset=epoch_offset, train=True),
        batch_format="pyarrow", batch_size=batch_rows, num_cpus=data.data_cpus,
        zero_copy_batch=True,
    )


def build_eval_dataset(files: list[str], data: DataConfig, *, batch_rows: int = 1024) -> Dataset:
    """The evaluation dataset: shards decoded to ``{"image", "label"}``, no augmentation."""
    ds = read_shards(files, data, seed=0, train=False)
    return ds.map_batches(
        AugmentBatches(AugmentConfig(), seed=0, train=False, image_size=data.image_size),
        batch_format="pyarrow", batch_size=batch_rows, num_cpus=data.data_cpus, zero_copy_batch=True,
    )
