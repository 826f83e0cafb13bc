"""Progressive resizing (issue 26, item 2): the per-epoch training side of ``data.progressive``
on every path that makes a training batch -- the memory cache (host and device shards), the
streaming Ray Data tasks (prepared shards and raw files), the worker-side resize of budgeted
streaming runs, the Ray-free trainer -- its metrics (``train_image_size``), ``torch.compile``
across sizes, and a resumed run continuing the ramp. Config and numeric core without Ray; the
Ray paths are marked ``ray`` (tiny generated photos stored at 40 px)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.config_data import Progressive
from cnn_ray.data.augment import augment_batch
from cnn_ray.data.memory import DeviceShard, InMemoryShard, shard_for_device
from cnn_ray.data.pipeline import AUGMENT_START_EPOCH, AugmentBatches, train_sizes
from cnn_ray.data.resized_crop import resize_batch
from cnn_ray.data.shards import fixed_size_binary

RRC = {"random_resized_crop": {"enabled": True, "scale": [0.25, 1.0]},
       "random_crop": {"enabled": False}}


def _cfg(tmp_path, progressive: dict, **sections) -> TrainConfig:
    raw = {"data": {"train": str(tmp_path), "image_size": 32, "store_size": 40,
                    "progressive": {"enabled": True, **progressive}}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return TrainConfig.from_dict(raw)


def _images(n=8, side=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ schedule
def test_ffcv_like_ramp_160_to_192_rounded_to_32():
    # FFCV ffcv-imagenet get_resolution: start_ramp..end_ramp epochs, linear, rounded to 32
    p = Progressive(enabled=True, start_size=160, end_size=192, start_frac=0.25, end_frac=0.75,
                    step=32)
    sizes = [p.size_at(e, 16, 224) for e in range(16)]
    # ramp from epoch 4 to 12: 160 + 32 * (e - 4) / 8; 176 (epoch 8) rounds half to even -> 192
    assert sizes == [160] * 8 + [192] * 8
    # ffcv-imagenet's rn50_16_epochs.yaml: start_ramp 11, end_ramp 13 -> its get_resolution
    ffcv = p.model_copy(update={"start_frac": 11 / 16, "end_frac": 13 / 16})
    assert [ffcv.size_at(e, 16, 224) for e in range(16)] == [160] * 12 + [192] * 4


def test_step_16_ramp_and_the_fraction_edges():
    p = Progressive(enabled=True, start_size=96, end_size=160, start_frac=0.0, end_frac=0.5,
                    step=16)
    assert [p.size_at(e, 10, 160) for e in range(10)] == \
        [96, 112, 128, 128, 144, 160, 160, 160, 160, 160]
    jump = p.model_copy(update={"start_frac": 0.5, "end_frac": 0.5})
    assert [jump.size_at(e, 10, 160) for e in range(10)] == [96] * 5 + [160] * 5
    at_end = p.model_copy(update={"start_frac": 0.0, "end_frac": 0.0})
    assert {at_end.size_at(e, 10, 160) for e in range(10)} == {160}
    never = p.model_copy(update={"start_frac": 1.0, "end_frac": 1.0})
    assert {never.size_at(e, 10, 160) for e in range(10)} == {96}
    odd = Progressive(enabled=True, start_size=100, end_size=150, step=32)  # not multiples
    sides = [odd.size_at(e, 8, 150) for e in range(8)]
    assert sides[0] == 100 and sides[-1] == 150 and sides == sorted(sides)
    assert all(s in (100, 150) or s % 32 == 0 for s in sides)


def test_not_enabled_keeps_image_size(tmp_path):
    assert Progressive(start_size=16).size_at(0, 10, 32) == 32
    plain = TrainConfig.from_dict({"data": {"train": str(tmp_path), "image_size": 32}})
    assert plain.data.crop_size_at(0, 10) is None  # stored as trained: batches keep their side
    stored = TrainConfig.from_dict({"data": {"train": str(tmp_path), "image_size": 32,
                                             "store_size": 40}})
    assert [stored.data.crop_size_at(e, 4) for e in range(4)] == [32] * 4
    cfg = _cfg(tmp_path, {"start_size": 16, "step": 8})  # end_size: None = data.image_size
    assert [cfg.data.crop_size_at(e, 4) for e in range(4)] == [16, 24, 24, 32]


@pytest.mark.parametrize("data, key", [
    ({"store_size": None}, "data.store_size"),
    ({"progressive": {"enabled": True, "start_size": 16, "end_size": 48}},
     "data.progressive.end_size=48"),
    ({"progressive": {"enabled": True, "start_size": 40, "end_size": 36}}, "start_size=40"),
    ({"progressive": {"enabled": True, "start_size": 36}}, "data.progressive.start_size=36"),
    ({"progressive": {"enabled": True, "start_frac": 0.8, "end_frac": 0.5}}, "start_frac=0.8"),
], ids=["no_store_size", "end_above_store", "start_above_end", "start_above_image_size",
        "fracs"])
def test_bad_ramp_is_one_config_error_naming_the_key(tmp_path, data, key):
    raw = {"train": str(tmp_path), "image_size": 32, "store_size": 40,
           "progressive": {"enabled": True}}
    raw.update(data)
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"data": raw})
    assert key in str(info.value) and "expected" in str(info.value)


# ------------------------------------------------------------------------------ memory path
def test_host_shard_yields_each_epochs_side_with_one_crop_for_the_whole_ramp(tmp_path):
    cfg = _cfg(tmp_path, {"start_size": 16, "end_size": 40, "step": 8}, augment=RRC)
    aug, images = cfg.augment, _images()
    shard = InMemoryShard(images, np.arange(8) % 2, np.arange(8))
    assert shard_for_device(shard, "cpu", aug, out_size=40, always_resize=True) is shard
    sides = [cfg.data.crop_size_at(e, 5) for e in range(5)]
    assert sides == [16, 24, 32, 32, 40]
    for epoch, side in enumerate(sides):
        batch = next(iter(shard.batches(8, augment=aug, epoch=epoch, shuffle=False,
                                        prefetch=0, out_size=side, always_resize=True)))
        assert tuple(batch["image"].shape) == (8, side, side, 3)
    # at the stored side (40) the same random-resized crop as below it (step 0), not the
    # affine resample a run without the ramp takes at its own side
    ramp = augment_batch(images, np.arange(8), aug, seed=0, epoch=3, out_size=40,
                         always_resize=True)
    plain = augment_batch(images, np.arange(8), aug, seed=0, epoch=3, out_size=40)
    assert not np.array_equal(ramp, plain)
    assert np.array_equal(batch["image"].numpy(), augment_batch(
        images, np.arange(8), aug, seed=0, epoch=4, out_size=40, always_resize=True))


def test_device_shard_is_valid_for_every_side_of_the_ramp(tmp_path):
    """The GPU-resident path (run here on the CPU): the ramp resizes every epoch, so the
    roi_align resize is chosen and random_resized_crop runs there also at the stored side,
    which without ``always_resize`` the device path refuses."""
    cfg = _cfg(tmp_path, {"start_size": 24, "end_size": 40, "step": 8}, augment=RRC)
    host = InMemoryShard(_images(), np.arange(8) % 2, np.arange(8))
    dev = shard_for_device(host, "cpu", cfg.augment, prefer_device=True, out_size=40,
                           always_resize=True)
    assert isinstance(dev, DeviceShard)
    for side in (24, 32, 40):
        got = next(iter(dev.batches(8, augment=cfg.augment, shuffle=False, out_size=side,
                                    always_resize=True)))
        want = next(iter(host.batches(8, augment=cfg.augment, shuffle=False, prefetch=0,
                                      out_size=side, always_resize=True)))
        assert tuple(got["image"].shape) == (8, side, side, 3)
        # same boxes, the resize filter differs (roi_align vs antialiased bilinear)
        diff = (got["image"].int() - want["image"].int()).abs().float().mean()
        assert diff < 40, f"side {side}: mean difference {diff:.1f} grey levels"
    with pytest.raises(ConfigError, match="augment.random_resized_crop"):
        dev.batches(8, augment=cfg.augment, out_size=40)  # stored side, no ramp: affine RRC
    with pytest.raises(ConfigError, match="augment.random_resized_crop"):
        shard_for_device(host, "cpu", cfg.augment, prefer_device=True, out_size=40)


# ------------------------------------------------------------------------------ streaming
def test_resize_batch_keeps_shape_dtype_and_constant_images():
    x = torch.full((3, 40, 40, 3), 77, dtype=torch.uint8)
    y = resize_batch(x, 24)
    assert tuple(y.shape) == (3, 24, 24, 3) and y.dtype == torch.uint8 and y.is_contiguous()
    assert torch.all(y == 77)
    assert resize_batch(x, 40) is x  # already the side
    noise = torch.from_numpy(_images(4))
    got = resize_batch(noise, 24).int()
    want = torch.nn.functional.interpolate(noise.permute(0, 3, 1, 2).float(), size=(24, 24),
                                           mode="bilinear", antialias=True)
    want = want.round().permute(0, 2, 3, 1).int()
    assert (got - want).abs().max() <= 1  # torch's uint8 kernel vs float: rounding only
    with pytest.raises(ValueError, match="uint8"):
        resize_batch(x.float(), 24)


def test_augment_batches_crop_each_execution_epochs_side_and_resume_the_ramp(tmp_path,
                                                                            data_context):
    cfg = _cfg(tmp_path, {"start_size": 16, "step": 8}, augment=RRC)
    images = _images()
    table = pa.table({"image": fixed_size_binary(images), "label": pa.array(np.arange(8) % 2),
                      "idx": pa.array(np.arange(8, dtype=np.int64))})
    kw = train_sizes(cfg.data, 4)
    assert kw == {"out_size": 32, "sizes": (16, 24, 24, 32), "always_resize": True}
    fn = AugmentBatches(cfg.augment, image_shape=(40, 40, 3), seed=0, **kw)
    for start in range(6):  # a worker group (re)started at epoch `start`: its side, its draws
        data_context.set_config(AUGMENT_START_EPOCH, start)
        side = cfg.data.crop_size_at(min(start, 3), 4)
        assert fn(table)["image"].shape == (8, side, side, 3)
    data_context.set_config(AUGMENT_START_EPOCH, 2)
    assert np.array_equal(fn(table)["image"], augment_batch(
        images, np.arange(8), cfg.augment, seed=0, epoch=2, out_size=24, always_resize=True))
    # optim.budget_s: the epoch count is the workers'; the tasks crop at the end size
    assert train_sizes(cfg.data, None) == {"out_size": 32, "sizes": None, "always_resize": True}
    plain = _cfg(tmp_path, {"enabled": False})
    assert train_sizes(plain.data, 4) == {"out_size": 32, "sizes": None, "always_resize": False}


class _Shard:
    def __init__(self, batches):
        self.batches = batches

    def iter_torch_batches(self, **_):
        return iter(self.batches)


class _Session:
    def __init__(self, batches):
        self.shards = {"train": _Shard(batches), "val": _Shard([])}

    def dataset_shard(self, name):
        return self.shards[name]


def test_stream_feed_resizes_on_the_worker_only_for_budgeted_runs(tmp_path):
    from cnn_ray.train.worker import _format_metrics, _StreamFeed

    batch = {"image": torch.from_numpy(_images(4)), "label": torch.arange(4)}
    budget = _cfg(tmp_path, {"start_size": 16, "step": 8}, optim={"budget_s": 60.0})
    got = list(_StreamFeed(budget, 0, torch.device("cpu"), _Session([batch])).train_batches(0, 24))
    assert tuple(got[0]["image"].shape) == (4, 24, 24, 3) and got[0]["label"] is batch["label"]
    epochs = _cfg(tmp_path, {"start_size": 16, "step": 8})  # the tasks cropped already
    got = list(_StreamFeed(epochs, 0, torch.device("cpu"), _Session([batch])).train_batches(0, 24))
    assert got[0]["image"] is batch["image"]
    line = {"epoch": 1, "train_image_size": 24, "images_per_sec": 10.0, "data_wait_share": 0.1,
            "epoch_s": 1.0}
    assert "size 24px" in _format_metrics(line, size=True)
    assert "size" not in _format_metrics(line)


# ------------------------------------------------------------------------------ compile, local
def test_compile_allows_a_graph_per_side_and_steps_through_the_ramp(tmp_path, monkeypatch):
    import torch._dynamo.config as dynamo_config

    from cnn_ray.models import create_model
    from cnn_ray.recipe.apply import allow_size_recompiles, prepare_model

    # the eager backend checks the wiring without an inductor build on a loaded CPU
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    # torch's own config.patch restores the settings (pytest's monkeypatch on torch's config
    # module left recompile_limit deleted: later tests read "does not exist")
    with dynamo_config.patch(recompile_limit=8):
        plain = _cfg(tmp_path, {"enabled": False})
        assert allow_size_recompiles(plain) == 8
        cfg = _cfg(tmp_path, {"start_size": 8, "end_size": 40, "step": 4},
                   model={"name": "simple_cnn", "compile": True})
        model = prepare_model(create_model("simple_cnn", num_classes=3), cfg)
        assert dynamo_config.recompile_limit == 2 * 9 + 8  # 8, 12, ..., 40: 9 sides
        torch._dynamo.reset()
        with dynamo_config.patch(automatic_dynamic_shapes=False,  # a graph per side
                                 fail_on_recompile_limit_hit=True):
            for side in range(8, 41, 4):
                out = model(torch.randn(2, 3, side, side))
                out.sum().backward()
                assert out.shape == (2, 3)
        torch._dynamo.reset()
    assert dynamo_config.recompile_limit == 8  # restored


def test_local_trainer_trains_each_epochs_side(tmp_path):
    from cnn_ray.train.local import train_arrays

    cfg = _cfg(tmp_path, {"start_size": 16, "step": 8}, augment=RRC,
               model={"name": "simple_cnn"}, optim={"epochs": 3, "batch_size": 8},
               precision={"dtype": "fp32"}, scaling={"torch_threads": 1})
    images, labels = _images(16), np.arange(16) % 2
    out = train_arrays(cfg, (images, labels), (images[:4], labels[:4]),
                       device=torch.device("cpu"), log=lambda msg: None)
    assert out["train_image_size_by_epoch"] == [cfg.data.crop_size_at(e, 3) for e in range(3)]
    assert out["train_image_size_by_epoch"] == [16, 24, 32]


# ------------------------------------------------------------------------------ Ray
def _photo_config(tmp_path: Path, data: dict, **sections) -> dict:
    from cnn_ray.testing import write_photo_tree

    cfg = {"data": {"train": str(write_photo_tree(tmp_path / "photos", per_class=10)),
                    "image_size": 32, "store_size": 40, "val_fraction": 0.2, "shard_size": 100,
                    "prepared_dir": str(tmp_path / "prepared"),
                    "progressive": {"enabled": True, "start_size": 24, "step": 8,
                                    "end_frac": 0.5}, **data},
           "augment": RRC, "model": {"name": "simple_cnn"},
           "optim": {"batch_size": 8, "epochs": 2}, "precision": {"dtype": "fp32"},
           "scaling": {"num_workers": 1, "cpus_per_worker": 1},
           "run": {"name": "prog", "storage_path": str(tmp_path / "runs")}}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@pytest.mark.ray
def test_streamed_datasets_give_each_epochs_side(ray_session, tmp_path):
    from cnn_ray.data.prepare import prepare_data
    from cnn_ray.train.data_modes import training_data

    def sides(cfg: TrainConfig) -> list[int]:
        train = training_data(cfg, prepare_data(cfg, progress=False)).datasets(cfg)["train"]
        return [next(iter(train.iter_batches(batch_size=4, batch_format="numpy")))["image"]
                .shape[1] for _ in range(2)]  # two executions: epochs 0 and 1

    cfg = TrainConfig.from_dict(_photo_config(tmp_path, {}))
    assert [cfg.data.crop_size_at(e, 2) for e in range(2)] == [24, 32]
    assert sides(cfg) == [24, 32]  # prepared shards, cropped in the Ray Data tasks
    raw = TrainConfig.from_dict(_photo_config(tmp_path, {"use_raw": True}))
    assert sides(raw) == [24, 32]  # raw files decoded every epoch
    budget = TrainConfig.from_dict(_photo_config(tmp_path, {}, optim={"budget_s": 30.0}))
    assert sides(budget) == [32, 32]  # the end size; the worker resizes down


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_memory_cache_run_trains_the_ramp_and_a_resumed_group_continues_it(ray_session,
                                                                          tmp_path):
    from cnn_ray.train.launch import run_training

    raw = _photo_config(tmp_path, {"cache": "memory",
                                   "progressive": {"enabled": True, "start_size": 16,
                                                   "step": 8, "end_frac": 0.75}},
                        optim={"epochs": 4}, run={"max_failures": 1})
    cfg = TrainConfig.from_dict(raw)
    marker = tmp_path / "killed.txt"
    result = run_training(cfg, fault_injection={"rank": 0, "epoch": 3, "step": 0,
                                                "marker": str(marker)})
    assert marker.exists(), "the fault was never injected"
    run_dir = Path(cfg.run.storage_path) / "prog"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert [m["train_image_size"] for m in lines] == \
        [cfg.data.crop_size_at(e, 4) for e in range(4)] == [16, 24, 24, 32]
    starts = [json.loads(line)["resumed_from_epoch"]
              for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert starts == [0, 2]  # the restarted group resumed at epoch 3 and kept its side
    assert result.metrics["train_image_size"] == 32
