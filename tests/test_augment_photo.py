"""torchvision v2 photo augmentations: augment.auto_augment and augment.random_erasing, on the
host batch path (streaming Ray Data tasks and the memory cache), seeded per image; the device
path refuses them. Numeric core: no Ray started."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from cnn_ray.config import AugmentConfig, ConfigError, TrainConfig
from cnn_ray.data.augment import augment_batch
from cnn_ray.data.device_augment import (augment_batch_torch, check_device_augment,
                                         device_supports)
from cnn_ray.data.memory import InMemoryShard, shard_for_device
from cnn_ray.data.photo import auto_augment_, random_erasing_
from cnn_ray.data.shards import fixed_size_binary

POLICIES = ["trivial_augment_wide", "rand_augment", "auto_augment"]
OFF = {"random_crop": {"enabled": False}, "hflip": {"enabled": False}}


def images(n=32, size=24, c=3, seed=0, low=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, 256, (n, size, size, c), dtype=np.uint8)


def policy(name: str, **kw) -> AugmentConfig:
    return AugmentConfig(**OFF, auto_augment={"policy": name, **kw})


def erasing(**kw) -> AugmentConfig:
    return AugmentConfig(**OFF, random_erasing={"enabled": True, **kw})


def run(x, cfg, *, seed=0, epoch=0, idx=None):
    idx = np.arange(len(x), dtype=np.int64) if idx is None else idx
    return augment_batch(x, idx, cfg, seed=seed, epoch=epoch)


# ------------------------------------------------------------------------- policies
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", POLICIES)
def test_each_policy_changes_images_and_keeps_shape_and_dtype(name, c):
    x = images(c=c)
    before = x.copy()
    out = run(x, policy(name))
    assert out.shape == x.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(x, before)  # the input is not modified
    changed = np.any(out != x, axis=(1, 2, 3))
    assert changed.sum() >= len(x) // 2, (name, changed.sum())


@pytest.mark.parametrize("name", POLICIES)
def test_policy_repeats_with_seed_and_epoch_and_differs_otherwise(name):
    x = images()
    a = run(x, policy(name), seed=3, epoch=1)
    assert np.array_equal(a, run(x, policy(name), seed=3, epoch=1))
    assert not np.array_equal(a, run(x, policy(name), seed=3, epoch=2))
    assert not np.array_equal(a, run(x, policy(name), seed=4, epoch=1))


def test_an_images_output_does_not_depend_on_its_batch():
    x = images(16)
    idx = np.arange(100, 116, dtype=np.int64)
    cfg = policy("trivial_augment_wide").model_copy(
        update={"random_erasing": erasing(p=0.5).random_erasing})
    whole = run(x, cfg, idx=idx, epoch=5)
    perm = np.random.default_rng(1).permutation(16)
    shuffled = run(x[perm], cfg, idx=idx[perm], epoch=5)
    assert np.array_equal(shuffled, whole[perm])
    assert np.array_equal(run(x[3:4], cfg, idx=idx[3:4], epoch=5), whole[3:4])


def test_torch_global_generator_is_left_as_it_was():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    run(images(8), policy("rand_augment"))
    assert torch.equal(torch.rand(3), want)


def test_policy_rejects_other_band_counts():
    with pytest.raises(ValueError, match="1- or 3-band"):
        run(images(4, c=4), policy("trivial_augment_wide"))
    x = images(4, c=4)
    with pytest.raises(ValueError, match="augment.auto_augment"):
        auto_augment_(x, np.arange(4), policy("rand_augment").auto_augment, seed=0, epoch=0)


# ------------------------------------------------------------------------- random erasing
def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The erased rectangle (top, left, height, width) of an (H, W) mask; None if empty;
    AssertionError unless the mask is exactly a filled rectangle."""
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    t, b, l, r = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    assert mask[t:b, l:r].all() and mask.sum() == (b - t) * (r - l)
    return t, l, b - t, r - l


@pytest.mark.parametrize("c", [1, 3, 5])
def test_random_erasing_p1_erases_one_rectangle_within_scale_and_ratio(c):
    size = 64
    x = images(64, size=size, c=c, low=1)  # no zeros: the erased pixels are the zeros
    scale, ratio = (0.02, 0.33), (0.3, 3.3)
    out = run(x, erasing(p=1.0, scale=scale, ratio=ratio))
    erased = 0
    for i in range(len(x)):
        zero = out[i] == 0
        assert (zero == zero[..., :1]).all()  # every band of the same pixels
        box = _box(zero[..., 0])
        if box is None:  # torchvision gives up after 10 draws that do not fit: unchanged
            assert np.array_equal(out[i], x[i])
            continue
        erased += 1
        _, _, h, w = box
        keep = ~zero[..., 0]
        assert np.array_equal(out[i][keep], x[i][keep])
        # h, w are rounded from sqrt(area * r), sqrt(area / r): allow a pixel either way
        assert scale[0] * size**2 * 0.7 <= h * w <= scale[1] * size**2 * 1.15, (h, w)
        assert ratio[0] * 0.7 <= h / w <= ratio[1] * 1.3, (h, w)
    assert erased >= 60


def test_random_erasing_p0_changes_nothing_and_value_fills():
    x = images(16)
    assert np.array_equal(run(x, erasing(p=0.0)), x)
    out = run(x, erasing(p=1.0, value=255))
    assert all((out[i] != x[i]).any() <= (out[i] == 255).any() for i in range(16))
    assert np.array_equal(run(x, erasing(p=1.0), epoch=2), run(x, erasing(p=1.0), epoch=2))
    assert not np.array_equal(run(x, erasing(p=1.0), epoch=2), run(x, erasing(p=1.0), epoch=3))


def test_random_erasing_direct_call_is_in_place():
    x = images(8, low=1)
    random_erasing_(x, np.arange(8), erasing(p=1.0).random_erasing, seed=0, epoch=0)
    assert (x == 0).any()


def test_order_erasing_after_policy_and_cutout():
    # random erasing is last: with value 0 and p=1 the erased box stays exactly 0
    cfg = AugmentConfig(**OFF, auto_augment={"policy": "trivial_augment_wide"},
                        cutout={"enabled": True, "size": 4},
                        random_erasing={"enabled": True, "p": 1.0, "value": 7})
    out = run(images(8, low=8), cfg)
    assert all((out[i] == 7).all(axis=-1).sum() > 0 for i in range(8))


# ------------------------------------------------------------------------- config
def test_defaults_are_torchvisions():
    from torchvision.transforms import v2

    cfg = AugmentConfig()
    aa, re = cfg.auto_augment, cfg.random_erasing
    assert aa.policy == "none" and not aa.enabled and not re.enabled
    assert (aa.num_ops, aa.magnitude, aa.num_magnitude_bins) == (2, 9, 31)
    assert aa.auto_augment_policy == "imagenet"
    ref = v2.RandomErasing()
    assert (re.p, tuple(re.scale), tuple(re.ratio), [float(re.value)]) == (
        ref.p, tuple(ref.scale), tuple(ref.ratio), list(ref.value))
    ra = v2.RandAugment()
    assert (ra.num_ops, ra.magnitude, ra.num_magnitude_bins) == (2, 9, 31)


@pytest.mark.parametrize("raw, match", [
    ({"auto_augment": {"policy": "randaugment"}}, r"auto_augment\.policy"),
    ({"auto_augment": {"policy": "rand_augment", "magnitude": 31}}, "below num_magnitude_bins"),
    ({"auto_augment": {"auto_augment_policy": "mnist"}}, "auto_augment_policy"),
    ({"random_erasing": {"scale": [0.5, 0.1]}}, "low <= high"),
    ({"random_erasing": {"scale": [0.1, 1.5]}}, "high <= 1"),
    ({"random_erasing": {"value": 256}}, "value"),
    ({"random_erasing": {"p": 1.5}}, "p"),
])
def test_config_validation_names_the_key(raw, match):
    with pytest.raises(ValidationError, match=match):
        AugmentConfig.model_validate(raw)
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({"data": {"train": "x"}, "augment": raw}, check_paths=False)


def test_config_refuses_a_policy_on_multiband_data():
    with pytest.raises(ConfigError, match="auto_augment.policy=rand_augment is defined for 1- "
                       "or 3-band"):
        TrainConfig.from_dict({"data": {"train": "x", "channels": 8},
                               "augment": {"auto_augment": {"policy": "rand_augment"}}},
                              check_paths=False)
    TrainConfig.from_dict({"data": {"train": "x", "channels": 8},  # erasing takes any bands
                           "augment": {"random_erasing": {"enabled": True}}}, check_paths=False)


# ------------------------------------------------------------------------- the paths
def test_memory_path_applies_them():
    x = images(20)
    s = InMemoryShard(x, np.arange(20) % 3, np.arange(500, 520))
    cfg = policy("trivial_augment_wide").model_copy(
        update={"random_erasing": erasing(p=1.0).random_erasing})
    for prefetch in (0, 2):
        got = list(s.batches(8, augment=cfg, seed=2, epoch=1, prefetch=prefetch))
        rows = s.order(shuffle=True, seed=2, epoch=1)
        for k, b in enumerate(got):
            sel = rows[k * 8:(k + 1) * 8]
            want = augment_batch(x[sel], s.idx[sel], cfg, seed=2, epoch=1)
            assert np.array_equal(b["image"].numpy(), want)
            assert (b["image"].numpy() != x[sel]).any(axis=(1, 2, 3)).all()


def test_streaming_task_applies_them():
    import ray.data

    from cnn_ray.data.pipeline import AUGMENT_START_EPOCH, AugmentBatches

    x = images(16, size=16)
    table = pa.table({"image": fixed_size_binary(x), "label": pa.array(np.arange(16) % 3),
                      "idx": pa.array(np.arange(16, dtype=np.int64))})
    cfg = policy("auto_augment", auto_augment_policy="cifar10").model_copy(
        update={"random_erasing": erasing(p=0.5).random_erasing})
    ctx = ray.data.DataContext.get_current()
    before = ctx.get_config(AUGMENT_START_EPOCH, None)
    threads = torch.get_num_threads()
    try:
        ctx.set_config(AUGMENT_START_EPOCH, 2)
        out = AugmentBatches(cfg, image_shape=(16, 16, 3), seed=9)(table)["image"]
        assert torch.get_num_threads() == 1  # one torch thread in a Data task
    finally:
        torch.set_num_threads(threads)
        if before is None:
            ctx.remove_config(AUGMENT_START_EPOCH)
        else:
            ctx.set_config(AUGMENT_START_EPOCH, before)
    assert np.array_equal(out, augment_batch(x, np.arange(16), cfg, seed=9, epoch=2))
    assert (out != x).any(axis=(1, 2, 3)).sum() >= 8


@pytest.mark.parametrize("cfg", [policy("trivial_augment_wide"), erasing()],
                         ids=["auto_augment", "random_erasing"])
def test_device_path_refuses_naming_the_key_and_the_host_path_runs_it(cfg):
    key = "auto_augment" if cfg.auto_augment.enabled else "random_erasing"
    assert not device_supports(cfg)
    with pytest.raises(ConfigError, match=rf"augment\.{key}: not supported by the device"):
        check_device_augment(cfg)
    x = images(8)
    with pytest.raises(ConfigError, match=rf"augment\.{key}"):
        augment_batch_torch(torch.from_numpy(x), np.arange(8), cfg, seed=0, epoch=0)
    s = InMemoryShard(x, np.arange(8) % 2, np.arange(8))
    with pytest.raises(ConfigError, match=rf"augment\.{key}"):
        s.to_device("cpu").batches(4, augment=cfg)
    with pytest.raises(ConfigError, match=rf"augment\.{key}"):
        shard_for_device(s, "cpu", cfg, prefer_device=True)
    # the default choice on any device (CUDA included) keeps such a run on the host path
    assert shard_for_device(s, "cpu", cfg) is s
    assert shard_for_device(s, "cuda", cfg) is s  # no CUDA needed: nothing is copied
