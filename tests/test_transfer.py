"""benchmarks/transfer.py (issue 15 "transfer pays"): the two data sets (classes, counts, seeded
choice, labels), argument and override errors (exit 2, one line), and a smoke run on generated
CIFAR-like arrays (the `not ray` tier has no archive). No Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnn_ray.testing import load_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def transfer():
    return load_benchmark("transfer")


def _fake_cifar(per_class: int, seed: int = 0):
    """``per_class`` images of each of 10 classes, shuffled, 32x32x3 uint8; the class is
    written into pixel (0, 0, 0) so a test can check which images were taken."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(10, dtype=np.int64), per_class))
    x = rng.integers(0, 256, size=(len(y), 32, 32, 3)).astype(np.uint8)
    x[:, 0, 0, 0] = y
    return x, y


def test_class_subset_takes_seeded_rows_of_the_classes_relabelled(transfer):
    x, y = _fake_cifar(30)
    xs, ys, rows = transfer.class_subset(x, y, (5, 6, 7, 8, 9), 7, seed=3)
    assert xs.shape == (35, 32, 32, 3) and xs.flags.c_contiguous and xs.dtype == np.uint8
    assert np.array_equal(np.bincount(ys), [7] * 5)            # 7 per class, labels 0-4
    assert np.array_equal(y[rows], ys + 5)                      # class 5 -> 0, ..., 9 -> 4
    assert np.array_equal(xs[:, 0, 0, 0], ys + 5)               # the images of those rows
    assert len(set(rows.tolist())) == 35
    for c in range(5):                                          # ascending within a class
        assert np.all(np.diff(rows[ys == c]) > 0)
    again = transfer.class_subset(x, y, (5, 6, 7, 8, 9), 7, seed=3)[2]
    other = transfer.class_subset(x, y, (5, 6, 7, 8, 9), 7, seed=4)[2]
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)
    everything = transfer.class_subset(x, y, (0, 1, 2, 3, 4))
    assert len(everything[0]) == 150 and np.array_equal(y[everything[2]], everything[1])


def test_build_datasets_halves(transfer):
    train, test = _fake_cifar(30), _fake_cifar(12, seed=1)
    sets = transfer.build_datasets(train, test, per_class=10, seed=0)
    pre, tgt = sets["pretrain"], sets["target"]
    assert (pre["classes"], tgt["classes"]) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert len(pre["train"][0]) == 150 and len(pre["val"][0]) == 60    # all of classes 0-4
    assert len(tgt["train"][0]) == 50 and len(tgt["val"][0]) == 60     # 10/class; all test
    assert set(train[1][pre["train_rows"]]) == {0, 1, 2, 3, 4}
    assert set(train[1][tgt["train_rows"]]) == {5, 6, 7, 8, 9}
    assert set(test[1][tgt["val_rows"]]) == {5, 6, 7, 8, 9}
    for s in (pre, tgt):
        assert np.array_equal(s["train"][0][:, 0, 0, 0] - s["classes"][0], s["train"][1])
        assert np.array_equal(s["val"][0][:, 0, 0, 0] - s["classes"][0], s["val"][1])


@pytest.mark.parametrize("kwargs, message", [
    ({"classes": (5, 6), "per_class": 31}, "class 5 has 30 images, 31 asked for"),
    ({"classes": (5, 6), "per_class": 0}, "must be >= 1"),
    ({"classes": (5, 5), "per_class": 1}, "classes repeat"),
    ({"classes": (), "per_class": 1}, "no classes"),
])
def test_class_subset_errors(transfer, kwargs, message):
    x, y = _fake_cifar(30)
    with pytest.raises(transfer.TransferError, match=message):
        transfer.class_subset(x, y, kwargs["classes"], kwargs["per_class"])


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--per-class", "6000"], "5000 training images per class"),
    (["--backbone-lr-mult", "0"], "--backbone-lr-mult must be in (0, 1]"),
    (["--epochs", "5", "--unfreeze-epoch", "6"], "--unfreeze-epoch 6 is beyond --epochs 5"),
    (["--set", "optim.no_such_key=1"], "no_such_key"),
    (["--pretrain-set", "optim.lr=-1"], "optim.lr"),
    (["--config", "no/such.yaml"], "no/such.yaml: no such file"),
])
def test_bad_arguments_exit_2_with_one_line(transfer, tmp_path, capsys, argv, message):
    assert transfer.main([*argv, "--cache", str(tmp_path / "c"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("transfer: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()  # refused before any data or training


def test_argparse_errors_and_missing_archive(transfer, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        transfer.main(["--epochs", "many"])
    assert exc.value.code == 2 and "invalid int value" in capsys.readouterr().err
    monkeypatch.setenv("CNN_RAY_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("CNN_RAY_CIFAR_TAR", str(tmp_path / "nope.tar.gz"))
    assert transfer.main(["--cache", str(tmp_path / "c"), "--out", str(tmp_path)]) == 2
    assert "CIFAR-10 archive not found" in capsys.readouterr().err


@pytest.mark.slow
def test_transfer_smoke(transfer, tmp_path, monkeypatch, capsys):
    """``--smoke`` end to end on generated arrays: pretraining, backbone without the head,
    fine-tune (head first) and scratch, JSON and PNG; a second run reuses the pretraining."""
    import cnn_ray.datasets

    fake = {"train": _fake_cifar(40), "test": _fake_cifar(50, seed=1)}
    monkeypatch.setattr(cnn_ray.datasets, "cifar10_arrays", lambda split: fake[split])
    argv = ["--smoke", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert transfer.main(argv) == 0
    doc = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert (tmp_path / "out" / "transfer.png").stat().st_size > 1000
    assert doc["data"]["pretrain"] == {"classes": [0, 1, 2, 3, 4], "train_images": 200,
                                       "val_images": 250}
    assert (doc["data"]["target"]["train_images"], doc["data"]["target"]["val_images"]) == \
        (50, 250)
    assert len(doc["finetune"]["val_top1_by_epoch"]) == len(doc["scratch"]["val_top1_by_epoch"]) \
        == 2
    assert doc["difference_points"] == pytest.approx(
        100 * (doc["finetune"]["val_top1"] - doc["scratch"]["val_top1"]), abs=0.01)
    assert doc["pretrain"]["head_dropped"] and not doc["pretrain"]["reused"]
    assert (doc["finetune"]["freeze"], doc["finetune"]["unfreeze_epoch"]) == ("backbone", 2)
    printed = capsys.readouterr().out
    assert "1 new, 0 skipped" in printed and "everything trains from epoch 2" in printed
    assert "difference" in printed and "machine:" in printed
    assert transfer.main(argv) == 0
    assert "pretraining reused" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "transfer.json").read_text())["pretrain"]["reused"]
