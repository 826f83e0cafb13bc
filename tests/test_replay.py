"""Replaying recorded learning curves through Ray Tune's ASHAScheduler (no Ray cluster, no
training): which trials it stops, the epochs and modelled wall time, the oracle bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_ray.config import ConfigError
from cnn_ray.tune.replay import TrialRecord, load_records, rank_correlation, replay
from cnn_ray.tune.settings import SchedulerSettings

REPO = Path(__file__).resolve().parents[1]


def _rec(tid: str, metric: list[float], seconds: float = 10.0) -> TrialRecord:
    return TrialRecord(tid, list(metric), [seconds] * len(metric))


@pytest.fixture
def curves() -> list[TrialRecord]:
    # ASHA grace 1, rf 2, max_t 4 -> rungs at epochs 1, 2, 4; run one trial at a time:
    # a: first at every rung, continues to the budget;
    # b: 0.4 < median {a: 0.5} at rung 1 -> stopped after epoch 1 (though it ends best);
    # c: beats the cutoffs at rungs 1 (0.45) and 2 (0.6) -> runs to the budget;
    # d: passes rung 1 (0.55 >= 0.5), 0.5 < 0.65 (median of a 0.6, c 0.7) at rung 2 -> stopped.
    return [_rec("a", [0.5, 0.6, 0.7, 0.8]), _rec("b", [0.4, 0.5, 0.7, 0.95]),
            _rec("c", [0.6, 0.7, 0.75, 0.9]), _rec("d", [0.55, 0.5, 0.6, 0.7])]


ASHA = SchedulerSettings(kind="asha", max_t=4, grace_period=1, reduction_factor=2)


def test_asha_replay_stops_the_trials_asha_would(curves):
    out = replay(curves, ASHA, concurrency=1)
    assert out.stopped_at == {"a": 4, "b": 1, "c": 4, "d": 2}
    assert out.epochs == 11 and out.wall_s == pytest.approx(110.0)
    assert (out.best, out.best_trial) == (0.9, "c")


def test_oracle_sees_final_values_and_keeps_the_best_trial(curves):
    out = replay(curves, ASHA, concurrency=1, oracle=True)
    assert out.stopped_at["b"] == 4  # its final 0.95 beats every cutoff
    assert (out.best, out.best_trial) == (0.95, "b")


def test_fifo_replay_packs_trials_into_concurrency_slots(curves):
    fifo = replay(curves, SchedulerSettings(kind="fifo", max_t=4), concurrency=2)
    assert fifo.epochs == 16 and fifo.wall_s == pytest.approx(80.0)
    uneven = [TrialRecord("x", [0.1, 0.2], [10.0, 10.0]), TrialRecord("y", [0.3], [30.0]),
              TrialRecord("z", [0.2], [5.0])]
    out = replay(uneven, SchedulerSettings(kind="fifo"), concurrency=2)
    assert out.wall_s == pytest.approx(30.0)  # z starts when x ends (20 s) and ends at 25 s
    assert out.best_trial == "y"
    # a record shorter than the budget ended on its own (the recipe's early stopping)
    out = replay([_rec("a", [0.5, 0.6]), _rec("b", [0.4, 0.5, 0.6, 0.7])], ASHA, concurrency=1)
    assert out.stopped_at == {"a": 2, "b": 1} and out.epochs == 3


def test_min_mode_prefers_lower_values():
    recs = [_rec("a", [2.0, 1.0]), _rec("b", [3.0, 2.5])]  # losses
    out = replay(recs, SchedulerSettings(kind="asha", max_t=2, grace_period=1,
                                         reduction_factor=2), mode="min", concurrency=1,
                 metric_name="val_loss")
    assert out.stopped_at == {"a": 2, "b": 1} and out.best == 1.0


def test_replay_refuses_what_it_cannot_model(curves, tmp_path):
    (tmp_path / "sweep_spec.json").write_text(json.dumps({"scheduler": {"kind": "asha"}}))
    with pytest.raises(ConfigError, match="ran scheduler 'asha'"):
        load_records(str(tmp_path))
    with pytest.raises(ConfigError, match="median"):
        replay(curves, SchedulerSettings(kind="median"), concurrency=1)
    with pytest.raises(ConfigError, match="concurrency"):
        replay(curves, ASHA, concurrency=0)


def test_load_records_reads_tune_result_files(tmp_path):
    for i, vals in enumerate([[0.2, 0.4], [0.3, 0.1], [0.25, 0.3]]):
        d = tmp_path / f"t_0000{i}"
        d.mkdir()
        rows = [{"trial_id": d.name, "epoch": e + 1, "val_top1": v, "time_this_iter_s": 5.0 + e}
                for e, v in enumerate(vals)]
        (d / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recs = load_records(str(tmp_path))
    assert [r.trial_id for r in recs] == ["t_00000", "t_00001", "t_00002"]
    assert recs[1].metric == [0.3, 0.1] and recs[0].epoch_s == [5.0, 6.0]
    assert rank_correlation(recs) == [pytest.approx(-1.0), pytest.approx(1.0)]
    assert rank_correlation(recs[:2]) == [None, None]  # undefined with fewer than 3 trials
    with pytest.raises(ConfigError, match="no 'val_top5' results"):
        load_records(str(tmp_path), metric="val_top5")
    with pytest.raises(ConfigError, match="no trial results"):
        load_records(str(tmp_path / "missing"))


def test_replay_script_prints_ratios_and_oracle(tmp_path):
    for i, vals in enumerate([[0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.7, 0.95],
                              [0.6, 0.7, 0.75, 0.9], [0.55, 0.5, 0.6, 0.7]]):
        d = tmp_path / f"t_{i:05d}"
        d.mkdir()
        (d / "result.json").write_text("\n".join(json.dumps(
            {"epoch": e + 1, "val_top1": v, "time_this_iter_s": 10.0})
            for e, v in enumerate(vals)))
    out = tmp_path / "replay.json"
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "replay_sweep.py"), str(tmp_path),
                           "--concurrency", "1", "--grace", "1", "--rf", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    row = figures["settings"][0]
    assert (row["epochs"], row["ratio"], row["gap_points"]) == (11, round(110 / 160, 3), -5.0)
    assert row["oracle_gap_points"] == 0.0 and "oracle ratio" in proc.stdout


def test_worker_import_does_not_pull_in_torchvision():
    """torchvision (and torch._dynamo under it) is imported only when a torchvision model is
    built: every Train worker of the small families saves that start-up time."""
    code = ("import sys, cnn_ray.train.worker, cnn_ray.tune.sweep; "
            "print('torchvision' in sys.modules, 'torch._dynamo' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


@pytest.mark.ray
@pytest.mark.slow
def test_benchmark_sweep_script_end_to_end(ray_session, cifar_root, tmp_path):
    """benchmarks/benchmark_sweep.py, tiny: the same configs under ASHA and FIFO, the figures it
    prints (ratio, start-ups, hardware) and the replay of its own FIFO run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_sweep_job",
                                                  REPO / "benchmarks" / "benchmark_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.json"
    assert mod.main(["--quick", "--compute-steps", "2", "--trials", "3", "--fifo-trials", "2",
                     "--epochs", "2", "--train-per-class", "16", "--val-per-class", "4",
                     "--concurrency", "1", "--threads", "1", "--storage",
                     str(tmp_path / "runs"), "--json", str(out)]) == 0
    f = json.loads(out.read_text())
    # FIFO runs the first 2 of the 3 configurations to the end, ASHA all 3 (some stopped)
    assert f["fifo"]["trials"] == 2 and f["asha"]["trials"] == 3
    assert f["fifo"]["epochs_trained"] == 4 and f["fifo"]["statuses"] == {"completed": 2}
    # the default asha_promotion: 3 trials at rung 1, floor(3 / 2) = 1 promoted to epoch 2
    assert f["asha"]["scheduler"]["kind"] == "asha_promotion"
    assert f["asha"]["epochs_trained"] == 4
    assert [c["model.name"] for c in f["configs"]] and f["ratio_asha_over_fifo"] > 0
    # every trial on the schedule whose early epochs rank like the final ones; quick: rf 2
    assert f["settings"]["schedule"] == "rung_anneal"
    assert f["asha"]["scheduler"]["reduction_factor"] == 2
    assert len(f["fifo"]["startup_s"]) == 2 and all(s >= 0 for s in f["fifo"]["startup_s"])
    assert f["startup_seconds_median"] >= 0 and isinstance(f["target_best_met"], bool)
    # one trial at a time: a single slot, busy most of the sweep (never more than all of it)
    assert 0.0 < f["fifo"]["slot_occupancy"] <= 1.0
    phases = f["fifo"]["startup_phases"]  # memory cache, 1 worker: trials train in-trial
    assert set(phases) == {"trial_function", "to_training_function",
                           "model_optimizer_checkpoint"} and all(v >= 0 for v in phases.values())
    # the machine's pure-compute speed of each distinct network, measured before the sweeps
    speeds = f["hardware"]["pure_compute_images_per_sec"]
    networks = {json.dumps({k: v for k, v in c.items() if k.startswith("model.")},
                           sort_keys=True) for c in f["configs"]}
    assert len(speeds) == len(networks) and all(n["images_per_sec"] > 0 for n in speeds)
    assert {json.dumps(n["network"], sort_keys=True) for n in speeds} == networks
    assert all(n["threads"] == 1 and n["precision"] in ("fp32", "bf16") for n in speeds)
    replayed = f["replay"]
    assert 3 <= replayed["epochs"] <= 4  # (tiny validation sets: ties may break either way)
    assert replayed["oracle_epochs"] <= 4 and len(replayed["rank_correlation"]) == 2


def test_promotion_replay_pauses_and_promotes_as_the_sweep_would(curves):
    """asha_promotion, one slot (rungs 1 and 2 of 4, half promoted): a pauses at 1 (alone);
    b (0.4) pauses and a, the rung's best of 2, resumes to pause at 2 (alone); c (0.6) pauses
    (rung 1's one promotion of 3 is taken); d (0.55) is 2nd of 4 and continues at once, then
    0.5 < a's 0.6 at rung 2 pauses it and a resumes to the budget; b, c, d are stopped."""
    out = replay(curves, SchedulerSettings(kind="asha_promotion", max_t=4, grace_period=1,
                                           reduction_factor=2), concurrency=1)
    assert out.stopped_at == {"a": 4, "b": 1, "c": 1, "d": 2}
    assert out.epochs == 8 and out.wall_s == pytest.approx(80.0)
    assert (out.best, out.best_trial) == (0.8, "a")
    two = replay(curves, SchedulerSettings(kind="asha_promotion", max_t=4, grace_period=1,
                                           reduction_factor=2), concurrency=2)
    assert two.epochs <= 4 + 2 * 1 + 1 * 2   # never more than synchronous halving's budget
    assert two.wall_s < out.wall_s
