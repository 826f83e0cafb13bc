"""Config: typed validation with named keys, YAML + overrides, round trip."""

from __future__ import annotations

import pytest

from cnn_ray.cli import main
from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.config_io import apply_overrides, load_train_config


def _raw(tmp_path, **extra):
    raw = {"data": {"train": str(tmp_path)}}
    raw.update(extra)
    return raw


def test_defaults_and_round_trip(tmp_path):
    cfg = TrainConfig.from_dict(_raw(tmp_path))
    assert cfg.optim.optimizer == "sgd" and cfg.precision.dtype == "auto"
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    "raw_update, key, expected",
    [
        ({"optim": {"lr": -0.1}}, "optim.lr", "greater than 0"),
        ({"optim": {"lrr": 0.1}}, "optim.lrr", "unknown key"),
        ({"scaling": {"num_workers": 0}}, "scaling.num_workers", "greater than or equal to 1"),
        ({"optim": {"batch_size": "big"}}, "optim.batch_size", "integer"),
        ({"precision": {"dtype": "fp8"}}, "precision.dtype", "'fp32', 'bf16' or 'fp16'"),
        ({"augment": {"hflip": {"p": 1.5}}}, "augment.hflip.p", "less than or equal to 1"),
        ({"modle": {"name": "x"}}, "modle", "unknown key"),
        ({"augment": {"random_resized_crop": {"scale": [0.9, 0.1]}}},
         "augment.random_resized_crop.scale", "low <= high"),
    ],
)
def test_bad_values_name_the_key(tmp_path, raw_update, key, expected):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(_raw(tmp_path, **raw_update), source="recipe.yaml")
    msg = str(info.value)
    assert f"recipe.yaml: {key}:" in msg
    assert expected in msg


def test_missing_data_path_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train: path does not exist: .*nope"):
        TrainConfig.from_dict({"data": {"train": str(tmp_path / "nope")}})


def test_batch_must_divide_over_workers_and_accumulation(tmp_path):
    with pytest.raises(ConfigError, match="optim.batch_size must be a positive multiple"):
        TrainConfig.from_dict(_raw(tmp_path, optim={"batch_size": 100, "grad_accum_steps": 3}))
    cfg = TrainConfig.from_dict(_raw(tmp_path, optim={"batch_size": 96, "grad_accum_steps": 3},
                                     scaling={"num_workers": 2}))
    assert cfg.per_worker_batch_size() == 16


def test_fp16_needs_gpu(tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs scaling.use_gpu"):
        TrainConfig.from_dict(_raw(tmp_path, precision={"dtype": "fp16"}))


def test_memory_cache_needs_prepared_shards(tmp_path):
    with pytest.raises(ConfigError, match="data.cache=memory .* data.use_raw=false"):
        TrainConfig.from_dict(_raw(tmp_path, data={"train": str(tmp_path), "use_raw": True,
                                                   "cache": "memory"}))
    with pytest.raises(ConfigError, match="data.cache"):
        TrainConfig.from_dict(_raw(tmp_path, data={"train": str(tmp_path), "cache": "gpu"}))


def test_pipeline_cpus_only_when_streaming(tmp_path):
    stream = TrainConfig.from_dict(_raw(tmp_path, data={"train": str(tmp_path), "data_cpus": 0.25}))
    memory = TrainConfig.from_dict(_raw(tmp_path, data={"train": str(tmp_path), "data_cpus": 0.25,
                                                        "cache": "memory"}))
    assert stream.data.pipeline_cpus == 0.25 and memory.data.pipeline_cpus == 0.0


def test_overrides_are_typed_and_nested():
    out = apply_overrides({"optim": {"lr": 0.1}}, ["optim.lr=0.05", "model.name=resnet18",
                                                   "augment.cutout.enabled=true",
                                                   "augment.random_resized_crop.scale=[0.5, 1.0]"])
    assert out["optim"]["lr"] == 0.05
    assert out["model"]["name"] == "resnet18"
    assert out["augment"]["cutout"]["enabled"] is True
    assert out["augment"]["random_resized_crop"]["scale"] == [0.5, 1.0]
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="optim.lr is not a section"):
        apply_overrides({"optim": {"lr": 0.1}}, ["optim.lr.x=1"])


def test_yaml_file_with_override_typo(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(f"data:\n  train: {tmp_path}\noptim:\n  lr: 0.1\n")
    assert load_train_config(str(f), ["optim.lr=0.2"]).optim.lr == 0.2
    with pytest.raises(ConfigError, match=r"c.yaml: optim.weight_decy: unknown key"):
        load_train_config(str(f), ["optim.weight_decy=0.1"])


def test_cli_reports_config_error_before_ray(tmp_path, capsys, monkeypatch):
    import ray

    def no_ray(*a, **k):
        raise AssertionError("Ray must not be started for an invalid config")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  train: /does/not/exist\n")
    assert main(["train", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "data.train: path does not exist" in err


def test_shipped_recipes_parse():
    from pathlib import Path
    repo = Path(__file__).parents[1]
    paths = sorted([*(repo / "jobs" / "configs").glob("*.yaml"),
                    *(repo / "benchmarks" / "configs").glob("*.yaml")])
    assert any(p.parent.parent.name == "benchmarks" for p in paths)
    for path in paths:
        if path.name.startswith("sweep"):
            continue
        cfg = load_train_config(str(path), check_paths=False)
        assert cfg.optim.epochs >= 1


def test_storage_uri_needs_a_local_prepared_dir(tmp_path):
    """Prepared shards are written with local file I/O: with run.storage_path a URI their
    default place (under it) would be a local folder literally named 's3:'."""
    with pytest.raises(ConfigError, match="run.storage_path='s3://b/runs' .* data.prepared_dir"):
        TrainConfig.from_dict(_raw(tmp_path, run={"storage_path": "s3://b/runs"}))
    with pytest.raises(ConfigError, match="data.prepared_dir='s3://b/prep'"):
        TrainConfig.from_dict(_raw(tmp_path, data={"train": str(tmp_path),
                                                   "prepared_dir": "s3://b/prep"}))
    ok = TrainConfig.from_dict(_raw(tmp_path, run={"storage_path": "s3://b/runs"},
                                    data={"train": str(tmp_path), "prepared_dir": str(tmp_path)}))
    assert ok.run.storage_path == "s3://b/runs"


def test_run_files_on_a_storage_uri(tmp_path):
    from cnn_ray.io import append_jsonl, read_text, write_text

    for directory in (f"file://{tmp_path}/uri/run", str(tmp_path / "local" / "run")):
        assert read_text(directory, "metrics.jsonl") is None
        write_text(directory, "config.yaml", "a: 1\n")
        append_jsonl(directory, "metrics.jsonl", {"epoch": 1})
        append_jsonl(directory, "metrics.jsonl", {"epoch": 2})
        assert read_text(directory, "config.yaml") == "a: 1\n"
        assert read_text(directory, "metrics.jsonl") == '{"epoch": 1}\n{"epoch": 2}\n'
    assert (tmp_path / "uri" / "run" / "metrics.jsonl").exists()
    assert not list((tmp_path / "local" / "run").glob("*.tmp-*"))  # atomic writes cleaned up
