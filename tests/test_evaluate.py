"""Evaluation report: confusion matrix, per-class accuracy, CSV and PNG (no Ray)."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from cnn_ray.config import TrainConfig
from cnn_ray.evaluate import confusion_matrix, evaluate_batches, write_report
from cnn_ray.models import create_model
from cnn_ray.train.checkpoint import latest_checkpoint, save_checkpoint


def test_confusion_matrix_counts():
    cm = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_checkpoint_to_report(tmp_path):
    cfg = TrainConfig.from_dict({"data": {"train": str(tmp_path)}, "model": {"name": "simple_cnn"},
                                 "precision": {"dtype": "fp32"}})
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3)
    run = tmp_path / "run"
    ck = save_checkpoint(run / "checkpoint_2026-01-01_00-00-00.000000", model=model, epoch=1,
                         config=cfg.to_dict(), class_names=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3)
    assert latest_checkpoint(run) == ck
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randint(0, 255, (8, 32, 32, 3), dtype=torch.uint8, generator=g),
                "label": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])} for _ in range(3)]
    result = evaluate_batches(ck, batches)
    assert result.num_images == 24 and result.confusion.sum() == 24
    assert result.confusion.sum(axis=1).tolist() == [9, 9, 6]
    assert abs(result.top1 - np.trace(result.confusion) / 24) < 1e-9
    paths = write_report(result, tmp_path / "eval")
    assert json.loads(open(paths["metrics"]).read())["num_images"] == 24
    rows = list(csv.reader(open(paths["confusion_csv"])))
    assert rows[0] == ["true\\pred", "a", "b", "c"] and len(rows) == 4
    assert open(paths["confusion_png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
