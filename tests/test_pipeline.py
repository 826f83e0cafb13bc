"""Ray Data pipeline: new augmentation draws every epoch, the same draws for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_ray.config import AugmentConfig, DataConfig
from cnn_ray.data.pipeline import RawData, build_eval_dataset, build_raw_dataset, build_train_dataset
from cnn_ray.data.prepare import prepare_dataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def prepared(ray_session, cifar_small, tmp_path_factory):
    cfg = DataConfig(train=str(cifar_small["train"]), val=str(cifar_small["test"]), shard_size=128)
    return prepare_dataset(cfg, str(tmp_path_factory.mktemp("prep") / "p"), progress=False), cfg


def test_epochs_differ_and_seed_repeats(prepared):
    data, dcfg = prepared
    dcfg = dcfg.model_copy(update={"shuffle": "none"})  # fixed order: differences are augmentation
    aug = AugmentConfig()  # crop + flip
    ds = build_train_dataset(data.train_files, dcfg, aug, image_shape=data.image_shape, seed=3)
    ds.context.execution_options.preserve_order = True
    first = [b["image"].copy() for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    second = [b["image"].copy() for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    a, b = np.concatenate(first), np.concatenate(second)
    assert a.shape == b.shape == (data.num_train, 32, 32, 3) and a.dtype == np.uint8
    assert (a != b).any(axis=(1, 2, 3)).mean() > 0.5  # most images drew new crops/flips

    again = build_train_dataset(data.train_files, dcfg, aug, image_shape=data.image_shape, seed=3)
    again.context.execution_options.preserve_order = True
    c = np.concatenate([x["image"] for x in again.iter_batches(batch_size=None, batch_format="numpy")])
    assert np.array_equal(a, c)  # same seed, same first epoch


def test_photo_policies_run_in_the_ray_data_tasks(prepared):
    """augment.auto_augment and random_erasing in the streaming tasks: the rows equal the host
    function on the stored images (seeded per image), and the next epoch draws anew."""
    from cnn_ray.data.augment import augment_batch
    from cnn_ray.data.memory import read_prepared_arrays

    data, dcfg = prepared
    dcfg = dcfg.model_copy(update={"shuffle": "none"})
    aug = AugmentConfig.model_validate({"auto_augment": {"policy": "trivial_augment_wide"},
                                        "random_erasing": {"enabled": True}})
    ds = build_train_dataset(data.train_files, dcfg, aug, image_shape=data.image_shape, seed=5)
    ds.context.execution_options.preserve_order = True
    epochs = [np.concatenate([b["image"] for b in ds.iter_batches(batch_size=None,
                                                                  batch_format="numpy")])
              for _ in range(2)]
    stored = read_prepared_arrays(data.train_files, data.image_shape)
    want = augment_batch(stored["image"], stored["idx"], aug, seed=5, epoch=0)
    assert np.array_equal(epochs[0], want)
    assert (epochs[0] != epochs[1]).any(axis=(1, 2, 3)).mean() > 0.5


def test_eval_path_is_deterministic_and_unaugmented(prepared):
    data, dcfg = prepared
    ds = build_eval_dataset(data.val_files, dcfg, image_shape=data.image_shape)
    ds.context.execution_options.preserve_order = True
    p1 = np.concatenate([b["image"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
    p2 = np.concatenate([b["image"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
    assert p1.shape == (data.num_val, 32, 32, 3) and np.array_equal(p1, p2)


def test_raw_path_skips_bad_files(ray_session, cifar_small, tmp_path):
    import shutil

    root = tmp_path / "raw"
    shutil.copytree(cifar_small["test"], root)
    (root / "cat" / "broken.jpg").write_bytes(b"not an image at all")
    dcfg = DataConfig(train=str(root), val_fraction=0.2, use_raw=True)
    raw = RawData(dcfg, seed=0)
    assert raw.num_train + raw.num_val == 101  # the listing keeps the file; decoding drops it
    ds = build_raw_dataset(raw.train_source, dcfg, AugmentConfig(), train=True)
    n = sum(len(b["label"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
    bad_in_train = any(r.path.endswith("broken.jpg") for r in raw.train_source.records)
    assert n == raw.num_train - int(bad_in_train)
    assert len(raw.mean) == 3 and all(0.2 < m < 0.7 for m in raw.mean)
