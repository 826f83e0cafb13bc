"""Worker-side in-memory cache (``data.cache: worker``): numeric core, no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from cnn_ray.config import AugmentConfig
from cnn_ray.data.augment import augment_batch
from cnn_ray.data.memory import InMemoryShard
from cnn_ray.data.shards import fixed_size_binary


def shard(n=100, h=8, w=8, c=3, seed=0) -> InMemoryShard:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    return InMemoryShard(images, np.arange(n) % 10, np.arange(1000, 1000 + n))


def collect(batches) -> tuple[torch.Tensor, torch.Tensor]:
    bs = list(batches)
    return torch.cat([b["image"] for b in bs]), torch.cat([b["label"] for b in bs])


def test_epoch_covers_every_row_once_with_shapes_and_dtypes():
    s = shard()
    bs = list(s.batches(32, augment=None, seed=1, epoch=0))
    assert [len(b["label"]) for b in bs] == [32, 32, 32, 4]
    assert all(b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (8, 8, 3) for b in bs)
    assert all(b["label"].dtype == torch.int64 for b in bs)
    images, labels = collect(bs)
    # every stored image appears exactly once (no augmentation): match rows by their bytes
    got = sorted(bytes(x.numpy().tobytes()) for x in images)
    assert got == sorted(bytes(x.tobytes()) for x in s.images)
    assert sorted(labels.tolist()) == sorted(s.labels.tolist())
    assert len(list(s.batches(32, drop_last=True))) == 3


def test_order_differs_per_epoch_and_rank_and_repeats_with_seed():
    s = shard()
    a = s.order(shuffle=True, seed=3, epoch=0)
    assert not np.array_equal(a, s.order(shuffle=True, seed=3, epoch=1))
    assert not np.array_equal(a, s.order(shuffle=True, seed=3, epoch=0, rank=1))
    assert np.array_equal(a, s.order(shuffle=True, seed=3, epoch=0))
    assert np.array_equal(s.order(shuffle=False, seed=3, epoch=5), np.arange(len(s)))


def test_augmented_batches_use_the_counter_based_draws():
    s = shard()
    cfg = AugmentConfig()  # random crop (pad 4) + hflip
    b = next(iter(s.batches(16, augment=cfg, seed=7, epoch=2, prefetch=0)))
    rows = s.order(shuffle=True, seed=7, epoch=2)[:16]
    want = augment_batch(s.images[rows], s.idx[rows], cfg, seed=7, epoch=2)
    assert torch.equal(b["image"], torch.from_numpy(want))
    e0, _ = collect(s.batches(100, augment=cfg, seed=7, epoch=0, shuffle=False))
    e1, _ = collect(s.batches(100, augment=cfg, seed=7, epoch=1, shuffle=False))
    again, _ = collect(s.batches(100, augment=cfg, seed=7, epoch=0, shuffle=False))
    assert not torch.equal(e0, e1) and torch.equal(e0, again)


def test_prefetch_thread_gives_the_same_batches_and_reraises_errors():
    s = shard()
    cfg = AugmentConfig()
    a = collect(s.batches(10, augment=cfg, seed=1, epoch=0, prefetch=0))
    b = collect(s.batches(10, augment=cfg, seed=1, epoch=0, prefetch=3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    bad = InMemoryShard(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4), np.zeros(4))
    bad.images = np.zeros((4, 8, 8), np.uint8)  # broken after construction: 3-D
    with pytest.raises(ValueError, match=r"images must be \(N, H, W, C\) uint8, got \(2, 8, 8\)"):
        list(bad.batches(2, augment=cfg, prefetch=2))  # the thread's own error, re-raised
    # an abandoned iterator does not hang (the producer thread is released)
    it = s.batches(1, augment=cfg, prefetch=1)
    next(it)
    it.close()


def test_from_tables_reads_prepared_shard_batches_and_resizes():
    s = shard(n=20)
    table = pa.table({"image": fixed_size_binary(s.images), "label": pa.array(s.labels),
                      "idx": pa.array(s.idx)})
    got = InMemoryShard.from_tables([table.slice(0, 7), table.slice(7)], (8, 8, 3))
    assert np.array_equal(got.images, s.images) and np.array_equal(got.idx, s.idx)
    assert got.nbytes == s.images.nbytes + 2 * 8 * 20
    small = InMemoryShard.from_tables([table], (8, 8, 3), image_size=4)
    assert small.images.shape == (20, 4, 4, 3)
    assert len(InMemoryShard.from_tables([], (8, 8, 3))) == 0
    with pytest.raises(ValueError, match="bytes per row"):
        InMemoryShard.from_tables([table], (4, 4, 3))


def test_bad_construction_is_a_clear_error():
    with pytest.raises(ValueError, match="uint8"):
        InMemoryShard(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="must match"):
        InMemoryShard(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="batch_size"):
        list(shard().batches(0))


def test_order_is_the_seeded_numpy_permutation_shared_with_the_device_shard():
    from cnn_ray.data.memory import DeviceShard, epoch_order

    s = shard()
    want = np.random.default_rng([3, 2, 1]).permutation(len(s))
    assert np.array_equal(s.order(shuffle=True, seed=3, epoch=2, rank=1), want)
    assert np.array_equal(epoch_order(len(s), shuffle=True, seed=3, epoch=2, rank=1), want)
    assert isinstance(s.to_device("cpu"), DeviceShard)
