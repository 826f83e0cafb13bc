"""jobs/benchmark.py at resolution (issue 25 item 5): the plain-PyTorch baseline (c) draws
torchvision's per-image ``RandomResizedCrop`` at resolution, ``--only`` and the bounded epochs
select what runs, and one run writes every figure, data-wait share and ratio to its JSON
(tiny generated photos, a tiny model, 2 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnn_ray.config import TrainConfig
from cnn_ray.testing import write_photo_tree


def _raw(tmp_path: Path, **data) -> dict:
    return {"data": {"train": str(write_photo_tree(tmp_path / "photos", per_class=10)),
                     "image_size": 32, "store_size": 40, "val_fraction": 0.2, "shard_size": 100,
                     "prepared_dir": str(tmp_path / "prepared"), **data},
            "augment": {"random_resized_crop": {"enabled": True, "scale": [0.25, 1.0]},
                        "random_crop": {"enabled": False}},
            "model": {"name": "simple_cnn"}, "optim": {"batch_size": 4, "epochs": 3},
            "precision": {"dtype": "fp32"},
            "scaling": {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1},
            "run": {"name": "bench", "storage_path": str(tmp_path / "runs")}}


def test_plain_transform_is_random_resized_crop_at_resolution(tmp_path):
    from torchvision import transforms as T

    from cnn_ray.benchmark import plain_transform

    tf = plain_transform(TrainConfig.from_dict(_raw(tmp_path)))
    crop = tf.transforms[0]
    assert isinstance(crop, T.RandomResizedCrop) and tuple(crop.size) == (32, 32)
    assert tuple(crop.scale) == (0.25, 1.0)
    assert [type(t) for t in tf.transforms[1:]] == [T.RandomHorizontalFlip, T.ToTensor,
                                                     T.Normalize]
    raw = _raw(tmp_path)
    raw["data"].pop("store_size")
    raw["augment"] = {"random_crop": {"enabled": True, "padding": 4}}
    small = plain_transform(TrainConfig.from_dict(raw)).transforms[0]
    assert isinstance(small, T.RandomCrop) and small.padding == 4  # the 32-px recipe, as before


def test_plain_pytorch_baseline_trains_on_photos_at_resolution(tmp_path):
    """(c) on 48x64 JPEGs cropped to 32 px per image: images/s and the data-wait share (a
    tiny set of 20 photos: the loader starts another epoch when it runs out)."""
    from cnn_ray.benchmark import plain_pytorch_images_per_sec

    res = plain_pytorch_images_per_sec(TrainConfig.from_dict(_raw(tmp_path)), steps=6, warmup=1)
    assert res["images_per_sec"] > 0 and 0.0 <= res["data_wait_share"] <= 1.0


def test_only_and_bounded_epochs_select_what_runs(tmp_path):
    from cnn_ray.benchmark import _only, benchmark_config

    assert _only(None) == ["a", "c", "b", "b_stream", "b_raw"]
    assert _only(["b_raw", "a"]) == ["a", "b_raw"] and _only("a") == ["a"]
    with pytest.raises(ValueError, match="unknown"):
        _only(["d"])
    with pytest.raises(ValueError, match="alone"):
        _only(["compile", "a"])
    cfg = TrainConfig.from_dict(_raw(tmp_path))
    assert cfg.run.steps_cap() is None
    bench = benchmark_config(cfg, epochs=2, epoch_steps=5, gpu=False)
    assert bench.optim.epochs == 2 and bench.run.steps_cap() == 5 and not bench.scaling.use_gpu
    assert benchmark_config(cfg, gpu=True).scaling.use_gpu
    smoke = benchmark_config(TrainConfig.from_dict({**_raw(tmp_path), "run": {
        "smoke": True, "name": "s"}}), epoch_steps=5, gpu=False)
    assert smoke.run.steps_cap() == 2  # smoke's 2 steps win


@pytest.mark.ray
@pytest.mark.slow
def test_one_run_writes_every_figure_and_ratio(ray_session, tmp_path):
    """a, c, b (memory cache), b' (streaming the shards), b'' (decoding the raw JPEGs) in one
    run of 1 epoch x 2 steps: each figure's images/s and data-wait share, the ratios, the
    targets and the machine in the JSON; each pipeline figure trained exactly 2 steps."""
    from cnn_ray.benchmark import benchmark_main

    cfg = TrainConfig.from_dict(_raw(tmp_path))
    out = tmp_path / "bench.json"
    assert benchmark_main(cfg, steps=2, json_path=str(out), epochs=1, epoch_steps=2) == 0
    res = json.loads(out.read_text())
    assert res["hardware"] and res["device"] in ("cpu", "cuda") and res["epoch_steps"] == 2
    for key in ("a_synthetic", "c_plain_pytorch", "b_memory", "b_stream", "b_raw"):
        assert res[f"{key}_images_per_sec"] > 0, key
        assert 0.0 <= res[f"{key}_data_wait_share"] <= 1.0, key
    for key in ("b_memory", "b_stream", "b_raw"):
        assert res[f"{key}_epoch"] == 1 and res[f"{key}_train_images_last_epoch"] == 2 * 4
    for ratio in ("b_over_a", "b_stream_over_a", "b_raw_over_a", "b_over_c"):
        assert res[ratio] > 0, ratio
    assert res["b_over_a"] == pytest.approx(
        res["b_memory_images_per_sec"] / res["a_synthetic_images_per_sec"])
    assert set(res["targets"]) == {"b_over_a >= 0.9", "b_stream_over_a >= 0.8",
                                   "b_raw_over_a >= 0.8", "b_over_c >= 2.5"}
    assert res["skipped"] == {}
