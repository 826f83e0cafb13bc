"""The recipe's switches applied to a model and the step loop (cnn_ray.recipe.apply), the EMA in
checkpoints and the evaluation job's use of EMA weights and TTA. No Ray; tiny seeded models."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_ray.config import TrainConfig
from cnn_ray.evaluate import evaluate_batches
from cnn_ray.models import create_model
from cnn_ray.recipe import first_conv, tta_views
from cnn_ray.recipe.apply import (build_step_hooks, compute_stem_weights, ema_warmup_decay,
                                  eval_model, freeze_whitening_bias, make_model_ema,
                                  prepare_model, tta_predictor)
from cnn_ray.train.checkpoint import (ema_model_state, load_checkpoint, restore_training_state,
                                      save_checkpoint)
from cnn_ray.train.inputs import DataSummary, WorkerInputs
from cnn_ray.train.loop import StepSettings, evaluate, train_one_epoch


# tiny models run fastest on one thread (and leave the other core to the rest of the suite)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(tmp_path, **sections) -> TrainConfig:
    raw = {"data": {"train": str(tmp_path)}, "precision": {"dtype": "fp32"}, **sections}
    return TrainConfig.from_dict(raw)


def _smooth_uint8(n: int = 48, size: int = 16, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 with spatial and channel correlation (far from white)."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(n, 3, size + 2, size + 2, generator=g), 3, stride=1)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]])
    x = torch.einsum("dc,nchw->ndhw", mix, x)
    u8 = (128 + 60 * x).clamp(0, 255).to(torch.uint8)
    return u8.permute(0, 2, 3, 1).contiguous().numpy()


def _batches(images: np.ndarray, labels: np.ndarray, size: int) -> list[dict]:
    return [{"image": torch.from_numpy(images[i:i + size]),
             "label": torch.from_numpy(labels[i:i + size])} for i in range(0, len(images), size)]


# ------------------------------------------------------------------------------ whitening
def test_prepare_model_whitens_the_first_layer_and_freezes_it(tmp_path):
    cfg = _cfg(tmp_path, model={
        "name": "airbench", "width_mult": 0.25,
        "whitening": {"enabled": True, "eps": 1e-9, "bias_epochs": 2},
        "batchnorm": {"momentum": 0.4, "eps": 1e-12, "freeze_scale": True}})
    sample = _smooth_uint8()
    x = torch.from_numpy(sample).permute(0, 3, 1, 2).float() / 255
    mean, std = x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()
    w = compute_stem_weights(cfg, sample, num_classes=10, mean=mean, std=std)
    assert w.shape == (24, 3, 2, 2) and w.dtype == np.float32
    model = prepare_model(create_model("airbench", 10, width_mult=0.25), cfg, w)
    _, conv = first_conv(model)
    assert not conv.weight.requires_grad and conv.bias.requires_grad
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    normed = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = F.conv2d(normed, conv.weight[:12])  # the first layer's output before its bias
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    moment = flat.T @ flat / len(flat)
    assert torch.allclose(moment, torch.eye(12, dtype=torch.float64), atol=2e-3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.4 and m.eps == 1e-12 and not m.weight.requires_grad
                       for m in bns)
    assert not freeze_whitening_bias(model, cfg, 1)  # trains for bias_epochs=2 epochs
    assert freeze_whitening_bias(model, cfg, 2) and not conv.bias.requires_grad
    assert not freeze_whitening_bias(model, cfg, 3)  # once


def test_whitening_structure_loads_a_checkpoint_and_bad_weights_are_named(tmp_path):
    cfg = _cfg(tmp_path, model={"name": "simple_cnn", "whitening": {"enabled": True}})
    model = prepare_model(create_model("simple_cnn", 10), cfg)  # no weights: structure only
    name, conv = first_conv(model)
    assert name + ".bias" in model.state_dict() and not conv.weight.requires_grad
    with pytest.raises(ValueError, match=r"simple_cnn.*\(54, 3, 3, 3\)"):
        compute_stem_weights(cfg, _smooth_uint8(4, 8), num_classes=10, mean=[0.5] * 3,
                             std=[0.25] * 3)  # 3x3 conv with 32 filters < 2*3*9
    plain = _cfg(tmp_path)
    with pytest.raises(ValueError, match="whitening.enabled"):
        prepare_model(create_model("simple_cnn", 10), plain, np.zeros((6, 3, 1, 1), np.float32))
    summary = DataSummary(["a"], [0.5] * 3, [0.2] * 3, 1, 1, (8, 8, 3))
    with pytest.raises(ValueError, match="stem_weights missing"):
        WorkerInputs(config=cfg, data=summary)
    w = np.ones((24, 3, 2, 2), np.float32)
    rebuilt = WorkerInputs.from_dict(WorkerInputs(config=_cfg(tmp_path, model={
        "name": "airbench", "whitening": {"enabled": True}}), data=summary,
        stem_weights=w).to_dict())
    assert np.array_equal(rebuilt.stem_weights, w)


# ------------------------------------------------------------------------------------ ema
def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _train_with_hooks(model, ema, cfg, steps: int):
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    s = StepSettings(device=torch.device("cpu"), precision="fp32", mean=[0.5] * 3,
                     std=[0.25] * 3, channels_last=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4 * steps, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 4 * steps).astype(np.int64)
    snapshots = []
    hooks = build_step_hooks(cfg, model, ema, 3)
    record = lambda step: snapshots.append(  # noqa: E731
        {k: v.clone() for k, v in model.state_dict().items()})
    hooks.after_step = [record, *hooks.after_step]
    train_one_epoch(model, _batches(images, labels, 4), opt, s, hooks=hooks)
    return opt, snapshots


def test_ema_hook_follows_closed_form_and_checkpoint_round_trip(tmp_path):
    cfg = _cfg(tmp_path, optim={"ema": {"enabled": True, "decay": 0.9, "every_steps": 2,
                                        "warmup": True}})
    model = _tiny()
    ema = make_model_ema(model, cfg)
    opt, snaps = _train_with_hooks(model, ema, cfg, steps=6)  # EMA updates after steps 2, 4, 6
    assert int(ema.n_averaged) == 3
    d1, d2 = ema_warmup_decay(0.9, 1), ema_warmup_decay(0.9, 2)
    assert d1 == pytest.approx(2 / 11) and d2 == pytest.approx(3 / 12)
    key = "5.weight"
    expect = (d2 * (d1 * snaps[1][key] + (1 - d1) * snaps[3][key]) + (1 - d2) * snaps[5][key])
    assert torch.allclose(ema.module.state_dict()[key], expect, atol=1e-6)
    assert eval_model(model, ema) is ema.module and eval_model(model, None) is model

    path = save_checkpoint(tmp_path / "ck", model=model, epoch=1, config=cfg.to_dict(),
                           class_names=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3,
                           optimizer=opt, ema=ema)
    assert (path / "ema.pt").exists()
    state = load_checkpoint(path)  # weights_only=True throughout
    averaged = ema_model_state(state)
    assert list(averaged) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(state.model_state[k], v)  # model.pt: the raw weights
    assert not torch.equal(averaged[key], model.state_dict()[key])

    resumed = _tiny()
    with torch.no_grad():
        resumed[5].weight.zero_()
    ema2 = make_model_ema(resumed, cfg)
    restore_training_state(state, model=resumed, ema=ema2)
    assert int(ema2.n_averaged) == 3 and ema2.ema_decay == pytest.approx(0.9)
    for k, v in ema.module.state_dict().items():
        assert torch.equal(ema2.module.state_dict()[k], v), k
    assert torch.equal(resumed[5].weight, model[5].weight)


def test_ema_switched_on_at_resume_starts_from_the_restored_weights(tmp_path):
    cfg = _cfg(tmp_path, optim={"ema": {"enabled": True}})
    model = _tiny()
    path = save_checkpoint(tmp_path / "ck", model=model, epoch=1, config={}, class_names=["a"],
                           mean=[0.5] * 3, std=[0.25] * 3)
    state = load_checkpoint(path)
    assert state.ema_state is None and ema_model_state(state) is None
    fresh = nn.Sequential(*_tiny())
    with torch.no_grad():
        fresh[0].weight.add_(1.0)
    ema = make_model_ema(fresh, cfg)
    restore_training_state(state, model=fresh, ema=ema)
    assert torch.equal(ema.module[0].weight, model[0].weight)


# ------------------------------------------------------------------------------------ tta
class _FlipInvariant(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)

    def forward(self, x):
        g = lambda z: self.conv(z).amax(dim=(2, 3))  # noqa: E731
        return g(x) + g(x.flip(-1))


def test_tta_of_flip_invariant_model_equals_no_tta_through_evaluate():
    torch.manual_seed(0)
    model = _FlipInvariant()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 10, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 12).astype(np.int64)
    s = StepSettings(device=torch.device("cpu"), precision="fp32", mean=[0.5] * 3,
                     std=[0.25] * 3, channels_last=False)
    assert tta_predictor("none") is None
    plain = evaluate(model, _batches(images, labels, 4), s)
    flip = evaluate(model, _batches(images, labels, 4), s, predict=tta_predictor("flip"))
    assert plain.num_images == flip.num_images == 12 and plain.correct1 == flip.correct1
    assert flip.loss_sum == pytest.approx(plain.loss_sum, rel=1e-5)
    shifted = evaluate(model, _batches(images, labels, 4), s,
                       predict=tta_predictor("flip_translate"))
    assert shifted.loss_sum != pytest.approx(plain.loss_sum, rel=1e-5)  # translation is not
    with pytest.raises(ValueError, match="tta mode"):
        tta_predictor("ten_crop")


def test_evaluate_job_uses_ema_weights_and_tta(tmp_path):
    cfg = _cfg(tmp_path, model={"name": "simple_cnn"}, optim={"ema": {"enabled": True}},
               eval={"tta": "flip"})
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3)
    ema = make_model_ema(model, cfg)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.zero_()  # constant logits: every image predicted as class 0
        ema.n_averaged.fill_(1)  # as after its first update
    ck = save_checkpoint(tmp_path / "ck", model=model, epoch=1, config=cfg.to_dict(),
                         class_names=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3, ema=ema)
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randint(0, 255, (8, 32, 32, 3), dtype=torch.uint8, generator=g),
                "label": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}]
    averaged = evaluate_batches(ck, batches)
    assert averaged.weights == "ema" and averaged.tta_views == tta_views("flip") == 2
    assert averaged.confusion[:, 1:].sum() == 0 and averaged.top1 == pytest.approx(3 / 8)
    raw = evaluate_batches(ck, batches, use_ema=False, tta="none")
    assert raw.weights == "raw" and raw.tta_views == 1


# -------------------------------------------------------------------------------- compile
def test_compile_keeps_state_dict_keys_and_ema_copy_runs_its_own_weights(tmp_path, monkeypatch):
    # The eager backend checks the wiring without a minutes-long inductor build on 1 core.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = _cfg(tmp_path, model={"name": "simple_cnn", "compile": True},
               optim={"ema": {"enabled": True}})
    torch.manual_seed(0)
    plain = create_model("simple_cnn", num_classes=3)
    compiled = prepare_model(create_model("simple_cnn", num_classes=3), cfg)
    assert type(compiled) is type(plain)  # compiled in place: no wrapper, no _orig_mod.
    assert list(compiled.state_dict()) == list(plain.state_dict())
    ema = make_model_ema(compiled, cfg)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.zero_()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert torch.equal(ema.module(x), torch.zeros(2, 3))
    assert compiled(x).abs().sum() > 0


def test_lookahead_ema_starts_late_ramps_and_copies_back():
    """airbench's Lookahead: no update before start_epoch, decay * (step/total)**power, and the
    average copied back into the trained weights after each update."""
    import torch
    from torch import nn

    from cnn_ray.config_recipe import EMA
    from cnn_ray.recipe.apply import EmaUpdate
    from cnn_ray.recipe.ema import make_ema

    model = nn.Linear(2, 1, bias=False)
    ema = make_ema(model, decay=0.5)
    upd = EmaUpdate(ema, model, EMA(enabled=True, decay=0.5, every_steps=1, power=1.0,
                                    start_epoch=1, lookahead=True, warmup=False),
                    steps_per_epoch=2, total_steps=4)
    with torch.no_grad():
        model.weight.fill_(1.0)
    upd(1)  # step 1 < first update step 2: nothing
    assert int(ema.n_averaged) == 0
    upd(2)  # first update copies the weights
    assert int(ema.n_averaged) == 1 and torch.equal(ema.module.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(3.0)
    upd(3)  # decay 0.5 * (3/4) = 0.375: 0.375 * 1 + 0.625 * 3 = 2.25, copied back
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 2.25))
    assert torch.allclose(model.weight, torch.full((1, 2), 2.25))


def test_eval_model_is_the_raw_model_until_the_first_ema_update():
    from torch import nn

    from cnn_ray.recipe.apply import eval_model
    from cnn_ray.recipe.ema import make_ema

    model = nn.Linear(2, 1)
    ema = make_ema(model, decay=0.5)
    assert eval_model(model, ema) is model and eval_model(model, None) is model
    ema.update_parameters(model)
    assert eval_model(model, ema) is ema.module


def test_evaluate_job_uses_raw_weights_when_the_ema_never_updated(tmp_path):
    """A checkpoint saved before optim.ema.start_epoch holds an untouched average."""
    import torch

    from cnn_ray.models import create_model
    from cnn_ray.recipe.apply import make_model_ema
    from cnn_ray.train.checkpoint import ema_model_state, load_checkpoint, save_checkpoint

    cfg = _cfg(tmp_path, model={"name": "simple_cnn"}, optim={"ema": {"enabled": True}})
    model = create_model("simple_cnn", num_classes=3)
    ema = make_model_ema(model, cfg)
    ck = save_checkpoint(tmp_path / "ck", model=model, epoch=1, config=cfg.to_dict(),
                         class_names=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3, ema=ema)
    assert ema_model_state(load_checkpoint(ck)) is None
    ema.update_parameters(model)
    ck2 = save_checkpoint(tmp_path / "ck2", model=model, epoch=1, config=cfg.to_dict(),
                          class_names=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3, ema=ema)
    state = ema_model_state(load_checkpoint(ck2))
    raw = model.state_dict()
    assert state is not None and state.keys() == raw.keys()
    assert all(torch.equal(state[k], raw[k]) for k in raw if raw[k].is_floating_point())


def test_compile_speedup_times_eager_and_compiled_steps(tmp_path):
    """jobs/benchmark.py --only compile: both steps timed in one process, the compile time and
    the steps that repay it (backend "eager" here: the same path without a C++ compiler)."""
    from cnn_ray.benchmark import compile_speedup

    cfg = _cfg(tmp_path, model={"name": "simple_cnn"}, optim={"batch_size": 8})
    res = compile_speedup(cfg, 3, steps=1, rounds=2, backend="eager")
    assert res["batch"] == 8 and res["compile_s"] >= 0
    assert res["eager_images_per_sec"] > 0 and res["compiled_images_per_sec"] > 0
    assert res["speedup"] == pytest.approx(
        res["compiled_images_per_sec"] / res["eager_images_per_sec"], rel=0.01)
    gain = 8 / res["eager_images_per_sec"] - 8 / res["compiled_images_per_sec"]
    if gain > 0:
        assert res["break_even_steps"] >= 1
    else:
        assert res["break_even_steps"] is None
