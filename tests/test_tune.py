"""Sweeps on the shared local Ray instance over real CIFAR-10 JPEGs (tiny: 400 train images).

One 4-trial ASHA sweep (module fixture) feeds every check: it is interrupted once mid-way
(SIGUSR1, like Ctrl+C), resumed, then restored again after it finished. Trials use simple_cnn,
batch 64, 1 worker each, two at a time. The fixture runs twice: ``trainer`` (streamed Ray Data,
each trial a TorchTrainer run) and ``in_trial`` (the memory cache: each trial trains in the
Tune trial's own process, writing its checkpoints into the run dir).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest
from ray import tune

from cnn_ray.config import TrainConfig
from cnn_ray.config_io import load_train_config
from cnn_ray.train.launch import run_training
from cnn_ray.tune import resources_released, run_sweep
from conftest import read_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Learning rates far apart: the two tiny ones barely move the model, so their validation loss
# after epoch 1 differs from the others' and ASHA (keep the best 1/2 per rung) stops some.
LRS = [0.05, 0.1, 1e-6, 1e-7]


def _base(data, storage: Path, name: str, epochs: int, cache: str = "none") -> TrainConfig:
    return TrainConfig.from_dict({
        "data": {"train": str(data["train"]), "val": str(data["test"]), "image_size": 32,
                 "shard_size": 500, "data_cpus": 0.5, "shuffle_buffer": 256, "cache": cache},
        "model": {"name": "simple_cnn"},
        "optim": {"batch_size": 64, "epochs": epochs, "lr": 0.05},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1},
        "run": {"name": name, "storage_path": str(storage), "log_every": 1000},
    })


def _starts(sweep_dir) -> list[str]:
    """Trial ids in the order their trial function started (one entry per start)."""
    return [s["trial_id"] for s in read_jsonl(Path(sweep_dir) / "trial_starts.jsonl")
            if s["event"] == "start"]


def _wait_released(timeout: float = 20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if resources_released():
            return True
        time.sleep(0.5)
    return resources_released()


class _InterruptOnce(tune.Callback):
    """Sends the driver SIGUSR1 (Tune's "stop and save" signal, like Ctrl+C) once: when a trial
    reports while another trial has already ended, so the sweep stops with finished, running
    and not yet started trials."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_result(self, iteration, trials, trial, result, **info):
        ended = [t for t in trials if t.status == "TERMINATED" and t is not trial]
        if ended and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture(scope="module", params=["trainer", "in_trial"])
def asha(request, ray_session, cifar_small, tmp_path_factory):
    """A 4-trial ASHA sweep, interrupted once mid-way (SIGUSR1), then resumed; then restored
    again after it finished."""
    storage = tmp_path_factory.mktemp("sweeps")
    mode = request.param
    base = _base(cifar_small, storage, "asha", epochs=2,
                 cache="memory" if mode == "in_trial" else "none")
    kw = dict(num_samples=1, metric="val_loss", mode="min", verbose=0, max_concurrent_trials=2,
              scheduler={"kind": "asha", "max_t": 2, "grace_period": 1, "reduction_factor": 2})
    space = {"optim.lr": {"grid": LRS}}
    marker = storage / "interrupted"
    first = run_sweep(base, space, tune_callbacks=[_InterruptOnce(str(marker))], **kw)
    assert marker.exists(), "the sweep was never interrupted"
    starts_first = _starts(first.path)
    result = run_sweep(base, space, resume=True, **kw)
    again = run_sweep(base, space, **kw)  # the same sweep exists and is finished: restored
    return {"base": base, "first": first, "result": result, "again": again,
            "starts_first": starts_first, "mode": mode}


def test_asha_stops_some_trials_early(asha):
    result = asha["result"]
    assert len(result.trials) == 4 and not result.interrupted
    assert {t.status for t in result.trials} <= {"completed", "stopped_early"}, result.table()
    assert {t.config["optim.lr"] for t in result.trials} == set(LRS)
    stopped = [t for t in result.trials if t.status == "stopped_early"]
    assert stopped and all(t.epochs == 1 for t in stopped), result.table()
    assert any(t.status == "completed" and t.epochs == 2 for t in result.trials)
    assert result.best is not None and result.best.best == min(t.best for t in result.trials)
    assert result.concurrency == 2  # as asked (the CPUs fit 2 streamed or 4 in-trial ones)


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(asha):
    first, result = asha["first"], asha["result"]
    assert first.interrupted and not first.resumed and result.resumed
    finished = [t.trial_id for t in first.trials if t.status in ("completed", "stopped_early")]
    assert finished and first.unfinished
    starts = _starts(result.path)
    assert starts[:len(asha["starts_first"])] == asha["starts_first"]
    for trial_id in finished:
        assert starts.count(trial_id) == 1, (trial_id, starts)  # never ran again
    for trial_id in first.unfinished:
        # running when interrupted: restarted once more; still pending then: started once now
        expected = 2 if trial_id in asha["starts_first"] else 1
        assert starts.count(trial_id) == expected, (trial_id, starts)
    assert len(set(starts)) == 4
    for t in result.trials:  # a restarted trial continued from its Train checkpoint
        epochs = [m["epoch"] for m in read_jsonl(Path(result.path) / "train_runs" / t.trial_id /
                                                 "metrics.jsonl")]
        assert epochs.count(1) == 1 and epochs[-1] == t.epochs, (t.trial_id, epochs)
    # Restoring the finished sweep ran nothing and found the same best trial.
    again = asha["again"]
    assert again.resumed and not again.interrupted and _starts(again.path) == starts
    assert again.best.trial_id == result.best.trial_id


def test_trials_share_one_prepared_dataset_and_name_train_runs_by_trial(asha):
    base, result = asha["base"], asha["result"]
    assert len(list((Path(base.run.storage_path) / "prepared").iterdir())) == 1
    for t in result.trials:
        run = Path(result.path) / "train_runs" / t.trial_id
        assert (run / "config.yaml").exists()
        assert t.curve and [e for e, _ in t.curve] == list(range(1, t.epochs + 1))
        assert t.startup_s is not None and t.startup_s >= 0
        assert any(run.glob("checkpoint_*"))  # the run's checkpoints, whoever trained it
        if asha["mode"] == "in_trial":  # written by the trial, one per epoch, newest kept
            from cnn_ray.train.checkpoint import load_checkpoint

            assert t.checkpoint and Path(t.checkpoint).parent == run
            assert load_checkpoint(t.checkpoint).epoch == t.epochs


def test_in_trial_training_runs_in_the_trial_process(asha):
    """In-trial mode: every (re)start of a trial's training happened in a process that ran the
    trial function (no Train worker actor); the TorchTrainer mode uses worker actors."""
    result = asha["result"]
    trial_pids = {s["pid"] for s in read_jsonl(Path(result.path) / "trial_starts.jsonl")
                  if s["event"] == "start"}
    for t in result.trials:
        starts = [e for e in read_jsonl(Path(result.path) / "train_runs" / t.trial_id /
                                        "events.jsonl") if e.get("event") == "start"]
        assert starts
        inside = {e["pid"] in trial_pids for e in starts}
        assert inside == ({True} if asha["mode"] == "in_trial" else {False}), (t.trial_id, starts)


def test_results_table_curves_and_best_config(asha):
    base, result = asha["base"], asha["result"]
    rows = list(csv.DictReader(open(result.table_path)))
    assert len(rows) == 4
    assert {"trial_id", "status", "optim.lr", "best_val_loss", "epochs", "wall_s"} <= set(rows[0])
    assert sorted(r["status"] for r in rows) == sorted(t.status for t in result.trials)
    png = Path(result.curves_path).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert result.best_checkpoint and Path(result.best_checkpoint).is_dir()
    summary = json.loads(json.dumps(result.summary(), default=str))
    assert summary["trials"] == 4 and summary["stopped_early"] >= 1

    # The best config is a recipe jobs/train.py runs as is: full config, fresh run name.
    cfg = load_train_config(result.best_config_path, ["optim.epochs=1"])
    assert cfg.run.name == "asha_sweep_best" and cfg.optim.lr == result.best.config["optim.lr"]
    assert cfg.run.storage_path == base.run.storage_path and cfg.data.train == base.data.train
    out = run_training(cfg)
    assert out.metrics["epoch"] == 1
    assert _wait_released()


def test_no_resources_left_reserved(asha):
    import ray

    assert _wait_released(), (ray.available_resources(), ray.cluster_resources())
    assert ray.available_resources()["CPU"] == ray.cluster_resources()["CPU"]


def test_longest_first_starts_the_costliest_network_first(ray_session, cifar_small, tmp_path):
    """sweep.order=longest_first: drawn [simple_cnn, resnet9] start as [resnet9, simple_cnn]
    (35x the FLOPs; timed on the driver before Tune starts), one trial at a time; a restored
    sweep keeps Tune's saved order (the spec holds the points as drawn)."""
    base = _base(cifar_small, tmp_path, "order", epochs=1, cache="memory")
    points = [{"model.name": "simple_cnn"}, {"model.name": "resnet9", "model.width_mult": 0.5}]
    kw = dict(points=points, order="longest_first", scheduler="fifo", verbose=0,
              max_concurrent_trials=1)
    space = {"model.name": {"choice": ["simple_cnn", "resnet9"]}}
    result = run_sweep(base, space, **kw)
    by_id = {t.trial_id: t.config["model.name"] for t in result.trials}
    assert [by_id[i] for i in _starts(result.path)] == ["resnet9", "simple_cnn"]
    again = run_sweep(base, space, **kw)
    assert again.resumed and _starts(again.path) == _starts(result.path)


def test_promotion_asha_pauses_at_rungs_and_resumes_from_the_checkpoint(ray_session, cifar_small,
                                                                       tmp_path):
    """scheduler.kind=asha_promotion, 4 in-trial configurations, rungs at epochs 1 and 2 of 3,
    half promoted: every trial pauses at epoch 1; the best 2 resume (a second start of the same
    trial, continuing from its epoch-1 checkpoint), the best of those trains epoch 3. Exactly
    synchronous halving's 4 + 2 + 1 epochs, and nothing left reserved."""
    base = _base(cifar_small, tmp_path, "promo", epochs=3, cache="memory")
    result = run_sweep(base, {"optim.lr": {"grid": LRS}}, num_samples=1, metric="val_loss",
                       mode="min", verbose=0, max_concurrent_trials=2,
                       scheduler={"kind": "asha_promotion", "grace_period": 1,
                                  "reduction_factor": 2})
    assert len(result.trials) == 4 and not result.interrupted
    assert sorted(t.epochs for t in result.trials) == [1, 1, 2, 3], result.table()
    assert sum(t.epochs for t in result.trials) == 7
    assert len(_starts(result.path)) > 4, "no paused trial was ever resumed"
    assert [t.status for t in result.trials].count("completed") == 1, result.table()
    starts = _starts(result.path)
    for t in result.trials:
        # one start, plus one per promotion that waited for a paused trial (a trial that is
        # the rung's best as it reports continues at once)
        assert 1 <= starts.count(t.trial_id) <= t.epochs, (t.trial_id, t.epochs, starts)
        epochs = [m["epoch"] for m in read_jsonl(Path(result.path) / "train_runs" / t.trial_id /
                                                 "metrics.jsonl")]
        assert epochs == list(range(1, t.epochs + 1)), (t.trial_id, epochs)  # resumed, not redone
    rungs = json.loads((Path(result.path) / "asha_rungs.json").read_text())
    assert len(rungs["recorded"]["1"]) == 4 and len(rungs["promoted"]["1"]) == 2
    assert len(rungs["recorded"]["2"]) == 2 and len(rungs["promoted"]["2"]) == 1
    assert _wait_released()
