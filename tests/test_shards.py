"""The prepared-shard format (cnn_ray.data.shards): writer, readers, channel statistics. No Ray."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import cnn_ray.data.shards as shards
from cnn_ray.data.shards import (ChannelStats, ShardWriter, channel_sums, fixed_size_binary,
                                 read_metadata, read_shard_images)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ------------------------------------------------------------------------- channel stats
def test_channel_stats_match_numpy_over_a_split_batch(rng):
    x = rng.integers(0, 256, (37, 9, 11, 3), dtype=np.uint8)
    stats = ChannelStats(3)
    stats.add_images(x[:20])
    stats.add_images(x[20:])
    assert stats.pixels == 37 * 9 * 11
    mean, std = stats.mean_std()
    xf = x.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, xf.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, xf.std(0), rtol=1e-9)
    assert isinstance(mean, list) and all(isinstance(v, float) for v in mean + std)
    whole = ChannelStats(3)
    whole.add_sums(*channel_sums(x), 9 * 11)
    assert whole.mean_std() == (mean, std)  # exact integer sums: any grouping, same floats


def test_channel_stats_empty_and_bad_input():
    assert ChannelStats(3).mean_std() == ([0.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="uint8"):
        ChannelStats(3).add_images(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        ChannelStats(3).add_images(np.zeros((2, 4, 4, 1), np.uint8))


# ------------------------------------------------------------------------- writer + readers
def _write(tmp_path, images, labels, shard_size, meta):
    w = ShardWriter(str(tmp_path / "train"), "train", shard_size, images.shape[1:])
    for start in range(0, len(images), 7):  # blocks that straddle shard boundaries
        w.add(fixed_size_binary(images[start:start + 7]), labels[start:start + 7])
    w.close(meta)
    return w


@pytest.mark.parametrize("max_open", [128, 2])  # 2: shards closed early and rewritten at the end
def test_shard_writer_round_trip(tmp_path, rng, monkeypatch, max_open):
    monkeypatch.setattr(shards, "_MAX_OPEN_SHARDS", max_open)
    images = rng.integers(0, 256, (23, 4, 5, 3), dtype=np.uint8)
    labels = np.arange(23) % 4
    w = _write(tmp_path, images, labels, 5, {"class_names": list("abcd"), "image_shape": [4, 5, 3]})
    assert [f.rsplit("/", 1)[1] for f in w.files] == [f"part-{i:05d}.parquet" for i in range(5)]
    assert w.num_rows == 23 and not list((tmp_path / "train").glob(".*"))  # no temp files left
    got = [read_shard_images(pq.read_table(f)) for f in w.files]  # shape from the metadata
    assert np.array_equal(np.concatenate([g[0] for g in got]), images)
    assert np.concatenate([g[1] for g in got]).tolist() == labels.tolist()
    assert np.concatenate([g[2] for g in got]).tolist() == list(range(23))
    for f in w.files:
        meta = read_metadata(pq.read_schema(f))
        assert meta["class_names"] == list("abcd") and meta["num_rows"] == pq.read_metadata(f).num_rows
    assert json.loads(pq.read_schema(w.files[-1]).metadata[b"cnn_ray"])["num_rows"] == 3


def test_read_shard_images_errors(tmp_path, rng):
    images = rng.integers(0, 256, (6, 2, 2, 3), dtype=np.uint8)
    w = _write(tmp_path, images, np.zeros(6, np.int64), 10, {})
    table = pq.read_table(w.files[0])
    with pytest.raises(ValueError, match="no 'cnn_ray' image_shape"):
        read_shard_images(table)
    with pytest.raises(ValueError, match="12 bytes per row"):
        read_shard_images(table, (3, 3, 3))
    im, _, idx = read_shard_images(table.slice(2, 3), (2, 2, 3))
    assert np.array_equal(im, images[2:5]) and idx.tolist() == [2, 3, 4]
