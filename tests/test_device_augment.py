"""Device-side batch augmentation and the device-resident memory cache: numeric core, no Ray.

Run on CPU (``device="cpu"``); the code is device-agnostic torch, so the same ops run on CUDA,
and the device-parametrised tests run there too whenever a CUDA device is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnn_ray.config import AugmentConfig
from cnn_ray.data.augment import augment_batch
from cnn_ray.data.device_augment import (PARAM_COLUMNS, augment_batch_torch, augment_params,
                                         batch_crop_flip, check_device_augment, device_supports,
                                         host_to_device)
from cnn_ray.data.geometric import crop_flip
from cnn_ray.data.memory import DeviceShard, InMemoryShard, shard_for_device
from cnn_ray.recipe import alternating_flip_mask

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

CONFIGS = {
    "crop+flip": {},
    "crop only, pad 2": {"random_crop": {"padding": 2}, "hflip": {"enabled": False}},
    "flip only, p=0.3": {"random_crop": {"enabled": False}, "hflip": {"p": 0.3}},
    "shift past the image": {"random_crop": {"padding": 11}},
    "crop+flip+cutout": {"cutout": {"enabled": True, "size": 5, "p": 0.7}},
    "cutout only": {"random_crop": {"enabled": False}, "hflip": {"enabled": False},
                    "cutout": {"enabled": True}},
    "nothing": {"random_crop": {"enabled": False}, "hflip": {"enabled": False}},
}


def images(n=64, h=9, w=7, c=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def shard(n=100, h=8, w=8, c=3) -> InMemoryShard:
    return InMemoryShard(images(n, h, w, c), np.arange(n) % 10, np.arange(1000, 1000 + n))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("c", [1, 3, 5])
def test_equals_the_numpy_path_pixel_for_pixel_in_both_layouts(name, c, device):
    x = images(c=c)
    idx = np.arange(len(x)) * 13 + 5
    cfg = AugmentConfig(**CONFIGS[name])
    want = augment_batch(x, idx, cfg, seed=11, epoch=4)
    nhwc = augment_batch_torch(torch.from_numpy(x).to(device), idx, cfg, seed=11, epoch=4)
    assert nhwc.dtype == torch.uint8 and nhwc.shape == x.shape and nhwc.device.type == device
    assert np.array_equal(nhwc.cpu().numpy(), want)
    planar = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
    nchw = augment_batch_torch(planar, idx, cfg, seed=11, epoch=4, layout="nchw")
    assert np.array_equal(nchw.permute(0, 2, 3, 1).cpu().numpy(), want)


def test_batch_crop_flip_selects_rows_and_zero_pads():
    x = images(n=10)
    sel = torch.tensor([3, 3, 0, 9])
    sy, sx = torch.tensor([0, -2, 1, 3]), torch.tensor([1, 0, -3, 2])
    flip = torch.tensor([True, False, True, False])
    got = batch_crop_flip(torch.from_numpy(x), sy, sx, flip, sel=sel)
    want = crop_flip(x[sel.numpy()], sy.numpy(), sx.numpy(), flip.numpy())
    assert np.array_equal(got.numpy(), want)
    zeros = batch_crop_flip(torch.from_numpy(x), sy, sx, flip, sel=sel, padding_mode="zeros")
    for b in range(4):  # reference: zero-pad, crop, then mirror
        padded = np.pad(x[int(sel[b])], ((4, 4), (4, 4), (0, 0)))
        ref = padded[4 + int(sy[b]):4 + int(sy[b]) + 9, 4 + int(sx[b]):4 + int(sx[b]) + 7]
        assert np.array_equal(zeros[b].numpy(), ref[:, ::-1] if flip[b] else ref)
    with pytest.raises(ValueError, match="padding_mode"):
        batch_crop_flip(torch.from_numpy(x), sy, sx, flip, sel=sel, padding_mode="edge")


def test_alternating_flip_alternates_and_uses_the_recipe_mask():
    x = images(n=32, c=3)
    idx = np.arange(32) + 100
    cfg = AugmentConfig(random_crop={"enabled": False}, hflip={"mode": "alternating"})
    outs = [augment_batch_torch(torch.from_numpy(x), idx, cfg, seed=3, epoch=e).numpy()
            for e in range(4)]
    mirrored = x[:, :, ::-1]
    for e, out in enumerate(outs):
        mask = alternating_flip_mask(idx, e, 3)
        assert np.array_equal(out[mask], mirrored[mask]) and np.array_equal(out[~mask], x[~mask])
    flipped = np.stack([alternating_flip_mask(idx, e, 3) for e in range(4)])
    assert (flipped[0] != flipped[1]).all() and (flipped[0] == flipped[2]).all()
    # with crop on, the shifts are the numpy path's and the flip the recipe's
    crop = AugmentConfig(hflip={"mode": "alternating"})
    p = augment_params(idx, crop, seed=3, epoch=1, size=(9, 7))
    ref = augment_params(idx, AugmentConfig(), seed=3, epoch=1, size=(9, 7))
    assert np.array_equal(p[:, :2], ref[:, :2])
    assert np.array_equal(p[:, 2].astype(bool), alternating_flip_mask(idx, 1, 3))


@pytest.mark.parametrize("key", ["random_resized_crop", "rotation", "affine", "color_jitter"])
def test_unsupported_techniques_raise_naming_the_key(key):
    cfg = AugmentConfig(**{key: {"enabled": True}})
    assert not device_supports(cfg) and device_supports(None) and device_supports(AugmentConfig())
    with pytest.raises(ValueError, match=rf"augment\.{key}: not supported by the device"):
        check_device_augment(cfg)
    with pytest.raises(ValueError, match=rf"augment\.{key}"):
        augment_batch_torch(torch.from_numpy(images()), np.arange(64), cfg, seed=0, epoch=0)
    with pytest.raises(ValueError, match=rf"augment\.{key}"):
        shard().to_device("cpu").batches(8, augment=cfg)  # raised at the call, not lazily
    s = shard()
    assert shard_for_device(s, "cpu", cfg) is s
    with pytest.raises(ValueError, match=rf"augment\.{key}"):
        shard_for_device(s, "cpu", cfg, prefer_device=True)


def test_augment_params_columns_and_ranges():
    cfg = AugmentConfig(random_crop={"padding": 3}, cutout={"enabled": True, "size": 4, "p": 0.5})
    p = augment_params(np.arange(500), cfg, seed=0, epoch=0, size=(9, 7))
    assert p.shape == (500, len(PARAM_COLUMNS)) and p.dtype == np.int64
    assert set(np.unique(p[:, 0])) == set(range(-3, 4)) == set(np.unique(p[:, 1]))
    assert set(np.unique(p[:, 2])) == {0, 1} and set(np.unique(p[:, 3])) == {0, 1}
    assert p[:, 4].min() >= -2 and p[:, 4].max() <= 8 - 2 and p[:, 5].max() <= 6 - 2


@pytest.mark.parametrize("augment", [None, AugmentConfig(),
                                     AugmentConfig(cutout={"enabled": True, "size": 3})])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_device_shard_matches_the_host_shard_batch_for_batch(augment, shuffle, device):
    host = shard()
    dev = shard_for_device(host, device, augment, prefer_device=True)
    assert isinstance(dev, DeviceShard) and len(dev) == 100 and dev.nbytes == host.nbytes
    kw = dict(augment=augment, seed=5, epoch=3, rank=1, shuffle=shuffle)
    for drop_last in (False, True):
        a = list(host.batches(32, prefetch=0, drop_last=drop_last, **kw))
        b = list(dev.batches(32, prefetch=2, drop_last=drop_last, **kw))
        assert [len(x["label"]) for x in b] == ([32, 32, 32] if drop_last else [32, 32, 32, 4])
        for x, y in zip(a, b):
            assert y["image"].dtype == torch.uint8 and y["image"].shape[1:] == (8, 8, 3)
            assert y["label"].dtype == torch.int64 and y["image"].device.type == device
            assert torch.equal(x["image"], y["image"].cpu())
            assert torch.equal(x["label"], y["label"].cpu())


def test_device_shard_epoch_covers_every_row_once_and_reshuffles():
    n = 103
    host = InMemoryShard(images(n, 4, 4, 1), np.arange(n), np.arange(n) + 7)
    dev = host.to_device(torch.device("cpu"))
    epochs = []
    for epoch in range(3):
        labels = torch.cat([b["label"] for b in dev.batches(10, seed=1, epoch=epoch)])
        assert sorted(labels.tolist()) == list(range(n))
        epochs.append(labels)
    assert not torch.equal(epochs[0], epochs[1])
    assert torch.equal(epochs[0], torch.cat(
        [b["label"] for b in dev.batches(10, seed=1, epoch=0)]))
    with pytest.raises(ValueError, match="batch_size"):
        dev.batches(0)


def test_shard_for_device_keeps_numpy_on_cpu_and_host_to_device_accepts_read_only():
    s = shard()
    assert shard_for_device(s, "cpu", AugmentConfig()) is s
    assert shard_for_device(s, "cpu", None, prefer_device=False) is s
    a = np.arange(6, dtype=np.int64)
    a.flags.writeable = False
    t = host_to_device(a, "cpu")
    assert t.dtype == torch.int64 and t.tolist() == list(range(6))


def test_benchmark_augment_smoke(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_augment.py"
    spec = importlib.util.spec_from_file_location("benchmark_augment", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    out = tmp_path / "figures.json"
    result = job.main(["--smoke", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    keys = [f"{lv}_{p}_images_per_s" for lv in ("batch", "epoch") for p in ("numpy", "torch")]
    assert all(result[k] > 0 for k in keys)
