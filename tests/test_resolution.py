"""Data at resolution (issue 25, item 3): images stored larger than the training crop
(``data.store_size``), a random-resized crop to ``data.image_size`` per batch on the host and
the device, the validation resize + centre crop (``eval.resize_size``, ``eval.image_size``),
and the memory cache sized by stored images. Numeric core and config, no Ray (the Ray paths
are in ``tests/test_resolution_ray.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from cnn_ray.config import AugmentConfig, ConfigError, DataConfig, RandomResizedCrop, TrainConfig
from cnn_ray.data.augment import augment_batch
from cnn_ray.data.device_augment import (PARAM_COLUMNS, RESIZE_COLUMNS, augment_batch_torch,
                                         augment_params, check_device_augment)
from cnn_ray.data.draws import DRAW_COLUMNS, N_DRAWS, row_uniforms, uniform
from cnn_ray.data.memory import InMemoryShard, check_cache_fits, shard_for_device
from cnn_ray.data.preprocess import EvalTransform, resize_center_crop
from cnn_ray.data.resized_crop import (ATTEMPTS, resized_crop, resized_crop_boxes,
                                       resized_crop_torch)
from cnn_ray.recipe import alternating_flip_mask

RRC = RandomResizedCrop(enabled=True, scale=(0.08, 1.0))  # torchvision's defaults
ONLY_RRC = AugmentConfig(random_resized_crop=RRC.model_dump(), random_crop={"enabled": False},
                         hflip={"enabled": False})


def smooth(n=16, side=40, c=3, seed=0) -> np.ndarray:
    """``(n, side, side, c) uint8`` natural-ish images: random 8x8 noise upsampled (bilinear)."""
    low = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, c, 8, 8))).float()
    up = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear")
    return up.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _cfg(tmp_path, data=None, eval_=None) -> TrainConfig:
    raw = {"data": {"train": str(tmp_path), **(data or {})}}
    if eval_:
        raw["eval"] = eval_
    return TrainConfig.from_dict(raw)


# ------------------------------------------------------------------------------ config
def test_store_size_below_image_size_is_one_error_naming_both_keys(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        _cfg(tmp_path, {"image_size": 32, "store_size": 24})
    msg = str(info.value)
    assert "data.store_size=24" in msg and "data.image_size=32" in msg
    assert "expected data.store_size >= data.image_size" in msg and "{" not in msg
    with pytest.raises(ValueError, match="data.store_size=24"):  # pydantic's, in prepare's own
        DataConfig(train=str(tmp_path), image_size=32, store_size=24)
    from cnn_ray.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  train: {tmp_path}\n  image_size: 32\n  store_size: 24\n")
    assert main(["prepare", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "data.store_size=24 is smaller than data.image_size=32" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # one message


def test_eval_sizes_defaults_follow_torchvision_and_keep_the_old_behaviour(tmp_path):
    plain = _cfg(tmp_path, {"image_size": 32})
    assert plain.eval_sizes() == (32, 32) and plain.data.stored_size == 32
    assert plain.data.train_crop_size is None  # no store_size: batches keep the stored side
    assert EvalTransform.of(plain) == EvalTransform(32, 32, 32)
    stored = _cfg(tmp_path, {"image_size": 224, "store_size": 256})
    assert stored.eval_sizes() == (256, 224) and stored.data.train_crop_size == 224  # 224/0.875
    fixres = _cfg(tmp_path, {"image_size": 176, "store_size": 256},
                  {"image_size": 224, "resize_size": 232})  # torchvision's new recipe
    assert EvalTransform.of(fixres) == EvalTransform(256, 232, 224)
    assert _cfg(tmp_path, {"image_size": 32, "store_size": 40}).eval_sizes() == (37, 32)
    assert _cfg(tmp_path, {"image_size": 32}, {"image_size": 40}).eval_sizes() == (40, 40)
    with pytest.raises(ConfigError) as info:
        _cfg(tmp_path, {"image_size": 32}, {"image_size": 48, "resize_size": 40})
    assert "eval.image_size=48 is larger than eval.resize_size=40" in str(info.value)


def test_fingerprint_follows_the_stored_side(tmp_path):
    from cnn_ray.data.prepare import fingerprint
    from cnn_ray.data.sources import discover
    from cnn_ray.runs import default_prepared_dir
    from cnn_ray.testing import write_photo_tree

    root = write_photo_tree(tmp_path / "photos", per_class=2)
    src = discover(str(root), "auto")

    def fp(**kw):
        return fingerprint(DataConfig(train=str(root), **kw), src, None, 0)

    assert fp(image_size=32) == fp(image_size=32, store_size=32)  # the same stored images
    assert fp(image_size=32, store_size=40) != fp(image_size=32)  # store_size re-prepares
    assert fp(image_size=32, store_size=40) != fp(image_size=32, store_size=48)
    assert fp(image_size=32, store_size=40) == fp(image_size=24, store_size=40)  # reused
    dirs = {default_prepared_dir(_cfg(tmp_path, {"train": str(root), **d}))
            for d in ({"image_size": 32, "store_size": 40}, {"image_size": 24, "store_size": 40})}
    assert len(dirs) == 1 and next(iter(dirs)).split("/")[-1].startswith("photos-40px-")


# ------------------------------------------------------------------------------ boxes
def _torchvision_box(u_row: np.ndarray, cfg: RandomResizedCrop, h: int, w: int):
    """torchvision RandomResizedCrop.get_params, line for line, on our draws."""
    area = h * w
    for k in range(ATTEMPTS):
        sc = "rrc_scale" if k == 0 else f"rrc_scale_{k}"
        ra = "rrc_ratio" if k == 0 else f"rrc_ratio_{k}"
        target = area * float(uniform(u_row[DRAW_COLUMNS[sc]], *cfg.scale))
        ratio = math.exp(float(uniform(u_row[DRAW_COLUMNS[ra]], *map(math.log, cfg.ratio))))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            i = math.floor(float(u_row[DRAW_COLUMNS["rrc_y"]]) * (h - ch + 1))
            j = math.floor(float(u_row[DRAW_COLUMNS["rrc_x"]]) * (w - cw + 1))
            return i, j, ch, cw
    in_ratio = w / h
    if in_ratio < min(cfg.ratio):
        cw, ch = w, int(round(w / min(cfg.ratio)))
    elif in_ratio > max(cfg.ratio):
        ch, cw = h, int(round(h * max(cfg.ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@pytest.mark.parametrize("rrc, h, w", [(RRC, 40, 40), (RRC, 48, 64),
                                       (RandomResizedCrop(enabled=True, scale=(0.9, 1.0),
                                                          ratio=(2.0, 3.0)), 40, 40)])
def test_boxes_are_torchvisions_algorithm_inside_the_image_and_vary(rrc, h, w):
    idx = np.arange(500, dtype=np.int64)
    u = row_uniforms(3, 1, idx, N_DRAWS)
    boxes = resized_crop_boxes(u, rrc, h, w)
    assert boxes.dtype == np.int64 and boxes.shape == (500, 4)
    assert [tuple(b) for b in boxes] == [_torchvision_box(r, rrc, h, w) for r in u]
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (bh >= 1).all() and (bw >= 1).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    if rrc.ratio == (2.0, 3.0):  # no draw fits a square: torchvision's centred fallback
        assert (boxes == [10, 0, 20, 40]).all()
        return
    assert len({tuple(b) for b in boxes}) > 400  # crops vary per image
    area = bh * bw / (h * w)
    assert area.min() < 0.12 and area.max() > 0.9  # the whole scale range is drawn
    again = resized_crop_boxes(row_uniforms(3, 2, idx, N_DRAWS), rrc, h, w)
    assert (again != boxes).any(axis=1).mean() > 0.95  # and per epoch
    assert (resized_crop_boxes(u, None, h, w) == [0, 0, h, w]).all()  # off: the whole image


def test_new_draw_columns_leave_the_old_ones_alone():
    rrc_extra = [k for k in DRAW_COLUMNS if k.startswith(("rrc_scale_", "rrc_ratio_"))]
    assert len(rrc_extra) == 2 * (ATTEMPTS - 1)
    assert all(DRAW_COLUMNS[k] >= 17 for k in rrc_extra)   # appended after the old 17
    assert sorted(DRAW_COLUMNS.values()) == list(range(N_DRAWS))
    idx = np.arange(50)
    assert np.array_equal(row_uniforms(0, 0, idx, 17), row_uniforms(0, 0, idx, N_DRAWS)[:, :17])


# ------------------------------------------------------------------------------ host resize
@pytest.mark.parametrize("c", [1, 3, 4, 5])
def test_resized_crop_equals_torchvision_resized_crop(c):
    x = smooth(n=12, side=40, c=c, seed=c)
    boxes = resized_crop_boxes(row_uniforms(0, 0, np.arange(12), N_DRAWS), RRC, 40, 40)
    got = resized_crop(x, boxes, 32)
    assert got.shape == (12, 32, 32, c) and got.dtype == np.uint8 and got.flags.c_contiguous
    for k, (top, left, bh, bw) in enumerate(boxes.tolist()):
        img = torch.from_numpy(x[k]).permute(2, 0, 1)
        want = TF.resized_crop(img, top, left, bh, bw, [32, 32], antialias=True)
        diff = np.abs(got[k].astype(int) - want.permute(1, 2, 0).numpy())
        assert diff.max() <= 1  # the same kernel up to rounding


def test_resized_crop_takes_read_only_batches_without_a_warning():
    import subprocess
    import sys

    x = smooth(n=4)
    x.flags.writeable = False  # a Ray Data batch is a view of an Arrow buffer
    out = resized_crop(x, np.array([[0, 0, 40, 40]] * 4), 32)
    assert out.shape == (4, 32, 32, 3) and out.flags.writeable
    with pytest.raises(ValueError, match="inside"):
        resized_crop(x, np.array([[0, 10, 40, 40]] * 4), 32)
    # in a fresh process with every warning an error (pytest records them all here)
    code = ("import numpy as np; from cnn_ray.data.resized_crop import resized_crop; "
            "x = np.zeros((2, 40, 40, 3), np.uint8); x.flags.writeable = False; "
            "print(resized_crop(x, np.array([[0, 0, 40, 40]] * 2), 32).shape)")
    run = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "(2, 32, 32, 3)" in run.stdout, run.stderr[-2000:]


def test_augment_batch_crops_stored_images_to_the_training_size():
    x = smooth(n=32, side=40)
    same = np.repeat(x[:1], 32, axis=0)  # one image 32 times: the crops must differ
    idx = np.arange(100, 132)
    out = augment_batch(same, idx, ONLY_RRC, seed=5, epoch=0, out_size=32)
    assert out.shape == (32, 32, 32, 3) and out.dtype == np.uint8
    assert len({o.tobytes() for o in out}) == 32
    assert np.array_equal(out, augment_batch(same, idx, ONLY_RRC, seed=5, epoch=0, out_size=32))
    assert not np.array_equal(out, augment_batch(same, idx, ONLY_RRC, seed=5, epoch=1,
                                                 out_size=32))
    # the crop is the first step: flip etc. then run at the training size
    full = augment_batch(x, idx, AugmentConfig(), seed=5, epoch=0, out_size=32)
    assert full.shape == (32, 32, 32, 3)
    # a flip without a shift is done within the resize: the same as mirroring afterwards
    flipped = AugmentConfig(random_resized_crop=RRC.model_dump(), random_crop={"enabled": False},
                            hflip={"p": 1.0})
    assert np.array_equal(augment_batch(x, idx, flipped, seed=5, epoch=0, out_size=32),
                          augment_batch(x, idx, ONLY_RRC, seed=5, epoch=0, out_size=32)[:, :, ::-1])
    alternating = flipped.model_copy(update={"hflip": flipped.hflip.model_copy(
        update={"mode": "alternating"})})
    for epoch in (0, 1):
        mask = alternating_flip_mask(idx, epoch, 5)
        got = augment_batch(x, idx, alternating, seed=5, epoch=epoch, out_size=32)
        plain = augment_batch(x, idx, ONLY_RRC, seed=5, epoch=epoch, out_size=32)
        assert np.array_equal(got[mask], plain[mask][:, :, ::-1])
        assert np.array_equal(got[~mask], plain[~mask])
    # random_resized_crop off: the whole stored square resized, as the eval resize does it
    plain = AugmentConfig(random_crop={"enabled": False}, hflip={"enabled": False})
    assert np.abs(augment_batch(x, idx, plain, seed=5, epoch=0, out_size=32).astype(int)
                  - resize_center_crop(x, 32)).max() <= 1
    # out_size equal to the stored side: the old path, bit for bit
    assert np.array_equal(augment_batch(x, idx, ONLY_RRC, seed=5, epoch=0, out_size=40),
                          augment_batch(x, idx, ONLY_RRC, seed=5, epoch=0))


def test_crops_stay_inside_the_stored_image():
    """A stored image whose every pixel is 255 inside a black frame: a crop of its inside
    never shows black, so no crop reads outside the image (there is no padding)."""
    x = np.zeros((64, 40, 40, 3), np.uint8)
    x[:, 1:-1, 1:-1] = 255
    u = row_uniforms(0, 0, np.arange(64), N_DRAWS)
    boxes = resized_crop_boxes(u, RRC, 40, 40)
    inner = (boxes[:, 0] >= 2) & (boxes[:, 1] >= 2) & (boxes[:, 0] + boxes[:, 2] <= 38) \
        & (boxes[:, 1] + boxes[:, 3] <= 38)
    out = augment_batch(x, np.arange(64), ONLY_RRC, seed=0, epoch=0, out_size=32)
    assert inner.sum() > 10 and (out[inner] == 255).all()


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("shape, resize, crop", [((40, 40), 37, 32), ((48, 64), 37, 32),
                                                 ((64, 48), 48, 40), ((40, 40), 56, 48)])
def test_eval_transform_equals_torchvision_resize_and_center_crop(shape, resize, crop):
    x = smooth(n=6, side=64)[:, :shape[0], :shape[1]].copy()
    got = resize_center_crop(x, crop, resize=resize)
    assert got.shape == (6, crop, crop, 3)
    tv = T.Compose([T.Resize(resize, antialias=True), T.CenterCrop(crop)])
    for k in range(6):
        want = tv(torch.from_numpy(x[k]).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        assert np.abs(got[k].astype(int) - want).max() <= 1
    t = EvalTransform(stored_size=shape[0], resize_size=resize, image_size=crop)
    assert np.array_equal(t.apply(x), got) and EvalTransform.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="size <= resize"):
        resize_center_crop(x, crop, resize=crop - 1)


# ------------------------------------------------------------------------------ device path
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_device_resized_crop_is_close_to_the_host_path(layout):
    x = smooth(n=24, side=40)
    boxes = resized_crop_boxes(row_uniforms(1, 0, np.arange(24), N_DRAWS), RRC, 40, 40)
    host = resized_crop(x, boxes, 32)
    t = torch.from_numpy(x) if layout == "nhwc" else torch.from_numpy(x).permute(0, 3, 1, 2)
    sel = torch.arange(23, -1, -1)  # rows in another order, as a shuffled epoch takes them
    dev = resized_crop_torch(t.contiguous(), torch.from_numpy(boxes[::-1].copy()), 32, sel=sel,
                             layout=layout)
    dev = dev if layout == "nhwc" else dev.permute(0, 2, 3, 1)
    assert dev.dtype == torch.uint8 and tuple(dev.shape) == (24, 32, 32, 3)
    diff = np.abs(dev.numpy()[::-1].astype(int) - host)
    assert diff.mean() < 1.0 and diff.max() <= 24  # a float filter, not the same kernel
    up = boxes[:, 2] <= 32  # upsampled boxes: plain bilinear on both paths
    assert np.abs(dev.numpy()[::-1][up].astype(int) - host[up]).mean() < 0.6


def test_device_augment_with_out_size_supports_rrc_and_matches_the_host_draws():
    x = smooth(n=16, side=40)
    idx = np.arange(16) * 7
    cfg = AugmentConfig(random_resized_crop=RRC.model_dump(), cutout={"enabled": True, "size": 6})
    params = augment_params(idx, cfg, seed=2, epoch=3, size=(40, 40), out_size=32)
    assert params.shape == (16, len(PARAM_COLUMNS) + len(RESIZE_COLUMNS))
    u = row_uniforms(2, 3, idx, N_DRAWS)
    assert np.array_equal(params[:, len(PARAM_COLUMNS):], resized_crop_boxes(u, RRC, 40, 40))
    got = augment_batch_torch(torch.from_numpy(x), idx, cfg, seed=2, epoch=3, out_size=32)
    want = augment_batch(x, idx, cfg, seed=2, epoch=3, out_size=32, padding_mode="reflection")
    assert tuple(got.shape) == (16, 32, 32, 3)
    assert (got.numpy() == 0).all(axis=-1).sum() == (want == 0).all(axis=-1).sum()  # cutout
    assert np.abs(got.numpy().astype(int) - want).mean() < 1.5
    check_device_augment(cfg, resize=True)
    with pytest.raises(ValueError, match="augment.random_resized_crop"):
        check_device_augment(cfg)  # at the stored size: the composed affine, host only
    with pytest.raises(ValueError, match="augment.rotation"):
        check_device_augment(AugmentConfig(rotation={"enabled": True}), resize=True)


def test_memory_shards_yield_training_size_batches_on_host_and_device():
    x = smooth(n=20, side=40)
    host = InMemoryShard(x, np.arange(20) % 2, np.arange(20))
    cfg = AugmentConfig(random_resized_crop=RRC.model_dump())
    a = [b["image"] for b in host.batches(8, augment=cfg, seed=1, epoch=0, out_size=32)]
    assert [tuple(t.shape) for t in a] == [(8, 32, 32, 3), (8, 32, 32, 3), (4, 32, 32, 3)]
    dev = shard_for_device(host, "cpu", cfg, prefer_device=True, out_size=32)
    assert type(dev).__name__ == "DeviceShard"
    b = [t["image"] for t in dev.batches(8, augment=cfg, seed=1, epoch=0, out_size=32)]
    assert [tuple(t.shape) for t in b] == [tuple(t.shape) for t in a]
    diff = np.abs(torch.cat(a).numpy().astype(int) - torch.cat(b).numpy())
    assert diff.mean() < 1.5  # same rows, boxes and flips; the device filter differs a little
    val = [t["image"] for t in host.batches(8, shuffle=False)]  # evaluation: as held
    assert tuple(val[0].shape) == (8, 40, 40, 3)
    from cnn_ray.data.device_augment import device_supports  # what a CUDA worker decides by

    assert device_supports(cfg, resize=True) and not device_supports(cfg)


# ------------------------------------------------------------------------------ memory cache
def test_cache_too_small_names_the_sizes_the_limit_and_the_ways_out(tmp_path):
    cfg = _cfg(tmp_path, {"image_size": 224, "store_size": 256, "cache": "memory",
                          "cache_max_mb": 4096})
    stored = (256, 256, 3)
    assert check_cache_fits(cfg, 10_000, 1_000, stored) == 10_000 * 256**2 * 3 + 1_000 * 224**2 * 3
    with pytest.raises(ConfigError) as info:
        check_cache_fits(cfg, 60_000, 5_000, stored)
    msg = str(info.value)
    assert "12549 MB, more than data.cache_max_mb=4096" in msg
    assert "60000 training images stored at 256x256x3 (data.store_size=256) are 11796 MB" in msg
    assert "5000 validation images at 224x224x3 (eval.image_size) are 753 MB" in msg
    assert "raise data.cache_max_mb to at least 12550" in msg.lower()
    assert "data.cache=none" in msg and "data.store_size)" in msg
    plain = _cfg(tmp_path, {"cache": "memory", "cache_max_mb": 1})
    with pytest.raises(ConfigError, match=r"stored at 32x32x3 \(data.image_size=32\)"):
        check_cache_fits(plain, 1000, 100, (32, 32, 3))
