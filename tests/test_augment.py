"""Batch augmentation, eval resize and normalisation (numeric core, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnn_ray.config import AugmentConfig
from cnn_ray.data.augment import (
    DRAW_COLUMNS,
    N_DRAWS,
    augment_batch,
    normalize_batch,
    resize_center_crop,
    row_uniforms,
)
from cnn_ray.data.geometric import affine_grid
from cnn_ray.data.shards import ChannelStats
from cnn_ray.recipe import alternating_flip_mask

TECHNIQUES = ("random_crop", "hflip", "random_resized_crop", "rotation", "affine", "color_jitter", "cutout")


def only(**techniques) -> AugmentConfig:
    """A config with every technique off except those given (``name={strength kwargs}``)."""
    return AugmentConfig(**{
        name: {"enabled": name in techniques, **techniques.get(name, {})} for name in TECHNIQUES
    })


ALL_ON = only(**{name: {} for name in TECHNIQUES})


def images(rng, n=64, h=32, w=32, c=3) -> np.ndarray:
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)


def run(x, cfg, *, idx=None, seed=0, epoch=0, **kw):
    idx = np.arange(len(x), dtype=np.int64) if idx is None else idx
    return augment_batch(x, idx, cfg, seed=seed, epoch=epoch, **kw)


# ------------------------------------------------------------------------- row_uniforms
def test_row_uniforms_range_and_roughly_uniform():
    u = row_uniforms(7, 3, np.arange(10_000, dtype=np.int64), 10)  # 100k draws
    assert u.shape == (10_000, 10) and u.dtype == np.float32
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    assert abs(u.std() - (1 / 12) ** 0.5) < 0.01
    hist = np.bincount((u * 10).astype(int).ravel(), minlength=10) / u.size
    assert np.all(np.abs(hist - 0.1) < 0.01)
    # columns are not correlated with each other
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05


def test_row_uniforms_is_a_pure_function_of_seed_epoch_idx_column():
    idx = np.array([0, 5, 123456789012, -3], dtype=np.int64)
    a = row_uniforms(1, 2, idx, 8)
    np.testing.assert_array_equal(a, row_uniforms(1, 2, idx, 8))
    np.testing.assert_array_equal(a[:, :3], row_uniforms(1, 2, idx, 3))  # column k ignores n
    np.testing.assert_array_equal(a[[2, 0]], row_uniforms(1, 2, idx[[2, 0]], 8))  # per row
    assert not np.any(a == row_uniforms(1, 3, idx, 8))  # another epoch
    assert not np.any(a == row_uniforms(2, 2, idx, 8))  # another seed
    assert np.unique(a).size == a.size  # another row or column


def test_row_uniforms_rejects_bad_input():
    with pytest.raises(ValueError, match=r"idx must be a 1-D integer array, got \(2, 2\) int64"):
        row_uniforms(0, 0, np.zeros((2, 2), dtype=np.int64), 3)
    with pytest.raises(ValueError, match=r"idx must be a 1-D integer array, got \(1,\) float64"):
        row_uniforms(0, 0, np.array([0.5]), 3)
    assert row_uniforms(0, 0, np.array([], dtype=np.int64), 3).shape == (0, 3)


# --------------------------------------------------------------------------- augment_batch
@pytest.mark.parametrize("shape", [(16, 32, 32, 3), (8, 20, 28, 1), (8, 24, 17, 5), (1, 8, 8, 3)])
@pytest.mark.parametrize("cfg", [AugmentConfig(), ALL_ON], ids=["default", "all_on"])
def test_shapes_and_dtype_preserved(rng, shape, cfg):
    x = images(rng, *shape)
    out = run(x, cfg)
    assert out.shape == x.shape and out.dtype == np.uint8 and out.flags.c_contiguous


def test_empty_batch(rng):
    x = images(rng, 0)
    assert run(x, ALL_ON).shape == x.shape


def test_disabled_config_returns_input_unchanged(rng):
    x = images(rng)
    before = x.copy()
    assert run(x, only()) is x
    np.testing.assert_array_equal(x, before)


def test_input_is_never_modified_and_may_be_read_only(rng):
    x = images(rng)
    before = x.copy()
    x.setflags(write=False)  # Arrow-backed batches are read-only
    for cfg in (AugmentConfig(), ALL_ON, only(cutout={})):
        run(x, cfg)
    np.testing.assert_array_equal(x, before)


def test_rejects_bad_input(rng):
    x = images(rng, 4)
    with pytest.raises(ValueError, match=r"images must be \(N, H, W, C\) uint8, got .* float32"):
        run(x.astype(np.float32), AugmentConfig())
    with pytest.raises(ValueError, match=r"images must be \(N, H, W, C\) uint8, got \(32, 32, 3\)"):
        run(x[0], AugmentConfig(), idx=np.arange(1))
    with pytest.raises(ValueError, match=r"idx must have shape \(4,\), got \(3,\)"):
        run(x, AugmentConfig(), idx=np.arange(3))
    with pytest.raises(ValueError, match="padding_mode must be zeros, reflection or border, got 'wrap'"):
        run(x, ALL_ON, padding_mode="wrap")


@pytest.mark.parametrize("h,w,c,padding", [(32, 32, 3, 4), (9, 12, 1, 3), (5, 6, 5, 8)])
def test_random_crop_is_a_window_of_the_reflect_padded_image(rng, h, w, c, padding):
    x = images(rng, 48, h, w, c)
    out = run(x, only(random_crop={"padding": padding}))
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
    # windows: (N, 2p+1, 2p+1, C, H, W); match every offset against each output image
    match = np.all(windows == out.transpose(0, 3, 1, 2)[:, None, None], axis=(3, 4, 5))
    assert match.any(axis=(1, 2)).all()
    assert (~match[:, padding, padding]).sum() > len(x) // 2  # content actually moved


def test_random_crop_offsets_cover_the_whole_range(rng):
    x = np.broadcast_to(np.arange(32 * 32, dtype=np.int64).reshape(1, 32, 32, 1) % 251, (2000, 32, 32, 1))
    out = run(np.ascontiguousarray(x, dtype=np.uint8), only(random_crop={"padding": 2}))
    # the centre pixel tells the offset; all 25 offsets appear, each about 1/25 of the time
    _, counts = np.unique(out[:, 16, 16, 0], return_counts=True)
    assert counts.size == 25 and counts.min() > 40


@pytest.mark.parametrize("c", [1, 3, 5])
def test_hflip_p1_equals_np_flip(rng, c):
    x = images(rng, 16, 12, 20, c)
    np.testing.assert_array_equal(run(x, only(hflip={"p": 1.0})), np.flip(x, axis=2))


def test_hflip_flips_about_half(rng):
    x = images(rng, 400, 8, 8, 3)
    out = run(x, only(hflip={"p": 0.5}))
    flipped = np.all(out == np.flip(x, axis=2), axis=(1, 2, 3))
    kept = np.all(out == x, axis=(1, 2, 3))
    assert np.all(flipped | kept)
    assert 160 < flipped.sum() < 240


def test_hflip_random_mode_flips_where_the_flip_draw_is_below_p(rng):
    """The random flip is the ``flip`` column of the counter-based draws, as before."""
    x = images(rng, 200, 6, 6, 3)
    idx = rng.permutation(10**6)[:200].astype(np.int64)
    for epoch in range(3):
        out = run(x, only(hflip={"p": 0.3, "mode": "random"}), idx=idx, seed=9, epoch=epoch)
        flipped = np.all(out == np.flip(x, axis=2), axis=(1, 2, 3))
        expected = row_uniforms(9, epoch, idx, N_DRAWS)[:, DRAW_COLUMNS["flip"]] < 0.3
        np.testing.assert_array_equal(flipped, expected)


def test_hflip_alternating_flips_each_image_on_alternate_epochs(rng):
    """``hflip.mode: alternating``: a coin per image on epoch 0, then the opposite state every
    epoch (the mask of cnn_ray.recipe.alternating_flip_mask); ``p`` is not used."""
    x = images(rng, 200, 8, 8, 3)
    idx = rng.permutation(10**6)[:200].astype(np.int64)
    cfg = only(hflip={"mode": "alternating"})
    states = []
    for epoch in range(4):
        out = run(x, cfg, idx=idx, seed=5, epoch=epoch)
        flipped = np.all(out == np.flip(x, axis=2), axis=(1, 2, 3))
        kept = np.all(out == x, axis=(1, 2, 3))
        assert np.all(flipped ^ kept)
        np.testing.assert_array_equal(flipped, alternating_flip_mask(idx, epoch, seed=5))
        states.append(flipped)
    for before, after in zip(states, states[1:]):
        assert np.all(before != after)  # every image changes orientation every epoch
    assert 60 < states[0].sum() < 140  # epoch 0 is a fair coin per image
    np.testing.assert_array_equal(states[0], states[2])
    p0 = only(hflip={"mode": "alternating", "p": 0.0})
    np.testing.assert_array_equal(run(x, p0, idx=idx, seed=5, epoch=1),
                                  run(x, cfg, idx=idx, seed=5, epoch=1))
    # with the crop on too, the flips stay those of the mask and the crop draws are unchanged
    both = only(random_crop={"padding": 2}, hflip={"mode": "alternating"})
    plain = only(random_crop={"padding": 2}, hflip={"p": 0.0})
    mask = alternating_flip_mask(idx, 3, seed=5)
    out = run(x, both, idx=idx, seed=5, epoch=3)
    np.testing.assert_array_equal(np.where(mask[:, None, None, None], np.flip(out, axis=2), out),
                                  run(x, plain, idx=idx, seed=5, epoch=3))


@pytest.mark.parametrize("h,w,c,padding", [(16, 16, 3, 3), (5, 6, 5, 8), (7, 4, 1, 2)])
def test_crop_and_flip_compose(rng, h, w, c, padding):
    """Crop then mirror: each output is a mirrored or plain window of the padded image."""
    x = images(rng, 64, h, w, c)
    out = run(x, only(random_crop={"padding": padding}, hflip={"p": 0.5}))
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
    plain = np.all(windows == out.transpose(0, 3, 1, 2)[:, None, None], axis=(3, 4, 5))
    mirrored = np.all(windows == np.flip(out, 2).transpose(0, 3, 1, 2)[:, None, None], axis=(3, 4, 5))
    assert (plain.any(axis=(1, 2)) | mirrored.any(axis=(1, 2))).all()
    assert mirrored.any(axis=(1, 2)).sum() > 10


@pytest.mark.parametrize("cfg", [AugmentConfig(), ALL_ON], ids=["default", "all_on"])
def test_same_seed_epoch_idx_is_repeatable_other_epoch_or_seed_differs(rng, cfg):
    x = images(rng)
    out = run(x, cfg, seed=3, epoch=1)
    np.testing.assert_array_equal(out, run(x, cfg, seed=3, epoch=1))
    assert not np.array_equal(out, run(x, cfg, seed=3, epoch=2))
    assert not np.array_equal(out, run(x, cfg, seed=4, epoch=1))


def test_same_image_under_another_idx_gets_other_draws(rng):
    """The same picture in two batches / on two workers (two row indices) is augmented differently."""
    one = images(rng, 1)
    x = np.repeat(one, 32, axis=0)
    for cfg in (AugmentConfig(), ALL_ON):
        out = run(x, cfg, idx=np.arange(1000, 1032, dtype=np.int64))
        distinct = {o.tobytes() for o in out}
        assert len(distinct) > 16


@pytest.mark.parametrize("cfg", [AugmentConfig(), ALL_ON, only(hflip={})], ids=["default", "all_on", "flip"])
def test_output_of_a_row_does_not_depend_on_its_batch(rng, cfg):
    x = images(rng, 48)
    idx = rng.permutation(10_000)[:48].astype(np.int64)
    out = run(x, cfg, idx=idx, epoch=5)
    perm = rng.permutation(48)
    np.testing.assert_array_equal(run(x[perm], cfg, idx=idx[perm], epoch=5), out[perm])
    # and a row alone, or in a smaller batch, comes out the same too
    np.testing.assert_array_equal(run(x[7:19], cfg, idx=idx[7:19], epoch=5), out[7:19])


STRENGTHS = {  # technique: (strength > 0, strength 0)
    "random_crop": ({"padding": 4}, {"padding": 0}),
    "hflip": ({"p": 0.5}, {"p": 0.0}),
    "random_resized_crop": ({"scale": (0.35, 1.0)}, {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}),
    "rotation": ({"degrees": 15.0}, {"degrees": 0.0}),
    "affine": ({"translate": 0.1, "shear": 10.0}, {"translate": 0.0, "shear": 0.0}),
    "color_jitter": ({}, {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}),
    "cutout": ({"size": 8, "p": 1.0}, {"size": 8, "p": 0.0}),
}


@pytest.mark.parametrize("name", TECHNIQUES)
def test_each_technique_changes_images_and_strength_zero_is_identity(rng, name):
    x = images(rng, 32)
    strong, zero = STRENGTHS[name]
    out = run(x, only(**{name: strong}))
    changed = np.any(out != x, axis=(1, 2, 3))
    assert changed.sum() >= (8 if name == "hflip" else 24), name
    np.testing.assert_array_equal(run(x, only(**{name: zero})), x)


@pytest.mark.parametrize("name", ["affine", "rotation", "color_jitter"])
def test_single_strengths_each_change_images(rng, name):
    x = images(rng, 16)
    parts = {"affine": [{"translate": 0.1, "shear": 0.0}, {"translate": 0.0, "shear": 10.0}],
             "rotation": [{"degrees": 2.0}],
             "color_jitter": [{"brightness": s, "contrast": 0.0, "saturation": 0.0} for s in (0.2,)]
             + [{"brightness": 0.0, "contrast": 0.2, "saturation": 0.0},
                {"brightness": 0.0, "contrast": 0.0, "saturation": 0.2}]}[name]
    for kwargs in parts:
        assert np.any(run(x, only(**{name: kwargs})) != x, axis=(1, 2, 3)).sum() >= 12, kwargs


def test_rotation_keeps_the_centre_pixel(rng):
    x = images(rng, 32, 33, 33, 3)  # odd size: the centre of rotation is a pixel centre
    out = run(x, only(rotation={"degrees": 10.0}))
    np.testing.assert_array_equal(out[:, 16, 16], x[:, 16, 16])
    assert np.any(out != x, axis=(1, 2, 3)).all()


def test_rotation_of_a_constant_image_only_fills_corners():
    x = np.full((8, 32, 32, 3), 200, dtype=np.uint8)
    out = run(x, only(rotation={"degrees": 15.0}))
    assert np.all(out[:, 8:24, 8:24] == 200)  # interior untouched (bilinear of constants)
    out_r = run(x, only(rotation={"degrees": 15.0}), padding_mode="reflection")
    assert np.all(out_r == 200)  # reflection padding: no black corners


def test_random_resized_crop_zooms_in():
    # a horizontal ramp: zooming into a box stretches it, so neighbouring columns get closer
    ramp = np.broadcast_to(np.linspace(0, 255, 32).astype(np.uint8)[None, None, :, None], (16, 32, 32, 1))
    out = run(np.ascontiguousarray(ramp), only(random_resized_crop={"scale": (0.25, 0.5)}))
    span = out[:, 16].astype(int).max(axis=(1, 2)) - out[:, 16].astype(int).min(axis=(1, 2))
    assert np.all(span < 230)


def test_affine_grid_matches_torch():
    theta = np.random.default_rng(0).normal(size=(5, 2, 3))
    ours = affine_grid(theta, 7, 9)
    ref = F.affine_grid(torch.from_numpy(theta).float(), (5, 1, 7, 9), align_corners=False)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_cutout_zeroes_exactly_a_square_when_inside(rng):
    n, size = 200, 8
    x = rng.integers(1, 256, (n, 32, 32, 3), dtype=np.uint8)  # no zeros of its own
    idx = np.arange(n, dtype=np.int64)
    out = run(x, only(cutout={"size": size, "p": 1.0}), idx=idx)
    u = row_uniforms(0, 0, idx, N_DRAWS)
    cy = np.floor(u[:, DRAW_COLUMNS["cutout_y"]].astype(np.float64) * 32).astype(int)
    cx = np.floor(u[:, DRAW_COLUMNS["cutout_x"]].astype(np.float64) * 32).astype(int)
    inside = 0
    for i in range(n):
        zero = np.all(out[i] == 0, axis=-1)
        y0, x0 = cy[i] - size // 2, cx[i] - size // 2
        expect = np.zeros((32, 32), dtype=bool)
        expect[max(y0, 0) : y0 + size, max(x0, 0) : x0 + size] = True
        np.testing.assert_array_equal(zero, expect)
        np.testing.assert_array_equal(out[i][~zero], x[i][~zero])
        if 0 <= y0 and y0 + size <= 32 and 0 <= x0 and x0 + size <= 32:
            inside += 1
            assert zero.sum() == size * size
    assert inside > n // 2


def test_cutout_probability(rng):
    x = rng.integers(1, 256, (400, 16, 16, 1), dtype=np.uint8)
    out = run(x, only(cutout={"size": 4, "p": 0.5}))
    hit = np.any(out == 0, axis=(1, 2, 3))
    assert 160 < hit.sum() < 240


@pytest.mark.parametrize("c", [1, 2, 5])
def test_color_jitter_on_non_rgb(rng, c):
    x = images(rng, 16, 16, 16, c)
    out = run(x, only(color_jitter={"brightness": 0.3, "contrast": 0.3, "saturation": 0.3}))
    assert out.shape == x.shape and out.dtype == np.uint8
    assert np.any(out != x, axis=(1, 2, 3)).sum() >= 12
    # saturation alone is a no-op without three colour channels
    np.testing.assert_array_equal(
        run(x, only(color_jitter={"brightness": 0.0, "contrast": 0.0, "saturation": 0.5})), x
    )


def test_color_jitter_brightness_scales_and_saturation_keeps_grey(rng):
    x = np.full((64, 4, 4, 3), 100, dtype=np.uint8)
    out = run(x, only(color_jitter={"brightness": 0.5, "contrast": 0.0, "saturation": 0.0}))
    values = out[:, 0, 0, 0].astype(int)
    assert np.all(out == out[:, :1, :1, :1]) and values.min() >= 50 and values.max() <= 150
    assert values.min() < 70 and values.max() > 130
    grey = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8).repeat(3, axis=3)
    out = run(grey, only(color_jitter={"brightness": 0.0, "contrast": 0.0, "saturation": 0.9}))
    assert np.abs(out.astype(int) - grey).max() <= 1


def test_all_on_grayscale(rng):
    x = images(rng, 16, 32, 32, 1)
    out = run(x, ALL_ON)
    assert out.shape == x.shape and np.any(out != x, axis=(1, 2, 3)).all()


# -------------------------------------------------------------------- resize_center_crop
def test_resize_center_crop_identity_is_no_copy(rng):
    x = images(rng, 4, 24, 24, 3)
    assert resize_center_crop(x, 24) is x


@pytest.mark.parametrize("shape,size", [((3, 40, 60, 3), 32), ((2, 60, 40, 1), 32), ((2, 16, 20, 5), 32)])
def test_resize_center_crop_shapes(rng, shape, size):
    out = resize_center_crop(images(rng, *shape), size)
    assert out.shape == (shape[0], size, size, shape[3]) and out.dtype == np.uint8
    assert out.flags.c_contiguous


def test_resize_center_crop_keeps_constants_and_crops_the_centre(rng):
    x = np.full((2, 50, 70, 3), 77, dtype=np.uint8)
    assert np.all(resize_center_crop(x, 20) == 77)
    y = images(rng, 2, 32, 40, 3)  # shorter side already 32: a pure centre crop
    np.testing.assert_array_equal(resize_center_crop(y, 32), y[:, :, 4:36])


def test_resize_center_crop_antialiases():
    # a 1-pixel checkerboard averages to grey when downscaled 4x with antialiasing
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[None, :, :, None]
    out = resize_center_crop(board, 16)
    assert np.all(np.abs(out.astype(int) - 128) <= 2)


# ---------------------------------------------------------------------- normalize_batch
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normalize_batch_layout_dtype_and_values(rng, dtype):
    x = torch.from_numpy(images(rng, 8, 12, 10, 3))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    y = normalize_batch(x, mean, std, dtype=dtype)
    assert y.shape == (8, 3, 12, 10) and y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref = (x.permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(
        std
    ).double().view(1, 3, 1, 1)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
    y2 = normalize_batch(x, mean, std, dtype=dtype, channels_last=False)
    assert y2.is_contiguous() and torch.equal(y2, y)


def test_normalize_batch_standardises_data_with_those_stats(rng):
    scales = np.array([0.5, 1.0, 0.2])
    x = np.clip(rng.normal(128, 30, (64, 16, 16, 3)) * scales + 60, 0, 255).astype(np.uint8)
    stats = ChannelStats(3)
    stats.add_images(x)
    mean, std = stats.mean_std()
    y = normalize_batch(torch.from_numpy(x), mean, std)
    per_channel = y.permute(1, 0, 2, 3).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_normalize_batch_grayscale_and_errors(rng):
    x = torch.from_numpy(images(rng, 2, 4, 4, 1))
    assert normalize_batch(x, [0.5], [0.5]).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"images must be \(N, H, W, C\) uint8, got .* torch\.float32"):
        normalize_batch(x.float(), [0.5], [0.5])
    with pytest.raises(ValueError, match="mean/std need 1 or 3 values, got 2 and 2"):
        normalize_batch(torch.from_numpy(images(rng, 2, 4, 4, 3)), [0.5, 0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"std must be > 0, got \[0\.0\]"):
        normalize_batch(x, [0.5], [0.0])

