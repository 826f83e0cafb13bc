"""Numeric core of training (no Ray): steps, accumulation, non-finite guard, eval, schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnn_ray.config import OptimConfig, TrainConfig
from cnn_ray.train.inputs import DataSummary, FaultInjection, WorkerInputs
from cnn_ray.train.loop import (
    EpochStats,
    NonFiniteLossError,
    StepSettings,
    TrainProgress,
    count_correct,
    evaluate,
    train_one_epoch,
)
from cnn_ray.train.optim import build_lr_scheduler, build_optimizer, steps_per_epoch
from cnn_ray.train.techniques import split_decay_params


def tiny_net(num_classes=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def batches(n_batches=6, bs=16, num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, num_classes, (bs,), generator=g)
        # class-dependent colour so the task is learnable
        img = torch.randint(0, 60, (bs, 8, 8, 3), generator=g, dtype=torch.uint8)
        img[..., 0] += (y * 60).to(torch.uint8)[:, None, None]
        out.append({"image": img, "label": y})
    return out


def settings(**kw):
    base = dict(device=torch.device("cpu"), precision="fp32", mean=[0.5] * 3, std=[0.25] * 3)
    base.update(kw)
    return StepSettings(**base)


def test_training_reduces_loss_bf16_channels_last():
    model = tiny_net().to(memory_format=torch.channels_last)
    opt = build_optimizer(model, OptimConfig(lr=0.05, optimizer="sgd", epochs=5))
    s = settings(precision="bf16")
    data = batches()
    first = evaluate(model, data, s).summary("val_", 4)["val_loss"]
    for _ in range(5):
        stats = train_one_epoch(model, data, opt, s)
    assert stats.num_images == 96 and stats.steps == 6
    assert evaluate(model, data, s).summary("val_", 4)["val_loss"] < first


def test_grad_accumulation_matches_large_batch():
    """4 micro-batches of 8 with grad_accum_steps=4 == one batch of 32 (no batch-coupled layers)."""
    data = batches(n_batches=4, bs=8)
    big = [{"image": torch.cat([b["image"] for b in data]), "label": torch.cat([b["label"] for b in data])}]
    outs = []
    for batch_list, accum in [(big, 1), (data, 4)]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 3, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        stats = train_one_epoch(model, batch_list, opt, settings(grad_accum_steps=accum, channels_last=False))
        assert stats.steps == 1
        outs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_trailing_partial_accumulation_cycle_steps():
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    stats = train_one_epoch(model, batches(n_batches=5), opt, settings(grad_accum_steps=2))
    assert stats.steps == 3  # 2 + 2 + trailing 1


class NaNAfter(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8 * 8 * 3, 4)

    def forward(self, x):
        return self.lin(x.flatten(1)) * float("nan")


def test_non_finite_loss_stops_with_clear_error():
    model = NaNAfter()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.lin.weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match="max_bad_steps=2"):
        train_one_epoch(model, batches(n_batches=6), opt, settings(max_bad_steps=2, channels_last=False))
    assert torch.equal(model.lin.weight, before)  # bad steps were skipped, weights untouched


def test_grad_clip_bounds_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 3, 4))
    before = model[1].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(model, batches(n_batches=1), opt, settings(grad_clip_norm=1e-3, channels_last=False))
    delta = torch.cat([(model[1].weight - before).flatten()])
    assert delta.norm() <= 1e-3 + 1e-6


def test_count_correct_and_reduce():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    c1, c5 = count_correct(logits, labels)
    assert (c1, c5) == (1, 3)
    a = EpochStats(loss_sum=2.0, correct1=3, num_images=4, wall_s=2.0)
    doubled = a.reduce(lambda t: t * 2)  # two identical ranks
    assert doubled.num_images == 8 and doubled.correct1 == 6 and doubled.wall_s == 2.0


def test_weight_decay_off_norm_and_bias():
    groups = split_decay_params(tiny_net(), 5e-4)
    assert all(p.ndim > 1 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 5e-4
    assert all(p.ndim <= 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step", "constant", "plateau"])
def test_schedules_build_and_peak(schedule):
    cfg = OptimConfig(schedule=schedule, lr=0.4, epochs=4, warmup_epochs=1.0, step_size=1)
    model = tiny_net()
    opt = build_optimizer(model, cfg)
    sched, per_step = build_lr_scheduler(opt, cfg, steps_per_epoch=10)
    assert per_step == (schedule != "plateau")
    lrs = [opt.param_groups[0]["lr"]]  # before the first step, then after each
    for _ in range(40 if per_step else 4):
        opt.step()
        sched.step() if per_step else sched.step(1.0)
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(0.4)  # the configured lr is the peak, and it is reached
    if not per_step:  # plateau, stepped per epoch with a flat val loss: cut by gamma after patience
        assert lrs == pytest.approx([0.4] * 4 + [0.04])
        return
    # warm-up over 10 steps (warmup_epochs=1; onecycle: pct_start 0.25 of 40) rises to the peak,
    # after which the lr never rises again
    warm, after = lrs[:11], lrs[10:]
    assert warm[0] < 0.02 and all(a < b for a, b in zip(warm, warm[1:]))
    assert all(b <= a for a, b in zip(after, after[1:]))
    if schedule in ("onecycle", "cosine"):  # annealed to ~0 without a plateau
        assert all(b < a for a, b in zip(after, after[1:])) and lrs[-1] < 1e-3
    elif schedule == "step":  # x gamma every step_size=1 epoch
        assert after[:10] == pytest.approx([0.4] * 10)
        assert (lrs[20], lrs[30], lrs[40]) == pytest.approx((0.04, 0.004, 0.0004))
    else:
        assert after == pytest.approx([0.4] * 31)


def test_steps_per_epoch():
    assert steps_per_epoch(1000, 2, 64, 1) == math.ceil(500 / 64)
    assert steps_per_epoch(1000, 2, 64, 4) == math.ceil(math.ceil(500 / 64) / 4)
    assert steps_per_epoch(1000, 2, 64, 1, drop_last=True) == 500 // 64  # 7 full batches
    assert steps_per_epoch(50_000, 1, 1024, 1, drop_last=True) == 48 < steps_per_epoch(50_000, 1, 1024, 1)


def test_max_steps_stops_right_after_a_step_with_no_gradients_left():
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, batches(n_batches=6), opt,
                            settings(grad_accum_steps=2, channels_last=False), max_steps=2)
    assert stats.steps == 2 and stats.num_images == 4 * 16
    assert all(p.grad is None for p in model.parameters())


def test_progress_tracks_best_and_early_stopping():
    p = TrainProgress()
    assert p.update(0.5) == {"best_val_top1": 0.5, "epochs_without_improvement": 0}
    assert p.update(0.4) == {"best_val_top1": 0.5, "epochs_without_improvement": 1}
    assert not p.should_stop(2) and not p.should_stop(None)
    p.update(0.5)  # equal is not an improvement
    assert p.stale == 2 and p.should_stop(2)
    assert p.update(0.6)["epochs_without_improvement"] == 0 and p.best == 0.6


def test_worker_inputs_round_trip_through_a_plain_dict(tmp_path):
    cfg = TrainConfig.from_dict({"data": {"train": str(tmp_path)}, "optim": {"epochs": 3}})
    data = DataSummary(class_names=["a", "b"], mean=[0.5] * 3, std=[0.25] * 3, num_train=10,
                       num_val=4, image_shape=(8, 8, 3), bad_inputs=1)
    fault = FaultInjection(marker=str(tmp_path / "m"), rank=0, epoch=2, step=3)
    inputs = WorkerInputs(config=cfg, data=data, run_dir=str(tmp_path), fault=fault)
    raw = inputs.to_dict()
    assert raw["config"] == cfg.to_dict() and raw["data"]["image_shape"] == [8, 8, 3]
    assert WorkerInputs.from_dict(raw) == inputs
    assert fault.applies(0, 2) and not fault.applies(0, 1) and not fault.applies(1, 2)
    assert FaultInjection.from_dict({"marker": "m"}) == FaultInjection("m", rank=1, epoch=2, step=1)
    with pytest.raises(ValueError, match=r"unknown keys \['epochs'\]"):
        FaultInjection.from_dict({"marker": "m", "epochs": 1})
    with pytest.raises(ValueError, match=r"missing keys \['data'\]"):
        WorkerInputs.from_dict({"config": raw["config"]})


def test_epoch_reduction_runs_on_the_training_device():
    """The bug class of NCCL groups (CUDA tensors only), caught on CPU: a reduce function
    that refuses tensors not on the training device ("meta" stands in for "cuda")."""
    seen = []

    def nccl_like(t):
        if t.device.type != "meta":
            raise RuntimeError(f"No backend type associated with device type {t.device.type}")
        seen.append(t.shape)
        return torch.tensor([4.0, 3, 2, 8, 2.0, 1.0, 6, 0, 2], dtype=torch.float64)

    stats = EpochStats(loss_sum=2.0, correct1=3, num_images=4, wall_s=2.0)
    with pytest.raises(RuntimeError, match="device type cpu"):
        stats.reduce(nccl_like)  # the old behaviour: a CPU vector
    out = stats.reduce(nccl_like, torch.device("meta"))
    assert seen == [torch.Size([9])]
    assert (out.num_images, out.correct1, out.wall_s, out.steps) == (8, 3, 1.0, 3)


@pytest.mark.parametrize("log_every,expected_reads", [(0, 1), (2, 4)])
def test_step_loop_reads_device_counts_only_at_check_points(monkeypatch, log_every, expected_reads):
    """No host sync per step: the non-finite count is read every log_every steps and once at
    the end of the epoch (6 steps: log_every 2 -> 3 + 1 reads)."""
    from cnn_ray.train import loop

    reads = []
    original = loop.DeviceCounts.bad_steps
    monkeypatch.setattr(loop.DeviceCounts, "bad_steps", lambda self: reads.append(1) or original(self))
    model = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 3, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, batches(n_batches=6), opt,
                            settings(channels_last=False, log_every=log_every))
    assert stats.steps == 6 and len(reads) == expected_reads


def test_non_finite_steps_stop_within_log_every_steps():
    model = NaNAfter()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.0)
    steps = []
    from cnn_ray.train.loop import StepHooks

    with pytest.raises(NonFiniteLossError, match="in 2 steps"):
        train_one_epoch(model, batches(n_batches=6), opt,
                        settings(max_bad_steps=1, log_every=2, channels_last=False),
                        hooks=StepHooks(after_step=[steps.append]))
    assert steps == [1, 2]  # stopped at the first check point past the limit
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_hooks_soft_targets_and_after_step():
    """A batch transform may return (N, K) class probabilities (MixUp/CutMix); after_step
    runs once per optimiser step."""
    from cnn_ray.train.loop import StepHooks

    calls = []

    def soft(x, y):
        return x, torch.nn.functional.one_hot(y, 4).float() * 0.9 + 0.025

    model = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 3, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, batches(n_batches=4), opt, settings(channels_last=False),
                            hooks=StepHooks(batch_transform=soft, after_step=[calls.append]))
    assert calls == [1, 2, 3, 4] and stats.num_images == 64 and 0 <= stats.correct1 <= 64
