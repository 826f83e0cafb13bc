"""Fine-tuning (issue 15, item 1): ``model.pretrained``, ``model.freeze`` /
``model.unfreeze_epoch``, ``optim.backbone_lr_mult``, and resume over pretrained weights.
Small seeded models on random 16x16 images; no Ray."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.config_io import merge_dotted
from cnn_ray.models import classifier_head, create_model, list_models
from cnn_ray.recipe.apply import build_step_hooks
from cnn_ray.train.checkpoint import load_checkpoint, save_checkpoint
from cnn_ray.train.finetune import (check_finetune, keep_pretrained_normalization,
                                    record_pretrained)
from cnn_ray.train.inputs import DataSummary
from cnn_ray.train.local import train_arrays
from cnn_ray.train.loop import train_one_epoch
from cnn_ray.train.parts import begin_epoch, build_parts, restore_parts

CPU = torch.device("cpu")
BASE = {"data": {"train": "unused", "image_size": 16},
        "model": {"name": "resnet9", "width_mult": 0.25, "channels_last": False},
        "optim": {"schedule": "constant", "epochs": 3, "batch_size": 8, "lr": 0.05,
                  "weight_decay": 5e-4},
        "precision": {"dtype": "fp32"}, "scaling": {"torch_threads": 1}}


def _cfg(**dotted) -> TrainConfig:
    return TrainConfig.from_dict(merge_dotted(BASE, dotted), check_paths=False)


def _summary(classes: int, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)) -> DataSummary:
    return DataSummary(class_names=[f"c{i}" for i in range(classes)], mean=list(mean),
                       std=list(std), num_train=32, num_val=8, image_shape=(16, 16, 3))


def _batches(classes: int, n: int = 4, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8, generator=g),
             "label": torch.randint(0, classes, (8,), generator=g)} for _ in range(n)]


def _train(parts, classes: int, seed: int = 0, hooks=None) -> None:
    train_one_epoch(parts.model, _batches(classes, seed=seed), parts.optimizer, parts.settings,
                    scheduler=parts.scheduler, scheduler_per_step=parts.per_step, hooks=hooks)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _pretrained_checkpoint(tmp_path, classes: int = 5, *, ema: bool = False):
    """A cnn_ray checkpoint of a 5-class resnet9 trained a few steps; returns (dir, parts)."""
    cfg = _cfg(**{"optim.ema.enabled": ema, "optim.ema.every_steps": 1})
    parts = build_parts(cfg, _summary(classes), 0, 1, device=CPU)
    _train(parts, classes, hooks=build_step_hooks(cfg, parts.model, parts.ema, classes))
    path = save_checkpoint(tmp_path / "pretrained", model=parts.model, epoch=1,
                           config=cfg.to_dict(), class_names=[f"p{i}" for i in range(classes)],
                           mean=[0.1, 0.2, 0.3], std=[0.9, 0.8, 0.7], ema=parts.ema)
    return path, parts


# ------------------------------------------------------------------------------ head
@pytest.mark.parametrize("name", list_models())
def test_classifier_head_holds_every_class_dependent_parameter(name):
    """For every registered model the head helper finds a Linear with ``num_classes``
    outputs, and the head's are the only parameters whose shape changes with the class count."""
    torch.manual_seed(0)
    a, b = create_model(name, num_classes=10), create_model(name, num_classes=7)
    head_name, head = classifier_head(b)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 7
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    differ = {k for k in sa if sa[k].shape != sb[k].shape}
    assert differ and all(k.startswith(head_name + ".") for k in differ)


# ------------------------------------------------------------------------------ pretrained
def test_checkpoint_pretrained_replaces_head_keeps_normalization_and_reports(tmp_path):
    """A 5-class checkpoint (with an EMA) into a 3-class run: every tensor but the head weight
    comes from the checkpoint's EMA weights; its mean/std replace the data's; the report
    lists loaded / new / skipped and is written to pretrained.json and events.jsonl."""
    path, src = _pretrained_checkpoint(tmp_path, ema=True)
    ema_state = src.ema.module.state_dict()
    assert not torch.equal(ema_state["0.0.weight"], src.model.state_dict()["0.0.weight"])
    cfg = _cfg(**{"model.pretrained": str(path)})
    summary = keep_pretrained_normalization(cfg, _summary(3))
    assert (summary.mean, summary.std) == ([0.1, 0.2, 0.3], [0.9, 0.8, 0.7])

    parts = build_parts(cfg, summary, 0, 1, device=CPU)
    report = parts.finetune.report
    head = classifier_head(parts.model)[0]
    assert (report.kind, report.weights) == ("checkpoint", "ema")
    assert report.skipped == [f"{head}.weight"] and report.new == [] and report.unused == []
    own = parts.model.state_dict()
    assert set(report.loaded) == set(own) - {f"{head}.weight"}
    for key in report.loaded:
        assert torch.equal(own[key], ema_state[key]), key
    assert own[f"{head}.weight"].shape[0] == 3
    assert parts.settings.mean == [0.1, 0.2, 0.3]

    lines = []
    record_pretrained(report, str(tmp_path / "run"), lines.append)
    assert "1 skipped for shape mismatch" in lines[0] and "ema weights" in lines[0]
    saved = json.loads((tmp_path / "run" / "pretrained.json").read_text())
    assert saved["skipped"] == [f"{head}.weight"] and saved["applied"] is True
    event = json.loads((tmp_path / "run" / "events.jsonl").read_text().splitlines()[-1])
    assert event["event"] == "pretrained" and len(event["loaded"]) == len(report.loaded)


def test_state_dict_file_without_head_reports_new_keys_and_keeps_data_normalization(tmp_path):
    """A plain state dict (DDP-prefixed, head left out): the head keys are reported new; the
    data's own mean/std stay (a file carries none)."""
    src = create_model("resnet9", num_classes=10, width_mult=0.25)
    head = classifier_head(src)[0]
    state = {f"module.{k}": v for k, v in src.state_dict().items() if not k.startswith(head)}
    torch.save(state, tmp_path / "w.pt")
    cfg = _cfg(**{"model.pretrained": str(tmp_path / "w.pt")})
    summary = _summary(4)
    assert keep_pretrained_normalization(cfg, summary) is summary
    parts = build_parts(cfg, summary, 0, 1, device=CPU)
    r = parts.finetune.report
    assert (r.kind, r.new, r.skipped) == ("state_dict", [f"{head}.weight"], [])
    assert "new data's" in r.normalization
    assert torch.equal(parts.model.state_dict()["0.0.weight"], src.state_dict()["0.0.weight"])


def test_bad_fine_tuning_inputs_are_named(tmp_path):
    missing = tmp_path / "nope.pt"
    raw = merge_dotted(BASE, {"data.train": str(tmp_path), "model.pretrained": str(missing)})
    with pytest.raises(ConfigError, match=r"model\.pretrained.*nope\.pt"):
        TrainConfig.from_dict(raw)
    # shapes differ outside the head: the file and the key are named
    torch.save(create_model("resnet9", 10, width_mult=0.5).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match=r"model\.pretrained.*wide\.pt.*0\.0\.weight"):
        check_finetune(_cfg(**{"model.pretrained": str(tmp_path / "wide.pt")}), _summary(10))
    # a pickle weights_only refuses
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": object()}, protocol=2))
    with pytest.raises(ConfigError, match=r"model\.pretrained.*evil\.pt.*weights_only"):
        check_finetune(_cfg(**{"model.pretrained": str(tmp_path / "evil.pt")}), _summary(10))
    # an unknown freeze prefix; "1" must not match "10"-like names by string prefix alone
    with pytest.raises(ConfigError, match=r"model\.freeze.*\['99'\].*resnet9"):
        check_finetune(_cfg(**{"model.freeze": ["0", "99"]}), _summary(10))
    for dotted, key in [({"model.unfreeze_epoch": 2}, "model.unfreeze_epoch"),
                        ({"model.freeze": []}, "model.freeze"),
                        ({"model.freeze": "head"}, "model.freeze"),
                        ({"optim.backbone_lr_mult": 0.0}, "optim.backbone_lr_mult"),
                        ({"optim.backbone_lr_mult": 1.5}, "optim.backbone_lr_mult"),
                        ({"model.freeze": "backbone", "model.unfreeze_epoch": 1},
                         "model.unfreeze_epoch"),
                        ({"model.pretrained": "s3://bucket/w.pt"}, "model.pretrained")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            _cfg(**dotted)
    # a checkpoint of other channels cannot lend its normalisation
    path, _ = _pretrained_checkpoint(tmp_path)
    grey = DataSummary(["a", "b"], [0.5], [0.2], 8, 2, (16, 16, 1))
    with pytest.raises(ConfigError, match=r"model\.pretrained.*3-channel.*1 channels"):
        keep_pretrained_normalization(_cfg(**{"model.pretrained": str(path)}), grey)


# ------------------------------------------------------------------------------ freeze
@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "muon"])
def test_freeze_backbone_then_unfreeze_at_the_stated_epoch(optimizer):
    """``model.freeze=backbone, unfreeze_epoch=2``: in epoch 1 only the head moves (and
    requires_grad is never touched); from epoch 2 the backbone moves too. BatchNorm running
    stats of the frozen backbone still update (train mode), as documented."""
    cfg = _cfg(**{"model.freeze": "backbone", "model.unfreeze_epoch": 2,
                  "optim.optimizer": optimizer})
    torch.manual_seed(0)
    parts = build_parts(cfg, _summary(4), 0, 1, device=CPU)
    head = classifier_head(parts.model)[0]
    requires = {k: p.requires_grad for k, p in parts.model.named_parameters()}
    bn_mean = parts.model.state_dict()["0.1.running_mean"].clone()
    logs = []

    begin_epoch(parts, cfg, 0, 1, logs.append)
    before = _snapshot(parts.model)
    _train(parts, 4, seed=1)
    after = _snapshot(parts.model)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(head + ".") for k in moved)
    assert not torch.equal(bn_mean, parts.model.state_dict()["0.1.running_mean"])
    assert "frozen until epoch 2" in logs[0]

    begin_epoch(parts, cfg, 1, 1, logs.append)
    _train(parts, 4, seed=2)
    final = _snapshot(parts.model)
    trainable = {k for k, p in parts.model.named_parameters() if p.requires_grad}
    assert {k for k in after if not torch.equal(after[k], final[k])} == trainable
    assert "everything trains from epoch 2" in logs[-1]
    assert {k: p.requires_grad for k, p in parts.model.named_parameters()} == requires


def test_freeze_prefixes_without_unfreeze_keep_them_still_all_run():
    cfg = _cfg(**{"model.freeze": [0, "1"]})  # YAML reads model.freeze=[0, 1] as ints
    assert cfg.model.freeze == ["0", "1"]
    parts = build_parts(cfg, _summary(4), 0, 1, device=CPU)
    for epoch in range(3):
        begin_epoch(parts, cfg, epoch, 1, lambda msg: None)
        before = _snapshot(parts.model)
        _train(parts, 4, seed=epoch)
        after = _snapshot(parts.model)
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        assert moved and not any(k.split(".")[0] in ("0", "1") for k in moved)
    assert set(parts.finetune.roles.frozen_names) == {
        k for k, _ in parts.model.named_parameters() if k.split(".")[0] in ("0", "1")}


def test_backbone_lr_mult_sets_the_group_lrs_and_ordinary_runs_keep_their_groups():
    cfg = _cfg(**{"optim.backbone_lr_mult": 0.1, "model.batchnorm.bias_lr_mult": 4.0,
                  "optim.schedule": "onecycle"})
    parts = build_parts(cfg, _summary(4), 0, 1, device=CPU)
    lrs = {g["name"]: g["lr"] for g in parts.optimizer.param_groups}
    base = lrs["decay"]  # the head's weight: group 0, the logged lr
    assert parts.optimizer.param_groups[0]["name"] == "decay"
    assert lrs["decay.backbone"] == pytest.approx(0.1 * base)
    assert lrs["bn_bias.backbone"] == pytest.approx(0.4 * base)
    head_ids = {id(p) for p in classifier_head(parts.model)[1].parameters()}
    assert {id(p) for p in parts.optimizer.param_groups[0]["params"]} == head_ids
    _train(parts, 4)  # the schedule keeps the ratios
    lrs = {g["name"]: g["lr"] for g in parts.optimizer.param_groups}
    assert lrs["decay.backbone"] == pytest.approx(0.1 * lrs["decay"])
    assert parts.finetune.gate is None

    plain = build_parts(_cfg(), _summary(4), 0, 1, device=CPU)  # no fine-tuning key
    assert len(plain.optimizer.param_groups) == 2  # decay / no_decay, as before
    assert not any("frozen" in g or "name" in g for g in plain.optimizer.param_groups)


# ------------------------------------------------------------------------------ resume
def test_resume_of_a_fine_tuning_run_keeps_its_own_weights(tmp_path):
    """The pretrained weights are loaded at build; restoring the run's own checkpoint (the
    function the Ray worker's ``restore`` calls) overwrites them, and the report says the
    pretrained weights were not applied (no pretrained.json on a resume)."""
    src = create_model("resnet9", num_classes=10, width_mult=0.25)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    cfg = _cfg(**{"model.pretrained": str(tmp_path / "w.pt"), "model.freeze": "backbone",
                  "model.unfreeze_epoch": 2})
    first = build_parts(cfg, _summary(4), 0, 1, device=CPU)
    for epoch in range(2):
        begin_epoch(first, cfg, epoch, 1, lambda msg: None)
        _train(first, 4, seed=epoch)
    own = {k: v.clone() for k, v in first.model.state_dict().items()}
    assert not torch.equal(own["0.0.weight"], src.state_dict()["0.0.weight"])
    ckpt = save_checkpoint(tmp_path / "ckpt", model=first.model, epoch=2, config=cfg.to_dict(),
                           class_names=list("abcd"), mean=[0.5] * 3, std=[0.25] * 3,
                           optimizer=first.optimizer, scheduler=first.scheduler)

    again = build_parts(cfg, _summary(4), 0, 1, device=CPU)
    assert torch.equal(again.model.state_dict()["0.0.weight"], src.state_dict()["0.0.weight"])
    progress = restore_parts(again, cfg, load_checkpoint(ckpt), lambda msg: None)
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, own[k]), k
    assert [g["name"] for g in again.optimizer.param_groups] == \
        [g["name"] for g in first.optimizer.param_groups]

    lines = []
    report = record_pretrained(again.finetune.report, str(tmp_path / "run"), lines.append,
                               resumed_from_epoch=progress.start_epoch)
    assert not report.applied and "resumed from checkpoint at epoch 2, pretrained not applied" \
        in lines[0]
    assert not (tmp_path / "run" / "pretrained.json").exists()
    event = json.loads((tmp_path / "run" / "events.jsonl").read_text())
    assert (event["applied"], event["resumed_from_epoch"]) == (False, 2)


# ------------------------------------------------------------------------------ local trainer
def test_ray_free_trainer_fine_tunes_from_a_checkpoint(tmp_path):
    """``train_arrays`` (benchmarks/gpu_check.py's trainer) goes through the same build: the
    checkpoint's weights and normalisation, the head first, then everything."""
    path, _ = _pretrained_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8), np.arange(32) % 3)
    val = (rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), np.arange(8) % 3)
    cfg = _cfg(**{"model.pretrained": str(path), "model.freeze": "backbone",
                  "model.unfreeze_epoch": 2, "optim.epochs": 2, "run.progress_every_s": 0})
    logs = []
    out = train_arrays(cfg, train, val, device=CPU, log=logs.append)
    assert len(out["val_top1_by_epoch"]) == 2
    text = "\n".join(logs)
    assert "model.pretrained checkpoint" in text and "checkpoint's mean/std" in text
    assert "frozen until epoch 2" in text and "everything trains from epoch 2" in text
