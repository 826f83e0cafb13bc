"""benchmarks/ablate.py (the ablation table of the fast recipe) and benchmarks/time_to_accuracy.py (plain
PyTorch vs the fast recipe): variant configs, epochs/time-to-threshold and ratio logic, and
smoke runs of both commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ ablate
def test_every_variant_is_a_valid_config_that_changes_its_technique(ablate):
    from cnn_ray.config_io import load_train_config

    recipe = load_train_config(ablate.DEFAULT_CONFIG, check_paths=False)
    cfgs = {name: ablate.variant_config(ablate.DEFAULT_CONFIG, ov, seed=3, epochs=2)
            for name, ov in ablate.variant_overrides()}
    assert list(cfgs) == list(ablate.VARIANTS)
    assert all(c.eval.tta_epochs == "all" and c.run.seed == 3 and c.optim.epochs == 2
               for c in cfgs.values())
    full = cfgs["full"]
    assert full.model == recipe.model and full.optim.model_dump(exclude={"epochs"}) == \
        recipe.optim.model_dump(exclude={"epochs"}) and full.eval.tta == recipe.eval.tta
    assert full.model.whitening.enabled and not cfgs["no_whitening"].model.whitening.enabled
    bn = cfgs["bn_defaults"].model.batchnorm
    assert (bn.momentum, bn.eps, bn.freeze_scale, bn.bias_lr_mult) == (None, None, False, 1.0)
    assert full.augment.hflip.mode == "alternating"
    assert cfgs["random_flip"].augment.hflip.mode == "random"
    assert full.eval.tta != "none" and cfgs["no_tta"].eval.tta == "none"
    assert full.optim.label_smoothing > 0 and cfgs["no_label_smoothing"].optim.label_smoothing == 0
    assert cfgs["onecycle"].optim.schedule == "onecycle" != full.optim.schedule
    assert full.optim.ema.lookahead and not cfgs["no_lookahead"].optim.ema.enabled
    assert not full.data.drop_last and cfgs["drop_last"].data.drop_last
    assert full.optim.optimizer == "muon" and cfgs["sgd"].optim.optimizer == "sgd"


def test_variant_selection_and_unknown_names(ablate):
    assert [n for n, _ in ablate.variant_overrides(["no_tta", "full"])] == ["no_tta", "full"]
    with pytest.raises(ValueError, match="no_such"):
        ablate.variant_overrides(["full", "no_such"])


def test_epochs_to_threshold(ablate):
    curve = [0.5, 0.85, 0.84, 0.9]
    assert ablate.epochs_to(curve, 0.85) == 2  # reaching the threshold exactly counts
    assert ablate.epochs_to(curve, 0.86) == 4
    assert ablate.epochs_to(curve, 0.95) is None
    assert ablate.epochs_to([], 0.1) is None


def test_summary_row_and_table(ablate):
    runs = [{"val_top1_by_epoch": [0.80, 0.86], "val_top1": 0.86, "train_s": 10.0,
             "tta_views": 6, "precision": "fp32"},
            {"val_top1_by_epoch": [0.84, 0.88], "val_top1": 0.88, "train_s": 12.0,
             "tta_views": 6, "precision": "fp32"}]
    row = ablate.summarise("full", [], runs, [0.82, 0.87, 0.9])
    assert row["top1_by_epoch"] == [0.82, 0.87] and row["top1_last"] == 0.87
    assert row["epochs_to"] == {"0.82": 1, "0.87": 2, "0.9": None}  # on the mean curve
    assert row["train_s"] == 11.0
    table = ablate.markdown_table([row], [0.82, 0.87, 0.9]).splitlines()
    assert table[0].count("|") == table[2].count("|") == 8
    assert table[2].split("|")[3:7] == [" 87.00% ", " 1 ", " 2 ", " - "]


def _fake_cifar(split: str):
    """Generated stand-in for cifar10_arrays: seeded noise with a class-dependent mean."""
    n = 192 if split == "train" else 96
    rng = np.random.default_rng(0 if split == "train" else 1)
    y = np.arange(n, dtype=np.int64) % 10
    x = rng.integers(0, 128, size=(n, 32, 32, 3)) + (y * 12)[:, None, None, None]
    return x.astype(np.uint8), y


@pytest.mark.slow
def test_ablate_smoke(ablate, tmp_path, monkeypatch, capsys):
    """main on 128 train / 64 test images (generated: the `not ray` tier has no archive),
    1 epoch, 2 variants."""
    import cnn_ray.datasets

    monkeypatch.setattr(cnn_ray.datasets, "cifar10_arrays", lambda split: _fake_cifar(split))
    out = tmp_path / "ablate.json"
    rc = ablate.main(["--only", "full", "no_whitening", "--train-images", "128",
                      "--test-images", "64", "--epochs", "1", "--set", "optim.batch_size=64",
                      "--compute-steps", "1", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [r["variant"] for r in doc["rows"]] == ["full", "no_whitening"]
    assert (doc["train_images"], doc["test_images"], doc["epochs"], doc["seeds"]) == \
        (128, 64, 1, [0])
    assert all(len(r["top1_by_epoch"]) == 1 and 0 <= r["top1_last"] <= 1 for r in doc["rows"])
    assert doc["rows"][0]["tta_views"] == 6 and doc["pure_compute_images_per_sec"] > 0
    printed = capsys.readouterr().out
    assert "| full | (the recipe) |" in printed and "128 train / 64 test" in printed


def test_ablate_refuses_bad_override(ablate, capsys):
    assert ablate.main(["--only", "full", "--set", "optim.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


# ------------------------------------------------------------------------------ time to accuracy
def _curve(top1s, wall_step, train_step):
    return [{"epoch": i + 1, "val_top1": v, "wall_s": wall_step * (i + 1),
             "train_s": train_step * (i + 1)} for i, v in enumerate(top1s)]


def test_time_to_and_ratios(tta):
    plain = _curve([0.6, 0.81, 0.84], 100.0, 80.0)
    fast = _curve([0.82, 0.86], 10.0, 5.0)
    assert tta.time_to(plain, 0.8) == {"epoch": 2, "wall_s": 200.0, "train_s": 160.0}
    assert tta.time_to(plain, 0.85) is None
    rows = tta.compare(plain, fast, [0.8, 0.85, 0.9])
    assert (rows[0]["wall_ratio"], rows[0]["train_ratio"]) == (20.0, 32.0)
    assert rows[1]["wall_ratio"] is None and rows[1]["plain"] is None
    assert (rows[1]["wall_ratio_at_least"], rows[1]["train_ratio_at_least"]) == (15.0, 24.0)
    assert rows[2]["fast"] is None and "wall_ratio_at_least" not in rows[2]
    assert "20.0x wall, 32.0x training" in tta.describe(rows[0], 3, 2)
    text = tta.describe(rows[1], 3, 2)
    assert "plain: not reached within 3 epochs" in text and "> 15.0x wall" in text
    assert "fast: not reached within 2 epochs" in tta.describe(rows[2], 3, 2)
    assert "plain: not run" in tta.describe(tta.compare([], fast, [0.8])[0], 0, 2)


def test_curve_from_metrics_records(tta):
    rows = [{"epoch": 2, "val_top1": 0.7, "epoch_s": 20.0, "time": 1060.0},
            {"epoch": 1, "val_top1": 0.5, "epoch_s": 30.0, "time": 1035.5}]
    curve = tta.curve_from_metrics(rows, 1000.0)
    assert curve == [{"epoch": 1, "val_top1": 0.5, "wall_s": 35.5, "train_s": 30.0},
                     {"epoch": 2, "val_top1": 0.7, "wall_s": 60.0, "train_s": 50.0}]


@pytest.mark.ray
@pytest.mark.slow
def test_time_to_accuracy_smoke(tta, ray_session, cifar_root, tmp_path, capsys):
    """--smoke: both recipes, 1 epoch on 200 train / 100 test real images, the fast one on Ray."""
    out = tmp_path / "tta.json"
    rc = tta.main(["--smoke", "--storage", str(tmp_path / "runs"), "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert len(doc["plain"]["curve"]) == 1 and len(doc["fast"]["curve"]) == 1
    assert doc["batch_size"] == 64 and doc["thresholds"] == [0.8, 0.85]
    fast = doc["fast"]["curve"][0]
    assert 0 < fast["train_s"] <= fast["wall_s"] <= doc["fast"]["total_s"]
    assert 0 <= doc["plain"]["curve"][0]["val_top1"] <= 1
    assert (Path(doc["fast"]["run_dir"]) / "metrics.jsonl").exists()
    assert doc["complete"] is True
    assert "pure-compute images/s" in capsys.readouterr().out


def test_plain_stops_at_wall_cap_and_saves_each_epoch(tta, tmp_path):
    """--plain-max-minutes stops the plain run after the epoch that passes it; on_epoch gets
    the curve after every epoch (a killed run keeps its epochs)."""
    import torch

    from cnn_ray.config_io import load_train_config
    from cnn_ray.testing import write_image_tree

    train = write_image_tree(tmp_path / "train", per_class=8)
    val = write_image_tree(tmp_path / "val", per_class=2, seed=1)
    cfg = load_train_config(tta.DEFAULT_CONFIG, [f"data.train={train}", f"data.val={val}"])
    seen = []
    curve = tta.run_plain(cfg, batch_size=16, thresholds=[1.01], max_epochs=5,
                          device=torch.device("cpu"), max_s=0.0,
                          on_epoch=lambda c: seen.append(len(c)), log=lambda m: None)
    assert len(curve) == 1 and seen == [1]
    curve = tta.run_plain(cfg, batch_size=16, thresholds=[1.01], max_epochs=2,
                          device=torch.device("cpu"), on_epoch=lambda c: seen.append(len(c)),
                          log=lambda m: None)
    assert len(curve) == 2 and seen == [1, 1, 2]


def test_plain_from_an_earlier_run_of_this_machine_only(tta, tmp_path):
    from cnn_ray.benchmark import hardware_summary

    here = hardware_summary()
    curve = _curve([0.7, 0.82], 100.0, 90.0)
    good = tmp_path / "plain.json"
    good.write_text(json.dumps({"machine": here, "plain": {"curve": curve, "max_epochs": 40}}))
    assert tta.earlier_plain(str(good), here) == {"curve": curve, "max_epochs": 40,
                                                   "from": str(good)}
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"machine": "another box", "plain": {"curve": curve}}))
    with pytest.raises(ValueError, match="another box"):
        tta.earlier_plain(str(other), here)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"machine": here, "plain": None}))
    with pytest.raises(ValueError, match="no plain curve"):
        tta.earlier_plain(str(empty), here)


def test_plain_from_another_machine_exits_before_training(tta, tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"machine": "another box", "plain": {"curve": _curve([0.8], 1.0, 1.0)}}))
    rc = tta.main(["--plain-from", str(other), "--set", f"data.train={tmp_path}",
                   f"data.val={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "another box" in err and "Traceback" not in err
