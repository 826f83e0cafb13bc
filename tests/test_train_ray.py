"""End-to-end training on local Ray over real CIFAR-10 JPEGs: 2-worker DDP, resume, worker kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnn_ray.config import TrainConfig
from cnn_ray.train.checkpoint import load_checkpoint
from cnn_ray.train.launch import run_training
from conftest import read_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _cfg(data, tmp_path, **over) -> TrainConfig:
    raw = {
        "data": {"train": str(data["train"]), "val": str(data["test"]), "image_size": 32,
                 "shard_size": 500, "data_cpus": 0.5, "shuffle_buffer": 256},
        "model": {"name": "simple_cnn"},
        "optim": {"batch_size": 64, "epochs": 2, "lr": 0.05, "schedule": "onecycle"},
        "precision": {"dtype": "bf16"},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "torch_threads": 1},
        "run": {"name": "ddp", "storage_path": str(tmp_path / "runs"), "max_failures": 1,
                "log_every": 1000},
    }
    for key, value in over.items():
        section, _, leaf = key.partition("__")
        raw.setdefault(section, {})[leaf] = value
    return TrainConfig.from_dict(raw)


def test_two_worker_ddp_run_and_resume(ray_session, cifar_ddp, tmp_path):
    cfg = _cfg(cifar_ddp, tmp_path)
    result = run_training(cfg)
    m = result.metrics
    assert m["world_size"] == 2
    assert m["val_images"] == 500  # the whole validation set, aggregated over both ranks
    assert m["train_images"] == 2000  # every training image once per epoch (1000 per rank)
    assert 0.0 <= m["data_wait_share"] <= 1.0 and m["images_per_sec"] > 0
    assert m["val_top1"] > 0.18  # learns something in 2 epochs (chance is 0.1)
    assert "val_top5" in m  # 10 classes
    run_dir = Path(cfg.run.storage_path) / "ddp"
    lines = read_jsonl(run_dir / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2]
    assert json.loads((run_dir / "class_names.json").read_text())["class_names"][0] == "airplane"
    assert (run_dir / "config.yaml").exists()
    state = load_checkpoint(result.checkpoint.path)
    assert state.epoch == 2 and state.meta["config"]["model"]["name"] == "simple_cnn"
    assert state.optimizer_state is not None and state.scheduler_state is not None

    # Re-submitting the same run name with a larger budget continues from epoch 2.
    more = _cfg(cifar_ddp, tmp_path, optim__epochs=3)
    result2 = run_training(more)
    assert result2.metrics["epoch"] == 3
    assert [line["epoch"] for line in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    # Watching: rank 0's TensorBoard scalars continue the same curve across the resume (global
    # step = epoch, read by tensorboard's own loader), and the learning-curve PNG is there.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("top1/val")] == [1, 2, 3]
    assert [e.step for e in acc.Scalars("speed/images_per_sec")] == [1, 2, 3]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # rank 0, 2 runs
    assert (run_dir / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_killed_worker_resumes_from_last_checkpoint(ray_session, cifar_small, tmp_path):
    cfg = _cfg(cifar_small, tmp_path, run__name="faulty")
    marker = tmp_path / "killed.txt"
    result = run_training(cfg, fault_injection={"rank": 1, "epoch": 2, "step": 2, "marker": str(marker)})
    assert marker.exists(), "the fault was never injected"
    assert result.metrics["epoch"] == 2
    epochs = [line["epoch"] for line in read_jsonl(Path(cfg.run.storage_path) / "faulty" / "metrics.jsonl")]
    # epoch 1 finished and was checkpointed before the kill in epoch 2; the restarted group
    # continued from it: epoch 1 is never trained twice.
    assert epochs == [1, 2]


def test_memory_cache_two_workers_and_killed_worker(ray_session, cifar_ddp, tmp_path):
    """data.cache=memory: no Ray Datasets, equal disjoint train shares, the whole val set, and a
    killed worker's restarted group gets the same arrays back from the object store."""
    cfg = _cfg(cifar_ddp, tmp_path, run__name="mem", data__cache="memory")
    marker = tmp_path / "killed.txt"
    result = run_training(cfg, fault_injection={"rank": 0, "epoch": 2, "step": 3,
                                                "marker": str(marker)})
    assert marker.exists(), "the fault was never injected"
    m = result.metrics
    assert m["epoch"] == 2 and m["world_size"] == 2
    assert m["train_images"] == 2000 and m["val_images"] == 500
    assert m["val_top1"] > 0.18 and m["data_wait_share"] < 0.5
    run_dir = Path(cfg.run.storage_path) / "mem"
    assert [line["epoch"] for line in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    events = read_jsonl(run_dir / "events.jsonl")
    assert sorted(e["rank"] for e in events) == [0, 0, 1, 1]  # both workers, twice
    starts = [e["resumed_from_epoch"] for e in events if e["rank"] == 0]
    assert starts == [0, 1]  # one restart, from the epoch-1 checkpoint
    # start-up breakdown, in order: process created, imports begin, function entered, ready
    assert all(e["process_started"] <= e["import_started"] <= e["entered"] <= e["time"]
               for e in events)


def test_benchmark_pipeline_figure_is_a_fresh_run_every_time(ray_session, cifar_small, tmp_path):
    """jobs/benchmark.py (b): two runs of the same config each train their epoch in a run dir
    of their own; none resumes the other's (or run.name's) checkpoint and reports stale
    figures."""
    from cnn_ray.benchmark import pipeline_images_per_sec

    cfg = _cfg(cifar_small, tmp_path, run__name="bench", optim__epochs=1, data__cache="memory",
               scaling__num_workers=1)
    run_training(cfg)  # a finished run under run.name, as a user's earlier training leaves it
    first, second = pipeline_images_per_sec(cfg), pipeline_images_per_sec(cfg)
    assert first["run_name"] != second["run_name"]
    for m in (first, second):
        assert m["epoch"] == 1 and m["images_per_sec"] > 0 and m["run_name"].startswith("bench_")
        lines = read_jsonl(Path(cfg.run.storage_path) / m["run_name"] / "metrics.jsonl")
        assert [line["epoch"] for line in lines] == [1]
        events = read_jsonl(Path(cfg.run.storage_path) / m["run_name"] / "events.jsonl")
        assert [e["resumed_from_epoch"] for e in events] == [0]  # trained, not resumed


def test_storage_uri_gets_run_files_metrics_and_resume(ray_session, cifar_small, tmp_path):
    """run.storage_path as a URI (file:// here; s3:// and gs:// take the same pyarrow path):
    Ray Train's checkpoints and our run files, metrics and events all land under it, and a
    re-submitted run resumes and extends metrics.jsonl (rewritten whole: object stores have no
    append)."""
    uri = f"file://{tmp_path / 'bucket'}"
    over = dict(run__name="remote", run__storage_path=uri, data__cache="memory",
                data__prepared_dir=str(tmp_path / "prepared"), scaling__num_workers=1,
                optim__epochs=1)
    result = run_training(_cfg(cifar_small, tmp_path, **over))
    assert result.metrics["epoch"] == 1
    run_dir = tmp_path / "bucket" / "remote"
    assert (run_dir / "config.yaml").exists() and (run_dir / "class_names.json").exists()
    result = run_training(_cfg(cifar_small, tmp_path, **dict(over, optim__epochs=2)))
    assert result.metrics["epoch"] == 2
    assert [m["epoch"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    assert [e["resumed_from_epoch"] for e in read_jsonl(run_dir / "events.jsonl")] == [0, 1]
    assert any(p.name.startswith("checkpoint_") for p in run_dir.iterdir())


def test_cluster_fit_check_counts_data_cpus_only_when_streaming(ray_session, cifar_small, tmp_path):
    """4 workers x 1 CPU fill the 4-CPU test cluster: streaming also needs data.data_cpus (a
    named error before anything is requested); data.cache=memory runs no Ray Data and fits."""
    from cnn_ray.config import ConfigError
    from cnn_ray.train.launch import check_cluster_fits

    with pytest.raises(ConfigError, match=r"data.data_cpus \(0.5, data.cache=none\)"):
        check_cluster_fits(_cfg(cifar_small, tmp_path, scaling__num_workers=4))
    check_cluster_fits(_cfg(cifar_small, tmp_path, scaling__num_workers=4, data__cache="memory"))


def test_every_recipe_switch_two_worker_smoke_and_ema_resume(ray_session, cifar_ddp, tmp_path):
    """Issue 11: a 2-worker DDP smoke run with every technique switched on completes (the
    whitening bias is frozen after epoch 1, which re-wraps DDP) and reports its TTA views; a
    resume restores the EMA (its update count goes on from the checkpoint's)."""
    over = dict(
        run__name="recipe", run__smoke=True,
        model__name="airbench", model__width_mult=0.25,
        model__whitening={"enabled": True, "samples": 256, "bias_epochs": 1},
        model__batchnorm={"momentum": 0.4, "eps": 1e-12, "freeze_scale": True,
                          "bias_lr_mult": 64.0},
        optim__optimizer="muon", optim__decoupled=True, optim__schedule="linear_decay",
        optim__label_smoothing=0.2, optim__lr=1.0,
        optim__ema={"enabled": True, "every_steps": 1, "decay": 0.9},
        augment__hflip={"mode": "alternating"}, augment__mixup={"enabled": True},
        eval__tta="flip_translate",
    )
    cfg = _cfg(cifar_ddp, tmp_path, **over)
    result = run_training(cfg)
    m = result.metrics
    assert m["epoch"] == 2 and m["world_size"] == 2 and m["tta_views"] == 6
    assert 0.0 <= m["val_top1"] <= 1.0
    state = load_checkpoint(result.checkpoint.path)
    assert int(state.ema_state["state"]["n_averaged"]) == 4  # 2 smoke steps x 2 epochs
    stem = next(v for v in state.model_state.values() if v.ndim == 4)  # the first conv
    assert stem.shape[0] == 24 and torch.equal(stem[12:], -stem[:12])  # frozen +/- filters

    more = _cfg(cifar_ddp, tmp_path, **dict(over, optim__epochs=3, data__cache="memory"))
    result2 = run_training(more)
    assert result2.metrics["epoch"] == 3 and result2.metrics["tta_views"] == 6
    state2 = load_checkpoint(result2.checkpoint.path)
    assert int(state2.ema_state["state"]["n_averaged"]) == 6  # restored 4, then 2 more
