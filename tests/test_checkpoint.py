"""Checkpoints: round trip of model/optimizer/scheduler/scaler, atomic writes, safe loading."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from cnn_ray.config import OptimConfig
from cnn_ray.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from cnn_ray.train.optim import build_lr_scheduler
from cnn_ray.train.optim import build_optimizer, schedule_total_steps, stretch_schedule


def _trained(schedule="onecycle"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    cfg = OptimConfig(lr=0.1, schedule=schedule, epochs=3, warmup_epochs=1)
    opt = build_optimizer(model, cfg)
    sched, _ = build_lr_scheduler(opt, cfg, 5)
    for _ in range(4):
        loss = model(torch.randn(2, 3, 8, 8)).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return model, opt, sched, cfg


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step"])
def test_round_trip_restores_everything(tmp_path, schedule):
    model, opt, sched, cfg = _trained(schedule)
    path = save_checkpoint(tmp_path / "ck", model=model, epoch=2, config={"a": 1},
                           class_names=["x", "y", "z"], mean=[0.5] * 3, std=[0.2] * 3,
                           optimizer=opt, scheduler=sched, best=0.7, metrics={"val_top1": 0.7})
    state = load_checkpoint(path)
    assert state.epoch == 2 and state.best == 0.7
    assert state.meta["class_names"] == ["x", "y", "z"] and state.meta["config"] == {"a": 1}

    model2, opt2, sched2, _ = _trained(schedule)
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    opt2 = build_optimizer(model2, cfg)
    sched2, _ = build_lr_scheduler(opt2, cfg, 5)
    restore_training_state(state, model=model2, optimizer=opt2, scheduler=sched2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    m1 = opt.state_dict()["state"][0]["momentum_buffer"]
    m2 = opt2.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(m1, m2)
    # continuing gives identical next steps
    x = torch.randn(2, 3, 8, 8)
    for m, o, s in [(model, opt, sched), (model2, opt2, sched2)]:
        m(x).sum().backward()
        o.step()
        s.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.allclose(a, b)


def test_resume_with_a_larger_budget_stretches_the_one_cycle(tmp_path):
    """A checkpoint of a 2-epoch one-cycle run resumed with optim.epochs=4 keeps its step count
    but decays over the new budget (without the refit the extra epochs run at the final LR)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    short = OptimConfig(lr=0.1, schedule="onecycle", epochs=2)
    opt = build_optimizer(model, short)
    sched, _ = build_lr_scheduler(opt, short, 10)
    for _ in range(20):  # the whole 2-epoch budget
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] < 1e-4  # at the end of the cycle
    path = save_checkpoint(tmp_path / "ck", model=model, epoch=2, config={}, class_names=["a", "b"],
                           mean=[0.5], std=[0.2], optimizer=opt, scheduler=sched)
    longer = OptimConfig(lr=0.1, schedule="onecycle", epochs=4)
    opt2 = build_optimizer(model, longer)
    sched2, _ = build_lr_scheduler(opt2, longer, 10)
    planned = schedule_total_steps(sched2)
    restore_training_state(load_checkpoint(path), model=model, optimizer=opt2, scheduler=sched2)
    assert schedule_total_steps(sched2) == 20  # the checkpoint's budget came back
    assert stretch_schedule(sched2, planned) == 20 and schedule_total_steps(sched2) == 40
    assert sched2.last_epoch == 20  # the step count is kept
    assert 0.02 < opt2.param_groups[0]["lr"] < 0.1  # half-way through the new decay, not ~0
    assert stretch_schedule(sched2, planned) is None  # already fitted: no change


def test_grad_scaler_state_round_trip(tmp_path):
    model, opt, sched, _ = _trained()
    scaler = torch.amp.GradScaler("cuda")
    if not scaler.is_enabled():  # no CUDA here: save a state dict shaped like a real one
        class FakeScaler:
            def state_dict(self):
                return {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                        "growth_interval": 2000, "_growth_tracker": 7}
        scaler = FakeScaler()
    path = save_checkpoint(tmp_path / "ck", model=model, epoch=1, config={}, class_names=["a"],
                           mean=[0.0], std=[1.0], optimizer=opt, scheduler=sched, scaler=scaler)
    state = load_checkpoint(path)
    assert state.scaler_state["scale"] == scaler.state_dict()["scale"]
    assert state.scaler_state["_growth_tracker"] == scaler.state_dict()["_growth_tracker"]


def test_existing_checkpoint_is_never_overwritten(tmp_path):
    model, *_ = _trained()
    save_checkpoint(tmp_path / "ck", model=model, epoch=1, config={}, class_names=["a"], mean=[0], std=[1])
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "ck", model=model, epoch=2, config={}, class_names=["a"], mean=[0], std=[1])
    assert load_checkpoint(tmp_path / "ck").epoch == 1


def test_failed_save_leaves_no_partial_directory(tmp_path, monkeypatch):
    model, *_ = _trained()
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed during save")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck2", model=model, epoch=3, config={}, class_names=["a"], mean=[0], std=[1])
    assert not (tmp_path / "ck2").exists()
    assert [p for p in os.listdir(tmp_path)] == []


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cnn_ray_pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    model, *_ = _trained()
    path = save_checkpoint(tmp_path / "ck", model=model, epoch=1, config={}, class_names=["a"], mean=[0], std=[1])
    with open(path / "model.pt", "wb") as f:
        pickle.dump({"weight": _Evil()}, f)
    if os.path.exists("/tmp/cnn_ray_pwned"):
        os.remove("/tmp/cnn_ray_pwned")
    with pytest.raises(CheckpointError, match="model.pt: refused to load"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/cnn_ray_pwned")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no meta.json"):
        load_checkpoint(tmp_path)


def test_an_optimizer_state_of_other_groups_is_a_named_checkpoint_error(tmp_path):
    """A run saved with SGD resumed with Muon (its conv filters in a group of their own): a
    CheckpointError giving both layouts and the settings to restore, not torch's bare error."""
    model, opt, sched, cfg = _trained("cosine")
    path = save_checkpoint(tmp_path / "ck", model=model, epoch=1, config={}, class_names=["a"],
                           mean=[0.5], std=[0.2], optimizer=opt, scheduler=sched)
    muon = build_optimizer(model, cfg.model_copy(update={"optimizer": "muon"}))
    with pytest.raises(CheckpointError, match=r"optim.optimizer") as info:
        restore_training_state(load_checkpoint(path), model=model, optimizer=muon)
    assert "another run.name" in str(info.value)
    assert str([len(g["params"]) for g in opt.param_groups]) in str(info.value)


def test_resolve_checkpoint_takes_a_checkpoint_or_its_run_directory(tmp_path):
    """``--checkpoint`` of predict/export: a checkpoint as given; a run dir -> its newest complete
    checkpoint (Ray Train's ``checkpoint_manager_snapshot.json`` and a half-written folder
    beside them are not checkpoints); anything else is a CheckpointError naming the path."""
    model, *_ = _trained()
    run = tmp_path / "run"
    for stamp in ("2026-12-04_10-00-00.000001", "2026-12-04_11-00-00.000001"):
        save_checkpoint(run / f"checkpoint_{stamp}", model=model, epoch=1, config={},
                        class_names=["a"], mean=[0], std=[1])
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    (run / "checkpoint_2026-12-04_12-00-00.000001").mkdir()          # no meta.json yet
    newest = run / "checkpoint_2026-12-04_11-00-00.000001"
    assert resolve_checkpoint(run) == newest
    assert resolve_checkpoint(newest) == newest
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no checkpoint_\\*/meta.json below it"):
        resolve_checkpoint(tmp_path)


def test_predict_and_export_name_a_bad_checkpoint_flag(tmp_path, capsys):
    from cnn_ray.cli import main

    assert main(["export", "--checkpoint", str(tmp_path), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnn-ray export: --checkpoint: ") and str(tmp_path) in err
    assert "Traceback" not in err
