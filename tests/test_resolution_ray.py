"""Data at resolution through Ray (issue 25, item 3): the prepare step stores ``store_size``
squares, the memory cache and the streaming path hand the trainer ``image_size`` batches
from them, the memory cache refuses data that does not fit with one message, and a tiny run
through ``cnn-ray train`` / ``evaluate`` / ``export`` uses one validation transform
throughout. Tiny generated photos (48x64 px stored at 40, trained at 32)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from cnn_ray.testing import write_photo_tree

pytestmark = pytest.mark.ray


def _config(tmp_path: Path, data: dict, **sections) -> dict:
    cfg = {"data": {"train": str(write_photo_tree(tmp_path / "photos", per_class=10)),
                    "image_size": 32, "store_size": 40, "val_fraction": 0.2, "shard_size": 100,
                    "prepared_dir": str(tmp_path / "prepared"), **data},
           "augment": {"random_resized_crop": {"enabled": True, "scale": [0.08, 1.0]},
                       "random_crop": {"enabled": False}},
           "model": {"name": "simple_cnn"}, "optim": {"batch_size": 8, "epochs": 1},
           "precision": {"dtype": "fp32"}, "scaling": {"num_workers": 1, "cpus_per_worker": 1},
           "run": {"name": "res", "storage_path": str(tmp_path / "runs")}}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def _recipe(tmp_path: Path, cfg: dict) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_stored_squares_and_both_paths_give_training_size_batches(ray_session, tmp_path):
    import ray

    from cnn_ray.config import ConfigError, TrainConfig
    from cnn_ray.data.decode import decode_image
    from cnn_ray.data.memory import InMemoryShard
    from cnn_ray.data.prepare import prepare_data
    from cnn_ray.data.shards import read_shard_images
    from cnn_ray.train.data_modes import training_data

    cfg = TrainConfig.from_dict(_config(tmp_path, {}, eval={"image_size": 36}))
    prepared = prepare_data(cfg, progress=False)
    assert prepared.image_shape == (40, 40, 3) and prepared.num_train + prepared.num_val == 20
    table = pq.read_table(prepared.train_files[0])
    assert table.schema.field("image").type.byte_width == 40 * 40 * 3
    stored, labels, _ = read_shard_images(table)  # the shard metadata says (40, 40, 3)
    names = sorted((tmp_path / "photos" / prepared.class_names[labels[0]]).iterdir())
    decoded = [decode_image(f.read_bytes(), size=40) for f in names]
    assert any(np.array_equal(stored[0], d) for d in decoded)  # centre square at store_size

    data = training_data(cfg, prepared)
    streamed = data.datasets(cfg)  # cache: none, cropped in the Ray Data tasks
    train = next(iter(streamed["train"].iter_batches(batch_size=8, batch_format="numpy")))
    val = next(iter(streamed["val"].iter_batches(batch_size=8, batch_format="numpy")))
    assert train["image"].shape[1:] == (32, 32, 3) and val["image"].shape[1:] == (36, 36, 3)

    refs = data.object_refs(cfg)  # cache: memory: stored rows + transformed validation rows
    arrays = ray.get(refs["train"])
    assert arrays["image"].shape[1:] == (40, 40, 3)
    assert ray.get(refs["val"])["image"].shape[1:] == (36, 36, 3)
    shard = InMemoryShard.from_arrays(arrays)
    got = next(iter(shard.batches(8, augment=cfg.augment, out_size=cfg.data.train_crop_size)))
    assert tuple(got["image"].shape) == (8, 32, 32, 3)

    raw = TrainConfig.from_dict(_config(tmp_path, {"use_raw": True}, eval={"image_size": 36}))
    decoded = training_data(raw, prepare_data(raw, progress=False)).datasets(raw)  # every epoch
    train = next(iter(decoded["train"].iter_batches(batch_size=8, batch_format="numpy")))
    val = next(iter(decoded["val"].iter_batches(batch_size=8, batch_format="numpy")))
    assert train["image"].shape[1:] == (32, 32, 3) and val["image"].shape[1:] == (36, 36, 3)

    small = TrainConfig.from_dict(_config(tmp_path, {"cache": "memory", "cache_max_mb": 0.05}))
    with pytest.raises(ConfigError, match=r"stored at 40x40x3 \(data.store_size=40\)"):
        training_data(small, prepared).object_refs(small)


def test_cache_too_small_stops_train_before_training_with_one_message(ray_session, tmp_path,
                                                                      capsys):
    from cnn_ray.cli import main

    cfg = _config(tmp_path, {"cache": "memory", "cache_max_mb": 0.05})
    assert main(["train", "--config", _recipe(tmp_path, cfg)]) == 2
    err = capsys.readouterr().err  # after Ray Data's own log lines of the prepare step
    line = err[err.index("cnn-ray train: "):]
    assert line.startswith("cnn-ray train: data.cache=memory: the data set takes") and \
        len(line.strip().splitlines()) == 1 and "Traceback" not in err
    assert "more than data.cache_max_mb=0.05" in line and "data.cache=none" in line
    assert not list((tmp_path / "runs" / "res").glob("checkpoint_*"))  # nothing trained


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("cache", ["memory", "none"])
def test_train_evaluate_export_at_resolution_through_the_cli(ray_session, tmp_path, capsys,
                                                             cache):
    from cnn_ray.cli import main
    from cnn_ray.train.checkpoint import latest_checkpoint, read_meta

    cfg = _config(tmp_path, {"cache": cache}, eval={"image_size": 36}, optim={"epochs": 2})
    recipe = _recipe(tmp_path, cfg)
    assert main(["train", "--config", recipe]) == 0
    out = capsys.readouterr().out
    assert '"final_metrics"' in out
    metrics = json.loads(out[out.index("{\n"):])["final_metrics"]
    assert metrics["val_images"] == 4 and metrics["train_images"] > 0
    ckpt = latest_checkpoint(tmp_path / "runs" / "res")
    meta = read_meta(ckpt)
    assert meta["eval_transform"] == {"stored_size": 40, "resize_size": 41, "image_size": 36}

    assert main(["evaluate", "--config", recipe, "--checkpoint", str(ckpt),
                 "--out", str(tmp_path / "eval")]) == 0
    assert "resize 41 -> centre crop 36" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["num_images"] == 4 and report["eval_transform"] == meta["eval_transform"]
    assert report["top1"] == pytest.approx(metrics["val_top1"])  # the run's own validation

    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript",
                 "--out", str(tmp_path / "export")]) == 0
    contract = json.loads((tmp_path / "export" / "model.ts.json").read_text())
    assert contract["input"]["shape"] == [None, 3, 36, 36]
    assert contract["input"]["eval_transform"] == meta["eval_transform"]
    assert "resize it to 40 x 40" in contract["input"]["resize"]
    rule = contract["input"]["resize"]
    assert "41 x 41" in rule and "centre 36 x 36" in rule
    if cache != "memory":
        return
    # predict and evaluate --data decode the same files the same way: the same top-1
    photos = str(tmp_path / "photos")
    assert main(["evaluate", "--config", recipe, "--checkpoint", str(ckpt), "--data", photos,
                 "--out", str(tmp_path / "eval_all")]) == 0
    evaluated = json.loads((tmp_path / "eval_all" / "metrics.json").read_text())
    assert evaluated["num_images"] == 20
    assert main(["predict", "--checkpoint", str(ckpt), "--data", photos,
                 "--out", str(tmp_path / "pred.csv")]) == 0
    printed = capsys.readouterr().out
    assert f"top1 {100 * evaluated['top1']:.2f}% on 20 labelled" in printed
