"""The photo recipes (jobs/configs/flowers.yaml from scratch, flowers_finetune.yaml from ImageNet
weights) and the photo modes of benchmarks/ablate.py and benchmarks/time_to_accuracy.py
(issue 26, items 1 and 4): the recipes validate with their techniques on, each photo ablation
variant removes its technique, the plain photo recipe and the plain-best target, and end-to-end
smoke runs on a seeded subset of the real Oxford Flowers-102 photos (``slow``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import yaml

from cnn_ray.config_io import load_train_config

REPO = Path(__file__).resolve().parents[1]
FLOWERS = REPO / "jobs" / "configs" / "flowers.yaml"
FINETUNE = REPO / "jobs" / "configs" / "flowers_finetune.yaml"


# ------------------------------------------------------------------------------ recipes
def test_scratch_recipe_validates_with_its_techniques_on():
    cfg = load_train_config(FLOWERS, check_paths=False)
    assert (cfg.model.name, cfg.model.small_input, cfg.model.blurpool) == ("resnet18", False, True)
    assert cfg.model.channels_last and cfg.precision.dtype == "auto" and cfg.model.pretrained is None
    assert (cfg.data.store_size, cfg.data.image_size, cfg.data.cache) == (160, 128, "memory")
    crops = [cfg.data.crop_size_at(e, cfg.optim.epochs) for e in range(cfg.optim.epochs)]
    assert crops[0] == 96 and crops[-1] == 128 and crops == sorted(crops)  # progressive
    assert cfg.eval_sizes() == (160, 160) and cfg.eval.tta == "flip"  # FixRes, flip TTA
    o = cfg.optim
    assert (o.optimizer, o.nesterov, o.schedule, o.label_smoothing) == \
        ("sgd", True, "linear_decay", 0.1)
    assert o.final_lr_frac == 0.0 and o.initial_lr_frac < 0.01  # a ramp up, then down to 0
    assert o.ema.enabled and not o.decay_norm_and_bias
    assert cfg.augment.random_resized_crop.enabled and not cfg.augment.random_crop.enabled
    assert 8 <= o.epochs <= 12  # fits ~15-20 min on the 2-core CPU (the header's arithmetic)


def test_finetune_recipe_validates_and_differs_where_fine_tuning_needs_it():
    scratch = load_train_config(FLOWERS, check_paths=False)
    ft = load_train_config(FINETUNE, check_paths=False)
    assert ft.model.name == "resnet18" and ft.model.pretrained == "imagenet"
    assert ft.model.normalization == "auto" and ft.model.small_input is False
    assert (ft.model.freeze, ft.model.unfreeze_epoch) == ("backbone", 2)
    assert ft.optim.backbone_lr_mult < 1 and ft.optim.lr < scratch.optim.lr
    assert ft.optim.epochs < scratch.optim.epochs and not ft.model.blurpool
    assert ft.eval_sizes() == (160, 160)
    header = FINETUNE.read_text().split("\ndata:")[0]
    assert "$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth" in header


# ------------------------------------------------------------------------------ ablation
def test_every_photo_variant_removes_its_technique(ablate):
    assert ablate.detect_recipe(FLOWERS) == "photo"
    assert ablate.detect_recipe(ablate.DEFAULT_CONFIG) == "cifar"
    cfgs = {name: ablate.variant_config(FLOWERS, ov, seed=1, epochs=3)
            for name, ov in ablate.variant_overrides(recipe="photo")}
    assert list(cfgs) == list(ablate.PHOTO_VARIANTS)
    assert all(c.eval.tta_epochs == "all" and c.run.seed == 1 and c.optim.epochs == 3
               for c in cfgs.values())
    full = cfgs["full"]
    assert full.data.progressive.enabled and not cfgs["no_progressive"].data.progressive.enabled
    assert full.eval_sizes() == (160, 160) and cfgs["no_fixres"].eval_sizes() == (146, 128)
    assert full.optim.label_smoothing == 0.1 and cfgs["no_label_smoothing"].optim.label_smoothing == 0
    assert full.optim.ema.enabled and not cfgs["no_ema"].optim.ema.enabled
    assert full.eval.tta == "flip" and cfgs["no_tta"].eval.tta == "none"
    assert full.model.blurpool and not cfgs["no_blurpool"].model.blurpool
    for name, cfg in cfgs.items():  # each variant differs from the recipe in its own keys only
        assert name == "full" or cfg != full
    with pytest.raises(ValueError, match="unknown photo variant"):
        ablate.variant_overrides(["no_whitening"], recipe="photo")
    args = argparse.Namespace(recipe=None, config=str(FLOWERS), thresholds=None)
    ablate.resolve_recipe(args)
    assert (args.recipe, args.thresholds) == ("photo", [0.5, 0.6, 0.7])
    args = argparse.Namespace(recipe="photo", config=None, thresholds=[0.4])
    ablate.resolve_recipe(args)
    assert args.config == str(ablate.PHOTO_CONFIG) and args.thresholds == [0.4]


def test_table_has_a_wall_column_when_the_rows_have_wall_times(ablate):
    runs = [{"val_top1_by_epoch": [0.4, 0.6], "val_top1": 0.6, "train_s": 100.0,
             "wall_s": 130.0, "tta_views": 2, "precision": "fp32"}]
    row = ablate.summarise("full", [], runs, [0.5])
    assert row["wall_s"] == 130.0
    table = ablate.markdown_table([row], [0.5]).splitlines()
    assert table[0].endswith("| train s | wall s |")
    assert table[2].split("|")[3:7] == [" 60.00% ", " 2 ", " 100 ", " 130 "]


def test_photo_ablation_without_the_photos_exits_2(ablate, tmp_path, capsys):
    rc = ablate.main(["--recipe", "photo", "--only", "full", "--set",
                      f"data.train={tmp_path / 'none'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.train: not an image folder" in err and "Traceback" not in err


def _tiny_photo_overrides(tmp_path: Path) -> list[str]:
    from cnn_ray.testing import write_photo_tree

    classes = ("a", "b", "c")
    train = write_photo_tree(tmp_path / "train", classes=classes, per_class=8)
    val = write_photo_tree(tmp_path / "val", classes=classes, per_class=3, seed=1)
    return [f"data.train={train}", f"data.val={val}", "data.store_size=40", "data.image_size=32",
            "data.progressive.start_size=24", "data.progressive.end_size=32",
            "data.progressive.step=8", "eval.image_size=40", "eval.resize_size=40",
            "optim.batch_size=8"]


@pytest.mark.slow
def test_photo_ablation_smoke_on_generated_photos(ablate, tmp_path, capsys):
    """--recipe photo, 2 epochs, 3 variants on generated photos stored at 40 px (the recipe's
    techniques at a tiny size): the table, the wall column and the JSON."""
    out = tmp_path / "ablate.json"
    rc = ablate.main(["--recipe", "photo", "--only", "full", "no_progressive", "no_blurpool",
                      "--epochs", "2", "--compute-steps", "1", "--json", str(out),
                      "--set", *_tiny_photo_overrides(tmp_path)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["recipe"] == "photo" and doc["thresholds"] == [0.5, 0.6, 0.7]
    assert (doc["train_images"], doc["test_images"], doc["epochs"]) == (24, 9, 2)
    assert [r["variant"] for r in doc["rows"]] == ["full", "no_progressive", "no_blurpool"]
    assert all(len(r["top1_by_epoch"]) == 2 and r["wall_s"] >= r["train_s"] > 0
               for r in doc["rows"])
    assert doc["rows"][0]["tta_views"] == 2  # flip TTA on every epoch (tta_epochs=all)
    printed = capsys.readouterr().out
    assert "| full | (the recipe) |" in printed and "wall s" in printed and "machine:" in printed


# ------------------------------------------------------------------------------ time to accuracy
def test_plain_best_is_a_target_and_is_marked(tta):
    from benchmarks.plain_recipes import mark_plain_best, targets_with_plain_best

    plain = [{"epoch": 1, "val_top1": 0.3, "wall_s": 100.0, "train_s": 90.0},
             {"epoch": 2, "val_top1": 0.55, "wall_s": 200.0, "train_s": 180.0},
             {"epoch": 3, "val_top1": 0.52, "wall_s": 300.0, "train_s": 270.0}]
    fast = [{"epoch": 1, "val_top1": 0.56, "wall_s": 40.0, "train_s": 30.0}]
    targets = targets_with_plain_best(plain, [0.5, 0.6])
    assert targets == [0.5, 0.6, 0.55] and targets_with_plain_best([], [0.5]) == [0.5]
    assert targets_with_plain_best(plain, [0.55]) == [0.55]
    rows = mark_plain_best(tta.compare(plain, fast, targets), plain)
    best = [r for r in rows if r["plain_best"]]
    assert len(best) == 1 and best[0]["threshold"] == 0.55
    assert best[0]["plain"]["wall_s"] == 200.0 and best[0]["wall_ratio"] == 5.0


def test_recipe_defaults_of_time_to_accuracy(tta):
    args = argparse.Namespace(recipe=None, config=str(FLOWERS), thresholds=None,
                              plain_max_epochs=None, plain_max_minutes=None)
    tta.resolve_recipe(args)
    assert (args.recipe, args.thresholds, args.plain_max_epochs, args.plain_max_minutes) == \
        ("photo", [0.5, 0.6], 24, 40.0)
    args = argparse.Namespace(recipe=None, config=None, thresholds=None, plain_max_epochs=3,
                              plain_max_minutes=None)
    tta.resolve_recipe(args)
    assert (args.recipe, args.config, args.thresholds, args.plain_max_epochs,
            args.plain_max_minutes) == ("cifar", str(tta.DEFAULT_CONFIG), [0.8, 0.85], 3, None)


def test_plain_photo_transforms_and_run_keep_their_schedule(tta, tmp_path):
    """The plain photo recipe: 128-px train crops and 146 -> 128 validation from non-square
    photos; it runs every epoch of its cosine schedule even once a threshold is reached."""
    import torch
    from PIL import Image

    from benchmarks.plain_recipes import photo_transforms

    train_tf, val_tf = photo_transforms()
    photo = Image.new("RGB", (213, 160), (200, 30, 60))
    assert train_tf(photo).shape == val_tf(photo).shape == (3, 128, 128)
    assert val_tf(photo).dtype == torch.float32
    from cnn_ray.testing import write_photo_tree

    train = write_photo_tree(tmp_path / "train", size=(64, 80), per_class=4)
    val = write_photo_tree(tmp_path / "val", size=(64, 80), per_class=2, seed=1)
    cfg = load_train_config(FLOWERS, [f"data.train={train}", f"data.val={val}"])
    curve = tta.run_plain(cfg, batch_size=8, thresholds=[0.0], max_epochs=2,
                          device=torch.device("cpu"), log=lambda m: None, recipe="photo")
    assert [r["epoch"] for r in curve] == [1, 2]  # a cifar run would stop after epoch 1
    assert all(0 <= r["val_top1"] <= 1 for r in curve)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_time_to_accuracy_photo_smoke(tta, ray_session, tmp_path, capsys):
    """--recipe photo --smoke: both sides, 1 epoch on 32 train / 12 val real flower photos
    (4 classes), the fast one (flowers.yaml) on Ray; the plain best is a target."""
    out = tmp_path / "tta.json"
    rc = tta.main(["--recipe", "photo", "--smoke", "--storage", str(tmp_path / "runs"),
                   "--compute-steps", "1", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["recipe"] == "photo" and doc["complete"] is True
    assert len(doc["plain"]["curve"]) == 1 and len(doc["fast"]["curve"]) == 1
    assert doc["thresholds"] == [0.5, 0.6] and doc["plain"]["max_minutes"] == 40.0
    plain_best = doc["plain"]["curve"][0]["val_top1"]
    marked = [r for r in doc["comparison"] if r["plain_best"]]
    assert len(marked) == (0 if plain_best in (0.5, 0.6) else 1)
    assert all(r["threshold"] == plain_best for r in marked)
    fast = doc["fast"]["curve"][0]
    assert 0 < fast["train_s"] <= fast["wall_s"] <= doc["fast"]["total_s"]
    assert "pure-compute images/s" in capsys.readouterr().out


# ------------------------------------------------------------------------------ end to end
def _train_job(tmp_path: Path, recipe: Path, overrides: list[str], env_extra: dict) -> Path:
    """``python jobs/train.py --config recipe overrides`` on a seeded subset of the real
    photos (4 classes, 8 train / 3 val each), a smoke run (2 steps per epoch); its run dir."""
    from cnn_ray.datasets import flowers102_subset

    train = flowers102_subset("train", 8, classes=4)
    val = flowers102_subset("val", 3, classes=4)
    run = tmp_path / "runs" / "photo"
    args = [f"data.train={train}", f"data.val={val}", f"data.prepared_dir={tmp_path / 'prep'}",
            f"run.storage_path={tmp_path / 'runs'}", "run.name=photo", "run.smoke=true",
            "optim.batch_size=8", *overrides]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", **env_extra)
    proc = subprocess.run([sys.executable, "jobs/train.py", "--config", str(recipe), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run


@pytest.mark.ray  # jobs/train.py starts its own local Ray (not the shared session)
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scratch_recipe_smoke_trains_through_jobs_train(tmp_path):
    run = _train_job(tmp_path, FLOWERS, ["optim.epochs=2"], {})
    meta = json.loads(sorted(run.glob("checkpoint_*/meta.json"))[-1].read_text())
    assert meta["eval_transform"] == {"stored_size": 160, "resize_size": 160, "image_size": 160}
    assert meta["config"]["model"]["blurpool"] is True and len(meta["class_names"]) == 4
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["data"]["progressive"]["enabled"] is True


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_finetune_recipe_smoke_trains_from_placed_weights(tmp_path):
    """flowers_finetune.yaml with a random ResNet-18 state dict under torchvision's file name
    in a temporary TORCH_HOME (nothing downloaded): the named weights load, the head is new."""
    from cnn_ray.testing import place_resnet18_weights

    torch_home = tmp_path / "torch"
    place_resnet18_weights(torch_home)
    run = _train_job(tmp_path, FINETUNE, ["optim.epochs=2"],
                     {"TORCH_HOME": str(torch_home), "HF_HUB_OFFLINE": "1"})
    report = json.loads((run / "pretrained.json").read_text())
    assert (report["kind"], report["weights"]) == ("named", "ResNet18_Weights.IMAGENET1K_V1")
    assert report["applied"] is True and report["skipped"] == ["fc.bias", "fc.weight"]
    meta = json.loads(sorted(run.glob("checkpoint_*/meta.json"))[-1].read_text())
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])  # the weights' normalisation


def test_ray_free_trainer_crops_each_epoch_at_its_progressive_size(monkeypatch):
    """cnn_ray.train.local (the ablation's trainer): epoch e's batches are cropped to
    data.crop_size_at(e, epochs), so the no_progressive row differs from the recipe."""
    import numpy as np
    import torch

    from cnn_ray.config import TrainConfig
    from cnn_ray.data.memory import InMemoryShard
    from cnn_ray.train.local import train_arrays

    cfg = TrainConfig.from_dict({
        "data": {"train": "unused", "store_size": 40, "image_size": 32,
                 "progressive": {"enabled": True, "start_size": 16, "end_size": 32,
                                 "end_frac": 0.75, "step": 8}},
        "augment": {"random_resized_crop": {"enabled": True}, "random_crop": {"enabled": False}},
        "model": {"name": "simple_cnn"}, "optim": {"epochs": 4, "batch_size": 8},
        "precision": {"dtype": "fp32"}, "scaling": {"torch_threads": 1}}, check_paths=False)
    sizes, original = [], InMemoryShard.batches

    def recording(self, *args, **kwargs):
        if kwargs.get("augment") is not None:  # training batches, not validation
            sizes.append(kwargs.get("out_size"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InMemoryShard, "batches", recording)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 40, 40, 3), dtype=np.uint8)
    y = np.arange(16, dtype=np.int64) % 2
    train_arrays(cfg, (x, y), (x[:4], y[:4]), device=torch.device("cpu"), log=lambda m: None)
    assert sizes == [cfg.data.crop_size_at(e, 4) for e in range(4)] == [16, 24, 24, 32]
