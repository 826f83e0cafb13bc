"""The augmentation epoch of streaming runs is explicit: a resumed run draws its own epochs'
augmentations (the start epoch on the DataContext), not epoch 0's again."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cnn_ray.config import AugmentConfig
from cnn_ray.data.augment import augment_batch
from cnn_ray.data.pipeline import AUGMENT_START_EPOCH, AugmentBatches
from cnn_ray.data.shards import fixed_size_binary
from cnn_ray.train.launch import CheckpointEpoch


def _batch(n: int = 16) -> tuple[pa.Table, np.ndarray]:
    images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return pa.table({"image": fixed_size_binary(images), "label": pa.array(np.arange(n) % 3),
                     "idx": pa.array(np.arange(n, dtype=np.int64))}), images


def test_augment_batches_use_the_start_epoch(data_context):
    cfg = AugmentConfig.model_validate({"random_crop": {"padding": 2}, "cutout": {"enabled": True}})
    table, images = _batch()
    fn = AugmentBatches(cfg, image_shape=(8, 8, 3), seed=7)
    idx = np.arange(16, dtype=np.int64)
    data_context.set_config(AUGMENT_START_EPOCH, 0)
    first = fn(table)["image"]
    data_context.set_config(AUGMENT_START_EPOCH, 3)  # a worker group resumed after 3 epochs
    resumed = fn(table)["image"]
    assert np.array_equal(first, augment_batch(images.copy(), idx, cfg, seed=7, epoch=0))
    assert np.array_equal(resumed, augment_batch(images.copy(), idx, cfg, seed=7, epoch=3))
    assert not np.array_equal(first, resumed)


def test_checkpoint_epoch_reads_the_newest_checkpoint(tmp_path):
    import torch

    from cnn_ray.train.checkpoint import save_checkpoint

    assert CheckpointEpoch(str(tmp_path / "none"))() == 0
    assert CheckpointEpoch("s3://bucket/run")() == 0  # URIs are not read here
    model = torch.nn.Linear(2, 2)
    for epoch in (1, 2):
        save_checkpoint(tmp_path / f"checkpoint_2026-11-30_0{epoch}", model=model, epoch=epoch,
                        config={}, class_names=["a", "b"], mean=[0.5], std=[0.2])
    (tmp_path / "checkpoint_2026-11-30_09").mkdir()  # incomplete (no meta.json): ignored
    assert CheckpointEpoch(str(tmp_path))() == 2


@pytest.mark.ray
def test_split_config_sets_the_start_epoch_on_train_only(ray_session):
    import ray.data

    from cnn_ray.train.launch import SplitValDataConfig

    conf = SplitValDataConfig(start_epoch=lambda: 4)
    out = conf.configure({"train": ray.data.range(8), "val": ray.data.range(4)}, world_size=1,
                         worker_handles=None, worker_node_ids=[None])
    train_ctx, val_ctx = out[0]["train"].get_context(), out[0]["val"].get_context()
    assert train_ctx.get_config(AUGMENT_START_EPOCH) == 4
    assert val_ctx.get_config(AUGMENT_START_EPOCH, None) is None
