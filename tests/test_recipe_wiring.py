"""The recipe switches wired into the optimiser, schedules and step loop (issue 11): decoupled
hyperparameters, the BN-bias learning-rate group, Muon, linear decay, MixUp/CutMix, and the
config errors of conflicting switches. No Ray; small seeded models on one thread."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_ray.config import AugmentConfig, ConfigError, OptimConfig, TrainConfig
from cnn_ray.models import create_model
from cnn_ray.recipe import (MuonSGD, RungAnnealed, WarmupLinearDecay, WarmupStableDecay, bn_bias_params,
                            decoupled_sgd_hparams)
from cnn_ray.recipe.mixing import BatchMixer, mixing_transform
from cnn_ray.train.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from cnn_ray.train.optim import (build_lr_scheduler, build_optimizer, schedule_total_steps,
                                 stretch_schedule)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# tiny models run fastest on one thread (and leave the other core to the rest of the suite)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_net(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int = 1) -> list[float]:
    """``n`` optimiser steps of mean cross entropy on one fixed batch; the losses."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    losses = []
    for _ in range(n):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _group(opt: torch.optim.Optimizer, name: str) -> dict:
    return next(g for g in opt.param_groups if g.get("name") == name)


# ------------------------------------------------------------------------ decoupled
@pytest.mark.parametrize("momentum, batch_size", [(0.85, 512), (0.9, 1024)])
def test_decoupled_gives_the_update_of_the_plain_sgd_it_stands_for(momentum, batch_size):
    dec = OptimConfig(decoupled=True, lr=11.5, weight_decay=0.0153, momentum=momentum,
                      batch_size=batch_size)
    lr, wd = decoupled_sgd_hparams(11.5, 0.0153, momentum, batch_size)
    assert lr == pytest.approx(11.5 * batch_size / (1024 * (1 + 1 / (1 - momentum))))
    plain = OptimConfig(lr=lr, weight_decay=wd, momentum=momentum, batch_size=batch_size)
    a, b = tiny_net(), tiny_net()
    opt_a, opt_b = build_optimizer(a, dec), build_optimizer(b, plain)
    assert opt_a.param_groups[0]["lr"] == pytest.approx(lr)
    assert opt_a.param_groups[0]["weight_decay"] == pytest.approx(wd)
    _steps(a, opt_a, 3), _steps(b, opt_b, 3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_decoupled_with_muon_converts_the_sgd_groups_only():
    cfg = OptimConfig(optimizer="muon", decoupled=True, lr=11.5, weight_decay=0.0153,
                      momentum=0.85, batch_size=1024, muon_lr=0.24)
    opt = build_optimizer(tiny_net(), cfg)
    lr, wd = decoupled_sgd_hparams(11.5, 0.0153, 0.85, 1024)
    assert _group(opt, "muon")["lr"] == 0.24 and _group(opt, "muon")["weight_decay"] == 0.0
    sgd = [g for g in opt.param_groups if not g["muon"]]
    assert all(g["lr"] == pytest.approx(lr) for g in sgd)
    assert sorted(g["weight_decay"] for g in sgd) == pytest.approx([0.0, wd])


# ------------------------------------------------------------------------ BN-bias group
def test_bn_bias_group_has_lr_times_mult_no_decay_and_only_bn_biases():
    model = create_model("airbench", num_classes=10, widths=(16, 32, 32))
    opt = build_optimizer(model, OptimConfig(lr=0.2, weight_decay=5e-4), bn_bias_lr_mult=64)
    bn = _group(opt, "bn_bias")
    assert {id(p) for p in bn["params"]} == {id(p) for p in bn_bias_params(model)}
    assert bn["lr"] == pytest.approx(0.2 * 64) and bn["weight_decay"] == 0.0
    assert _group(opt, "decay")["weight_decay"] == 5e-4 and _group(opt, "decay")["lr"] == 0.2
    assert _group(opt, "no_decay")["weight_decay"] == 0.0
    covered = sum(len(g["params"]) for g in opt.param_groups)
    assert covered == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("mult", [1.0, 64.0])
def test_decay_norm_and_bias_shrinks_every_parameter_by_lr_times_wd_per_step(mult):
    """airbench decays every parameter; with zero gradients one plain SGD step (no momentum
    history yet) multiplies each by ``1 - lr * wd`` -- the BN biases too, despite their x mult lr."""
    model = create_model("airbench", num_classes=10, widths=(8, 16, 16))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    cfg = OptimConfig(lr=0.1, weight_decay=0.01, momentum=0.0, decay_norm_and_bias=True)
    opt = build_optimizer(model, cfg, bn_bias_lr_mult=mult)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p.ndim == 1 for p in trainable)  # biases and BN biases are there to check
    for p in trainable:
        assert torch.allclose(p, torch.full_like(p, 1 - 0.1 * 0.01)), p.shape
    # the default keeps 1-D parameters undecayed
    plain = build_optimizer(model, cfg.model_copy(update={"decay_norm_and_bias": False}),
                            bn_bias_lr_mult=mult)
    assert all(g["weight_decay"] == 0.0 for g in plain.param_groups
               if all(p.ndim == 1 for p in g["params"]))


def test_bn_bias_mult_one_keeps_the_two_plain_groups():
    opt = build_optimizer(tiny_net(), OptimConfig(lr=0.2), bn_bias_lr_mult=1.0)
    assert len(opt.param_groups) == 2 and all("name" not in g for g in opt.param_groups)
    with pytest.raises(ValueError, match="bn_bias_lr_mult"):
        build_optimizer(tiny_net(), OptimConfig(), bn_bias_lr_mult=0.0)


@pytest.mark.parametrize("schedule", ["onecycle", "linear_decay", "cosine", "step", "plateau"])
@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_bn_bias_ratio_survives_the_schedule(schedule, optimizer):
    cfg = OptimConfig(optimizer=optimizer, schedule=schedule, lr=0.2, epochs=3, warmup_epochs=1,
                      step_size=1)
    opt = build_optimizer(tiny_net(), cfg, bn_bias_lr_mult=16)
    sched, per_step = build_lr_scheduler(opt, cfg, steps_per_epoch=5)
    seen = set()
    for _ in range(15 if per_step else 5):  # plateau: a flat val loss, cut after 2 epochs
        opt.step()
        sched.step() if per_step else sched.step(1.0)
        bn, decay = _group(opt, "bn_bias")["lr"], _group(opt, "decay")["lr"]
        assert bn == pytest.approx(16 * decay, rel=1e-9)
        if optimizer == "muon":
            assert _group(opt, "muon")["lr"] == pytest.approx(cfg.muon_lr / cfg.lr * decay)
        seen.add(round(decay, 12))
    assert len(seen) > 1  # the schedule did move the rates


def test_bn_bias_key_of_the_config(tmp_path):
    cfg = TrainConfig.from_dict({"data": {"train": str(tmp_path)},
                                 "model": {"batchnorm": {"bias_lr_mult": 64}}})
    opt = build_optimizer(tiny_net(), cfg.optim, bn_bias_lr_mult=cfg.model.batchnorm.bias_lr_mult)
    assert _group(opt, "bn_bias")["lr"] == pytest.approx(64 * cfg.optim.lr)


# ------------------------------------------------------------------------ Muon
def test_muon_on_airbench_groups_filters_and_trains():
    model = create_model("airbench", num_classes=10, widths=(16, 32, 32))
    cfg = OptimConfig(optimizer="muon", lr=0.05, momentum=0.85, muon_lr=0.24, muon_momentum=0.6)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, MuonSGD)
    muon = _group(opt, "muon")
    convs = [m.weight for m in model.modules()
             if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    assert {id(p) for p in muon["params"]} == {id(p) for p in convs}
    assert (muon["lr"], muon["momentum"], muon["weight_decay"]) == (0.24, 0.6, 0.0)
    for g in opt.param_groups:
        if not g["muon"]:
            assert all(p.ndim < 4 for p in g["params"]) and g["lr"] == 0.05
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    model.train()
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_muon_state_round_trips_through_a_checkpoint(tmp_path):
    cfg = OptimConfig(optimizer="muon", schedule="linear_decay", lr=0.05, epochs=2)
    model = tiny_net()
    opt = build_optimizer(model, cfg, bn_bias_lr_mult=8)
    sched, _ = build_lr_scheduler(opt, cfg, 5)
    for _ in range(3):
        _steps(model, opt, 1)
        sched.step()
    path = save_checkpoint(tmp_path / "ck", model=model, epoch=1, config={},
                           class_names=list("abcd"), mean=[0.5] * 3, std=[0.2] * 3,
                           optimizer=opt, scheduler=sched)
    model2 = tiny_net()
    opt2 = build_optimizer(model2, cfg, bn_bias_lr_mult=8)
    sched2, _ = build_lr_scheduler(opt2, cfg, 5)
    restore_training_state(load_checkpoint(path), model=model2, optimizer=opt2, scheduler=sched2)
    filt = _group(opt, "muon")["params"][0]
    filt2 = _group(opt2, "muon")["params"][0]
    assert torch.equal(opt.state[filt]["momentum_buffer"], opt2.state[filt2]["momentum_buffer"])
    lrs = [g["lr"] for g in opt.param_groups]
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx(lrs)
    assert [g.get("name") for g in opt2.param_groups] == [g.get("name") for g in opt.param_groups]
    for m, o, s in [(model, opt, sched), (model2, opt2, sched2)]:
        _steps(m, o, 1)
        s.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------ linear decay
def _lrs(cfg: OptimConfig, spe: int, n: int) -> list[float]:
    opt = build_optimizer(nn.Linear(3, 2), cfg)
    sched, per_step = build_lr_scheduler(opt, cfg, spe)
    assert per_step
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(n):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_linear_decay_start_peak_end():
    cfg = OptimConfig(schedule="linear_decay", lr=2.0, epochs=10, pct_start=0.2,
                      initial_lr_frac=0.2, final_lr_frac=0.07)
    lrs = _lrs(cfg, 10, 105)  # 100 planned steps and a few more
    assert lrs[0] == pytest.approx(0.4)  # initial_lr_frac x lr
    assert lrs[20] == pytest.approx(2.0) and max(lrs) == pytest.approx(2.0)  # peak at pct_start
    assert lrs[100] == pytest.approx(0.14)  # final_lr_frac x lr at the end
    assert lrs[105] == pytest.approx(0.14)  # clamped past the end, no error
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21]))
    assert all(b < a for a, b in zip(lrs[20:100], lrs[21:101]))
    assert lrs[60] == pytest.approx(2.0 + (0.14 - 2.0) * 0.5)
    flat = _lrs(cfg.model_copy(update={"initial_lr_frac": 1.0, "final_lr_frac": 0.0}), 10, 100)
    assert flat[:21] == pytest.approx([2.0] * 21) and flat[100] == 0.0  # airbench94_muon form


def test_wsd_warms_up_holds_the_peak_then_decays_in_the_last_share():
    cfg = OptimConfig(schedule="wsd", lr=2.0, epochs=10, pct_start=0.1, decay_frac=0.3,
                      initial_lr_frac=0.2, final_lr_frac=0.05)
    lrs = _lrs(cfg, 10, 103)  # 100 planned steps and a few more
    assert lrs[0] == pytest.approx(0.4) and lrs[10] == pytest.approx(2.0)
    assert lrs[10:71] == pytest.approx([2.0] * 61)  # stable until 30% before the end
    assert all(b < a for a, b in zip(lrs[70:100], lrs[71:101]))
    assert lrs[85] == pytest.approx(2.0 + (0.1 - 2.0) * 0.5)
    assert lrs[100] == pytest.approx(0.1) and lrs[103] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_frac \\+ decay_frac"):
        WarmupStableDecay(10, warmup_frac=0.5, decay_frac=0.6)


def test_wsd_ranks_early_epochs_at_the_peak_rate():
    """The property ASHA needs: two trials stopped at the same early epoch were both trained at
    their peak rate so far (no trial is further into its decay than another), unlike a
    one-cycle schedule of a longer run, which has already begun to anneal there."""
    steps = 10
    wsd = OptimConfig(schedule="wsd", lr=1.0, epochs=8, pct_start=0.05, decay_frac=0.25)
    onecycle = OptimConfig(schedule="onecycle", lr=1.0, epochs=8, pct_start=0.25)
    lw, lo = _lrs(wsd, steps, 80), _lrs(onecycle, steps, 80)
    assert lw[10:60] == pytest.approx([1.0] * 50)      # epochs 2-6: at the peak
    assert lo[30] < 1.0 and lo[50] < lo[30]             # one-cycle: already annealing


def test_rung_anneal_is_annealed_at_every_rung_and_restarts_after():
    """Cycles end at epochs 1 and 4 of 8 (10 steps each): at those steps the rate is at its
    floor, as at the last step, and each cycle warms up again from the start fraction."""
    cfg = OptimConfig(schedule="rung_anneal", lr=2.0, epochs=8, anneal_epochs=[1, 4],
                      pct_start=0.2, initial_lr_frac=0.2, final_lr_frac=0.05)
    lrs = _lrs(cfg, 10, 82)
    for start, end in ((0, 10), (10, 40), (40, 80)):
        peak = start + int(0.2 * (end - start))
        assert lrs[start] == pytest.approx(0.4)       # 0.2 x lr at each cycle's first step
        assert lrs[peak] == pytest.approx(2.0)        # the peak after its warm-up
        assert all(b < a for a, b in zip(lrs[peak:end], lrs[peak + 1:end]))
        assert lrs[end - 1] == pytest.approx(2.0 + (0.1 - 2.0) * (end - 1 - peak) / (end - peak))
    assert lrs[80] == pytest.approx(0.1) and lrs[82] == pytest.approx(0.1)
    # no anneal_epochs: one cycle (warm-up, then linear decay to the end)
    one = _lrs(OptimConfig(schedule="rung_anneal", lr=1.0, epochs=2, pct_start=0.1), 10, 20)
    assert one[2] == pytest.approx(1.0) and all(b < a for a, b in zip(one[2:19], one[3:20]))
    with pytest.raises(ValueError, match="strictly increasing"):
        RungAnnealed(10, [5, 5])
    with pytest.raises(ValueError, match="strictly increasing"):
        RungAnnealed(10, [10])


@pytest.mark.parametrize("optim, match", [
    ({"schedule": "rung_anneal", "epochs": 8, "anneal_epochs": [4, 2]}, "strictly increasing"),
    ({"schedule": "rung_anneal", "epochs": 8, "anneal_epochs": [1, 8]}, "strictly increasing"),
    ({"schedule": "wsd", "epochs": 8, "anneal_epochs": [1, 4]}, "read by rung_anneal only"),
])
def test_anneal_epochs_out_of_range_or_without_its_schedule_is_named(optim, match):
    with pytest.raises(ConfigError, match=match) as err:
        TrainConfig.from_dict({"data": {"train": "t"}, "optim": optim}, check_paths=False)
    assert "optim.anneal_epochs" in str(err.value)


def test_sweep_derives_the_cycles_from_tunes_asha_rungs():
    from cnn_ray.tune.plan import asha_rungs, with_rung_cycles
    from cnn_ray.tune.settings import SchedulerSettings

    asha = SchedulerSettings(kind="asha", max_t=8, grace_period=1, reduction_factor=4)
    assert asha_rungs(asha) == [1, 4]
    assert asha_rungs(asha.model_copy(update={"reduction_factor": 3})) == [1, 3]
    assert asha_rungs(asha.model_copy(update={"max_t": 9, "reduction_factor": 3})) == [1, 3, 9]
    base = TrainConfig.from_dict({"data": {"train": "t"},
                                  "optim": {"schedule": "rung_anneal", "epochs": 8}},
                                 check_paths=False)
    assert with_rung_cycles(base, asha, []).optim.anneal_epochs == [1, 4]
    fifo = SchedulerSettings(kind="fifo")
    assert with_rung_cycles(base, fifo, []).optim.anneal_epochs is None  # one cycle
    given = TrainConfig.from_dict({"data": {"train": "t"},
                                   "optim": {"schedule": "rung_anneal", "epochs": 8,
                                             "anneal_epochs": [2]}}, check_paths=False)
    assert with_rung_cycles(given, asha, []).optim.anneal_epochs == [2]  # the user's wins
    with pytest.raises(ConfigError, match="optim.epochs"):
        with_rung_cycles(base, asha, ["optim.epochs"])


def test_wsd_resume_with_a_larger_budget_moves_the_decay_to_the_new_end():
    short = OptimConfig(schedule="wsd", lr=1.0, epochs=2, pct_start=0.1, decay_frac=0.5)
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, short)
    sched, _ = build_lr_scheduler(opt, short, 10)
    for _ in range(8):
        opt.step()
        sched.step()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    longer = short.model_copy(update={"epochs": 4})
    opt2 = build_optimizer(model, longer)
    sched2, _ = build_lr_scheduler(opt2, longer, 10)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(copy.deepcopy(state["scheduler"]))
    assert isinstance(sched2.lr_lambdas[0], WarmupStableDecay)
    assert stretch_schedule(sched2, schedule_total_steps(build_lr_scheduler(
        build_optimizer(model, longer), longer, 10)[0])) == 20
    # step 8 of 40: the decay now starts at step 20, so the rate is back at the peak
    assert opt2.param_groups[0]["lr"] == pytest.approx(1.0)


def test_linear_decay_resume_with_a_larger_budget_stretches(tmp_path):
    short = OptimConfig(schedule="linear_decay", lr=1.0, epochs=2, pct_start=0.25)
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, short)
    sched, _ = build_lr_scheduler(opt, short, 10)
    for _ in range(20):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.07)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    longer = short.model_copy(update={"epochs": 4})
    opt2 = build_optimizer(model, longer)
    sched2, _ = build_lr_scheduler(opt2, longer, 10)
    planned = schedule_total_steps(sched2)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(copy.deepcopy(state["scheduler"]))
    assert isinstance(sched2.lr_lambdas[0], WarmupLinearDecay)
    assert schedule_total_steps(sched2) == 20 and planned == 40
    assert stretch_schedule(sched2, planned) == 20 and schedule_total_steps(sched2) == 40
    assert sched2.last_epoch == 20 and sched2.lr_lambdas[0].peak == 5  # warm-up kept
    # half-way through the new decay from step 5 to 40
    assert opt2.param_groups[0]["lr"] == pytest.approx(1.0 + (0.07 - 1.0) * 15 / 35)
    assert stretch_schedule(sched2, planned) is None


# ------------------------------------------------------------------------ MixUp / CutMix
def _aug(mixup: bool, cutmix: bool) -> AugmentConfig:
    return AugmentConfig(mixup={"enabled": mixup, "alpha": 0.4},
                         cutmix={"enabled": cutmix, "alpha": 1.0})


def test_mixing_transform_is_none_when_both_off():
    assert mixing_transform(AugmentConfig(), 10, seed=0) is None
    assert mixing_transform(_aug(False, False), 10, seed=0) is None


@pytest.mark.parametrize("mixup, cutmix", [(True, False), (False, True), (True, True)])
def test_mixing_transform_targets_sum_to_one(mixup, cutmix):
    fn = mixing_transform(_aug(mixup, cutmix), 10, seed=3)
    assert isinstance(fn, BatchMixer)
    x = torch.randn(8, 3, 16, 16)
    y = torch.arange(8) % 10
    before = torch.get_rng_state()
    out, target = fn(x, y)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is untouched
    assert out.shape == x.shape and out.dtype == x.dtype
    assert target.shape == (8, 10) and target.dtype == torch.float32
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    assert (target > 0).sum(1).max() <= 2  # each row mixes at most two classes
    loss = F.cross_entropy(torch.randn(8, 10), target, label_smoothing=0.1)
    assert torch.isfinite(loss)


def test_mixing_transform_is_seeded_and_switches_between_the_two():
    x = torch.randn(8, 3, 16, 16)
    y = torch.arange(8)
    a, b = (mixing_transform(_aug(True, True), 10, seed=5) for _ in range(2))
    other = mixing_transform(_aug(True, True), 10, seed=6)
    outs_a = [a(x, y) for _ in range(12)]
    outs_b = [b(x, y) for _ in range(12)]
    for (xa, ta), (xb, tb) in zip(outs_a, outs_b):
        assert torch.equal(xa, xb) and torch.equal(ta, tb)
    assert not all(torch.equal(xa, other(x, y)[0]) for xa, _ in outs_a)
    # CutMix pastes a box (some pixels exactly those of x); MixUp blends every pixel
    kinds = {bool((xa == x).any()) for xa, _ in outs_a}
    assert kinds == {True, False}
    with pytest.raises(ValueError, match="not both 0"):
        BatchMixer(10, 0.0, 0.0, seed=0)


# ------------------------------------------------------------------------ config errors
@pytest.mark.parametrize("update, key", [
    ({"optim": {"decoupled": True, "optimizer": "adamw"}}, "optim.decoupled"),
    ({"optim": {"decoupled": True, "optimizer": "adam"}}, "optim.decoupled"),
    ({"optim": {"optimizer": "lion"}}, "optim.optimizer"),
    ({"optim": {"schedule": "triangle"}}, "optim.schedule"),
    ({"optim": {"muon_lrr": 0.2}}, "optim.muon_lrr"),
    ({"augment": {"hflip": {"mode": "sometimes"}}}, "augment.hflip.mode"),
    ({"augment": {"mixup": {"alpha": 0.0}}}, "augment.mixup.alpha"),
    ({"model": {"batchnorm": {"bias_lr_mult": 0}}}, "model.batchnorm.bias_lr_mult"),
])
def test_unknown_or_conflicting_switches_name_the_key(tmp_path, update, key):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"data": {"train": str(tmp_path)}, **update}, source="r.yaml")
    assert key in str(info.value)
