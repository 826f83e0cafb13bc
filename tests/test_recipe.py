"""The fast-recipe techniques of cnn_ray.recipe: shapes, dtypes and a property of each that
could fail (whitening -> identity patch covariance, EMA closed form, TTA invariance,
alternating flip, MixUp targets, Muon/SGD equivalences, decoupled hyperparameters, schedule).
No Ray; small seeded tensors on one thread."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_ray.models import create_model
from cnn_ray.recipe import (MuonSGD, WarmupLinearDecay, alternating_flip, alternating_flip_mask,
                            apply_patch_whitening, bn_bias_param_groups, bn_bias_params,
                            configure_batchnorm, copy_ema_to_model, decoupled_sgd_hparams,
                            ema_state_dict, first_conv, first_epoch_flips, flip_batch,
                            load_ema_state_dict, make_ema, mix_batch, orthogonalize,
                            patch_whitening_weights, predict_tta, soft_target_cross_entropy,
                            split_muon_groups, tta_views, update_ema)
from cnn_ray.recipe.whitening import patch_second_moment


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# tiny models run fastest on one thread (and leave the other core to the rest of the suite)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _correlated_images(n: int = 64, size: int = 12) -> torch.Tensor:
    """(n, 3, size, size) float: smooth, channel-correlated images with a nonzero mean."""
    x = torch.randn(n, 3, size + 2, size + 2)
    x = F.avg_pool2d(x, 3, stride=1)  # spatial correlation
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]])
    return torch.einsum("dc,nchw->ndhw", mix, x) + 0.3


# ------------------------------------------------------------------------------ whitening
def test_whitening_makes_patch_second_moment_identity():
    x = _correlated_images()
    w = patch_whitening_weights(x, kernel_size=2, eps=1e-9)
    assert w.shape == (24, 3, 2, 2) and w.dtype == torch.float32
    assert torch.allclose(w[12:], -w[:12])
    out = F.conv2d(x, w[:12])  # pre-activation, no bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    moment = flat.T @ flat / len(flat)
    assert torch.allclose(moment, torch.eye(12, dtype=torch.float64), atol=1e-3)
    raw = F.conv2d(x, torch.eye(12).reshape(12, 3, 2, 2)).permute(0, 2, 3, 1).reshape(-1, 12)
    assert (raw.T @ raw / len(raw) - torch.eye(12)).abs().max() > 0.5  # it was far from it


def test_whitening_eps_shrinks_weak_directions_by_closed_form():
    x = _correlated_images()
    eps = 0.05
    eigvals = torch.linalg.eigvalsh(patch_second_moment(x, 2)).flip(0)
    out = F.conv2d(x, patch_whitening_weights(x, 2, eps=eps)[:12])
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    diag = (flat * flat).mean(0)
    assert torch.allclose(diag, eigvals / (eigvals + eps), atol=1e-3)
    assert diag[-1] < 0.9  # the weakest direction is visibly shrunk


def test_whitening_uint8_nhwc_sample_matches_normalised_float():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    x = (torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
         - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    a = patch_whitening_weights(u8, 2, mean=mean, std=std)
    b = patch_whitening_weights(x, 2)
    assert torch.allclose(a, b, atol=1e-4)


def test_apply_patch_whitening_on_airbench_freezes_weight_and_whitens():
    model = create_model("airbench", 10, widths=(16, 16, 16))
    x = _correlated_images(32, 10)
    bias = apply_patch_whitening(model, x, eps=1e-9)
    name, conv = first_conv(model)
    assert bias is conv.bias and bias.requires_grad and not conv.weight.requires_grad
    with torch.no_grad():
        out = F.conv2d(x, conv.weight[:12])
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    assert torch.allclose(flat.T @ flat / len(flat), torch.eye(12, dtype=torch.float64),
                          atol=1e-3)


def test_apply_patch_whitening_adds_bias_or_names_the_model():
    resnet = create_model("resnet9", 10, width_mult=1.0)  # 3x3 prep conv, 64 >= 2*3*9 filters
    bias = apply_patch_whitening(resnet, _correlated_images(8, 10))
    name, conv = first_conv(resnet)
    assert conv.bias is bias and name + ".bias" in resnet.state_dict()
    assert float(bias.detach().abs().sum()) == 0.0
    assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"simple_cnn.*32 output channels.*needs 54"):
        apply_patch_whitening(create_model("simple_cnn", 10), _correlated_images(4, 8),
                              model_name="simple_cnn")


# ------------------------------------------------------------------------------ batchnorm
def test_configure_batchnorm_and_bias_groups():
    model = create_model("airbench", 10, widths=(16, 16, 16))
    n = configure_batchnorm(model, momentum=0.4, eps=1e-12, freeze_scale=True)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert n == len(bns) == 6
    assert all(m.momentum == 0.4 and m.eps == 1e-12 and not m.weight.requires_grad for m in bns)
    whiten_bias = first_conv(model)[1].bias
    groups = bn_bias_param_groups(model, lr=0.1, weight_decay=5e-4, bias_scaler=64,
                                  exclude=[whiten_bias])
    by_name = {g["name"]: g for g in groups}
    assert by_name["bn_bias"]["lr"] == pytest.approx(6.4)
    assert by_name["bn_bias"]["weight_decay"] == 0.0
    assert {id(p) for p in by_name["bn_bias"]["params"]} == {id(p) for p in bn_bias_params(model)}
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad and p is not whiten_bias]
    assert sorted(seen) == sorted(trainable)  # each trainable parameter exactly once
    decayed = bn_bias_param_groups(model, 0.1, 5e-4, 64, decay_bn_bias=True)
    bn_group = next(g for g in decayed if g["name"] == "bn_bias")
    assert bn_group["lr"] * bn_group["weight_decay"] == pytest.approx(0.1 * 5e-4)
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    with pytest.raises(ValueError, match="momentum"):
        configure_batchnorm(model, momentum=0.0)


# ------------------------------------------------------------------------------------ ema
def _tiny_bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_ema_matches_closed_form_on_params_and_buffers():
    model = _tiny_bn_net()
    ema = make_ema(model, decay=0.9)
    snapshots = []
    for t in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 3))  # moves the BN running stats
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        update_ema(ema, model)
    d = 0.9
    for key, avg in ema.module.state_dict().items():
        if not avg.is_floating_point():
            continue
        expect = d ** 3 * snapshots[0][key]  # the first update copies
        for t in range(1, 4):
            expect = expect + (1 - d) * d ** (3 - t) * snapshots[t][key]
        assert torch.allclose(avg, expect, atol=1e-6), key
    assert int(ema.n_averaged) == 4


def test_ema_decay_warmup_lookahead_and_resume():
    model = _tiny_bn_net()
    ema = make_ema(model, decay=0.95 ** 5)
    assert update_ema(ema, model, step=5, total_steps=10, power=3.0) == pytest.approx(
        0.95 ** 5 * 0.5 ** 3)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    update_ema(ema, model, step=10, total_steps=10, power=3.0, lookahead=True)
    assert torch.equal(model[0].weight, ema.module[0].weight)  # copied back
    saved = io.BytesIO()
    torch.save(ema_state_dict(ema), saved)
    saved.seek(0)
    fresh = make_ema(_tiny_bn_net(), decay=0.5)
    load_ema_state_dict(fresh, torch.load(saved, weights_only=True))
    assert fresh.ema_decay == pytest.approx(0.95 ** 5) and int(fresh.n_averaged) == 2
    with torch.no_grad():
        model[2].bias.add_(3.0)
    update_ema(ema, model)
    update_ema(fresh, model)
    for a, b in zip(ema.module.state_dict().values(), fresh.module.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        ema.module[2].bias.fill_(7.0)
    copy_ema_to_model(ema, model)
    assert torch.equal(model[2].bias, torch.full((2,), 7.0))


# ------------------------------------------------------------------------------------ tta
class _FlipInvariant(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)

    def forward(self, x):
        g = lambda z: self.conv(z).amax(dim=(2, 3))  # noqa: E731
        return g(x) + g(x.flip(-1))


def test_tta_flip_of_flip_invariant_model_equals_none():
    model = _FlipInvariant().eval()
    x = torch.randn(4, 3, 12, 12)
    none, flip = predict_tta(model, x, "none"), predict_tta(model, x, "flip")
    assert none.shape == (4, 5) and flip.dtype == torch.float32
    assert torch.allclose(none, flip, atol=1e-5)
    assert not torch.allclose(predict_tta(nn.Sequential(nn.Flatten(), nn.Linear(432, 5)), x,
                                          "flip"), nn.Sequential()(x).flatten(1)[:, :5])


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.views = []

    def forward(self, x):
        self.views.append(x.clone())
        return x.flatten(1)


def test_tta_flip_translate_views_and_weights():
    x = torch.randn(2, 3, 6, 6)
    rec = _Recorder()
    out = predict_tta(rec, x, "flip_translate", translate=1)
    assert len(rec.views) == tta_views("flip_translate") == 6
    assert tta_views("none") == 1 and tta_views("flip") == 2
    v = rec.views
    assert torch.equal(v[0], x) and torch.equal(v[1], x.flip(-1))
    assert torch.equal(v[2][..., 1:, 1:], x[..., :-1, :-1])  # up-left view: content moves +1
    assert torch.equal(v[4][..., :-1, :-1], x[..., 1:, 1:])  # down-right view
    f = [t.flatten(1) for t in v]
    expect = 0.25 * (f[0] + f[1]) + 0.125 * (f[2] + f[3] + f[4] + f[5])
    assert torch.allclose(out, expect)
    with pytest.raises(ValueError, match="tta mode"):
        predict_tta(rec, x, "multi_crop")


# ----------------------------------------------------------------------------------- flip
def test_alternating_flip_flips_each_image_on_alternate_epochs():
    rows = np.arange(1000)
    masks = np.stack([alternating_flip_mask(rows, e, seed=3) for e in range(6)])
    assert (masks[1:] != masks[:-1]).all()  # every image changes orientation every epoch
    assert 0.4 < masks[0].mean() < 0.6
    assert (first_epoch_flips(rows, 3) != first_epoch_flips(rows, 4)).mean() > 0.3
    perm = np.random.default_rng(0).permutation(1000)[:100]  # order / sharding independent
    assert np.array_equal(alternating_flip_mask(perm, 2, 3), masks[2][perm])
    assert np.array_equal(alternating_flip_mask(torch.from_numpy(perm), 2, 3), masks[2][perm])


def test_alternating_flip_numpy_nhwc_equals_torch_nchw():
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, size=(8, 4, 5, 3), dtype=np.uint8)
    rows = np.arange(100, 108)
    flipped = alternating_flip(u8, rows, epoch=1, seed=7, layout="nhwc")
    mask = alternating_flip_mask(rows, 1, 7)
    assert flipped.dtype == np.uint8 and np.array_equal(flipped[mask], u8[mask][:, :, ::-1])
    assert np.array_equal(flipped[~mask], u8[~mask])
    nchw = torch.from_numpy(u8).permute(0, 3, 1, 2).float().contiguous(
        memory_format=torch.channels_last)
    t = alternating_flip(nchw, torch.from_numpy(rows), epoch=1, seed=7, layout="nchw")
    assert torch.equal(t, torch.from_numpy(flipped).permute(0, 3, 1, 2).float())
    with pytest.raises(ValueError, match="layout"):
        flip_batch(u8, mask, "hwc")


# --------------------------------------------------------------------------------- mixing
def test_mixup_targets_sum_to_one_and_match_the_images():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, t = mix_batch(x, y, num_classes=10, mixup_alpha=1.0)
    assert t.shape == (4, 10) and torch.allclose(t.sum(1), torch.ones(4))
    lam = t[0, 0]
    assert 0 < lam < 1 and torch.allclose(t[0, 3], 1 - lam)  # partner: the previous image
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
    _, t2 = mix_batch(x, y, 10, mixup_alpha=0.2, cutmix_alpha=1.0)
    assert torch.allclose(t2.sum(1), torch.ones(4))
    same, onehot = mix_batch(x, y, 10)
    assert same is x and torch.equal(onehot.argmax(1), y)


def test_soft_target_cross_entropy_equals_torch_for_one_hot():
    logits, y = torch.randn(6, 10, requires_grad=True), torch.randint(0, 10, (6,))
    ours = soft_target_cross_entropy(logits, F.one_hot(y, 10).float(), label_smoothing=0.2)
    ref = F.cross_entropy(logits, y, label_smoothing=0.2)
    assert torch.allclose(ours, ref, atol=1e-6)
    ours.backward()
    assert logits.grad is not None
    with pytest.raises(ValueError, match="label_smoothing"):
        soft_target_cross_entropy(logits, F.one_hot(y, 10).float(), label_smoothing=1.0)


# ----------------------------------------------------------------------------- optimizers
def _run(opt_factory, params0, grads):
    params = [p.clone().requires_grad_(True) for p in params0]
    opt = opt_factory(params)
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()
    return [p.detach() for p in params]


def test_muon_sgd_sgd_groups_equal_torch_sgd():
    params0 = [torch.randn(5, 3), torch.randn(5)]
    grads = [[torch.randn(5, 3), torch.randn(5)] for _ in range(3)]
    ours = _run(lambda ps: MuonSGD(ps, lr=0.1, momentum=0.85, weight_decay=0.01), params0, grads)
    ref = _run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.85, nesterov=True,
                                          weight_decay=0.01), params0, grads)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-6)


def test_muon_group_on_conv_weight_equals_torch_muon_on_its_matrix():
    w0 = torch.randn(6, 4, 3, 3)
    grads = [[torch.randn(6, 4, 3, 3)] for _ in range(3)]
    ours = _run(lambda ps: MuonSGD(ps, lr=0.02, momentum=0.95, muon=True, ns_steps=5,
                                   normalize_weights=False), [w0], grads)
    ref = _run(lambda ps: torch.optim.Muon(ps, lr=0.02, momentum=0.95, weight_decay=0.0),
               [w0.reshape(6, -1)], [[g[0].reshape(6, -1)] for g in grads])
    assert torch.allclose(ours[0].reshape(6, -1), ref[0], atol=2e-3)
    assert not torch.allclose(ours[0], w0, atol=1e-2)


def test_orthogonalize_flattens_singular_values():
    g = torch.randn(16, 40) @ torch.diag(torch.logspace(-2, 1, 40))
    s = torch.linalg.svdvals(orthogonalize(g, steps=5).float())
    assert s.min() > 0.5 and s.max() < 1.5
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 50


def test_split_muon_groups_schedule_and_state_dict_round_trip():
    def build():
        torch.manual_seed(1)
        model = create_model("airbench", 10, widths=(8, 8, 8))
        groups = split_muon_groups(bn_bias_param_groups(model, 0.05, 5e-4, 64), muon_lr=0.24)
        return model, MuonSGD(groups, lr=0.05, momentum=0.85)

    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    model, opt = build()
    muon = next(g for g in opt.param_groups if g["muon"])
    assert all(p.ndim == 4 for p in muon["params"]) and len(muon["params"]) == 7
    assert any(p.ndim == 2 for g in opt.param_groups if not g["muon"] for p in g["params"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupLinearDecay(10, 0.2, 0.2, 0.0))
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert muon["lr"] == pytest.approx(0.24 * (1 - 1 / 8))  # peak at step 2, 0 at step 10
    buf = io.BytesIO()  # through bytes, as a checkpoint: state_dict() shares the buffers
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2, opt2 = build()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    for m, o in ((model, opt), (model2, opt2)):
        F.cross_entropy(m(x), y).backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_decoupled_hparams_mean_form_equals_airbench_sum_form():
    batch, momentum = 8, 0.85
    lr_s, wd_s = decoupled_sgd_hparams(11.5, 0.0153, momentum, batch, loss_reduction="sum")
    kilostep = 1024 * (1 + 1 / (1 - momentum))  # airbench94.py, written out
    assert lr_s == pytest.approx(11.5 / kilostep)
    assert lr_s * wd_s == pytest.approx(0.0153 * batch / kilostep)
    lr_m, wd_m = decoupled_sgd_hparams(11.5, 0.0153, momentum, batch)
    assert lr_m == pytest.approx(lr_s * batch) and wd_m == pytest.approx(0.0153 / 11.5)
    x, y, w0 = torch.randn(batch, 5), torch.randint(0, 3, (batch,)), torch.randn(3, 5)

    def train(lr, wd, reduction):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum, nesterov=True, weight_decay=wd)
        for _ in range(3):
            F.cross_entropy(x @ w.T, y, reduction=reduction).backward()
            opt.step()
            opt.zero_grad()
        return w.detach()

    assert torch.allclose(train(lr_s, wd_s, "sum"), train(lr_m, wd_m, "mean"), atol=1e-6)
    assert not torch.allclose(train(lr_s, wd_s, "mean"), train(lr_m, wd_m, "mean"), atol=1e-4)
    assert decoupled_sgd_hparams(11.5, 0.0153, momentum, 2 * batch)[0] == pytest.approx(2 * lr_m)
    with pytest.raises(ValueError, match="momentum"):
        decoupled_sgd_hparams(11.5, 0.0153, 1.0, batch)


# ------------------------------------------------------------------------------ schedules
def test_warmup_linear_decay_shape_stop_and_checkpoint():
    f = WarmupLinearDecay(100, warmup_frac=0.23, start=0.2, end=0.07)
    values = [f(t) for t in range(101)]
    assert values[0] == pytest.approx(0.2) and values[23] == pytest.approx(1.0)
    assert values[100] == pytest.approx(0.07) and f(150) == pytest.approx(0.07)
    assert all(a < b for a, b in zip(values[:23], values[1:24]))
    assert all(a > b for a, b in zip(values[23:100], values[24:101]))
    stop = WarmupLinearDecay(100, 0.0, 1.0, 0.0, stop_step=30)
    assert stop(29) == pytest.approx(0.71) and stop(30) == 0.0
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    for _ in range(40):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, WarmupLinearDecay(5))
    sched2.load_state_dict(torch.load(buf, weights_only=True))
    sched2.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(f(41))
    with pytest.raises(ValueError, match="warmup_frac"):
        WarmupLinearDecay(10, warmup_frac=1.0)
