"""Faults survived and bad inputs handled: the figures of the cluster/hardening issue.

    python benchmarks/faults.py                  # every fault + every bad input, ~10 min on 2 cores
    python benchmarks/faults.py --only bad_inputs
    python benchmarks/faults.py --only faults --json faults.json
    python benchmarks/faults.py --only one_node      # the same recipe on one node, for comparison

Faults run on a 2-node local cluster (``ray.cluster_utils.Cluster``: a head and one worker
node, 2 logical CPUs each, one machine) training a small CNN on a seeded CIFAR-10 subset from
the real JPEGs (1,000 train / 200 validation images, 2 workers spread over both nodes,
checkpoint every epoch, 4 epochs, shared storage = a local folder both nodes see):

- ``undisturbed``: the reference run (final validation top-1, epochs);
- ``worker_killed``: one Train worker process SIGKILLed mid-epoch;
- ``node_removed``: the worker node removed (its raylet and workers killed) mid-run;
- ``driver_killed``: ``jobs/train.py`` SIGKILLed after an epoch, then run again with the
  same ``run.name``;
- ``sweep_driver_killed``: ``jobs/tune.py`` (4 trials) SIGKILLed after its first trial ends,
  then run again with ``--resume``: finished trials must not run again;
- ``kill_during_save``: a process writing checkpoints in a loop SIGKILLed at random moments,
  10 times: the newest complete checkpoint must load every time (write, then rename).

For each training fault it prints: survived (finished all epochs), completed epochs lost
(completed before the fault minus the epoch it resumed from; 0 with a checkpoint per epoch),
the partial epoch lost (share of one epoch in flight at the fault), and the final top-1 next to
the undisturbed run's. A fault that does not finish within its time limit counts as a hang.

Bad inputs come from :mod:`cnn_ray.testing` (generated, nothing binary is committed; the tests
use the same cases) and each one goes through the entry point a user would hit, under both
policies where it applies; ``handled`` means a skip with a count and a listed reason, a
converted image, or an error naming the file/key -- never a hang (time limit) or an unrelated
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, on any node

from cnn_ray.testing import (bad_images, kill_during_save, write_bad_configs,  # noqa: E402
                            write_bad_manifests, write_image_tree, write_wrong_schema_parquet)

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
FAULTS = ["worker_killed", "node_removed", "driver_killed", "sweep_driver_killed",
          "kill_during_save"]


# ------------------------------------------------------------------------------ helpers
def _subset(per_class: int, split: str) -> Path:
    from cnn_ray.datasets import cifar10_subset

    return cifar10_subset(split, per_class, seed=0)


def _recipe(storage: Path, name: str) -> dict:
    return {
        "data": {"train": str(_subset(100, "train")), "val": str(_subset(20, "test")),
                 "image_size": 32, "shard_size": 500, "data_cpus": 0.25,
                 "prepared_dir": str(storage / "prepared")},
        "model": {"name": "simple_cnn", "channels_last": True},
        "optim": {"optimizer": "sgd", "lr": 0.05, "batch_size": 128, "epochs": EPOCHS},
        "precision": {"dtype": "auto"},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "torch_threads": 1,
                    "placement_strategy": "SPREAD"},
        "run": {"name": name, "storage_path": str(storage), "max_failures": 3, "seed": 0,
                "log_every": 1000},
    }


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(pred, timeout: float, poll: float = 0.2) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(poll)
    return False


def _checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in run.glob("checkpoint_*") if p.is_dir())


def _outcome(run: Path, fault_time: float | None, reference_top1: float | None) -> dict:
    """What a fault cost, from the run's metrics.jsonl and events.jsonl (see the docstring)."""
    metrics = _jsonl(run / "metrics.jsonl")
    events = _jsonl(run / "events.jsonl")
    starts = [e for e in events if e.get("rank", 0) == 0]  # one per (re)start of the group
    epochs = sorted({int(m["epoch"]) for m in metrics})
    out = {"finished": epochs == list(range(1, EPOCHS + 1)),
           "final_val_top1": metrics[-1]["val_top1"] if metrics else None,
           "undisturbed_val_top1": reference_top1, "restarts": max(0, len(starts) - 1),
           "checkpoints_kept": len(_checkpoints(run)),
           "nodes_per_start": _nodes_per_start(events)}
    if fault_time is not None:
        done_before = [m for m in metrics if m["time"] <= fault_time]
        after = [s for s in starts if s["time"] > fault_time]
        resumed = after[0]["resumed_from_epoch"] if after else None
        completed = max((int(m["epoch"]) for m in done_before), default=0)
        out["completed_epochs_before_fault"] = completed
        out["resumed_from_epoch"] = resumed
        out["completed_epochs_lost"] = None if resumed is None else completed - resumed
        epoch_s = sorted(m["epoch_s"] + m.get("eval_s", 0.0) for m in metrics)
        last_mark = max([m["time"] for m in done_before]
                        + [s["time"] for s in starts if s["time"] <= fault_time] or [fault_time])
        if epoch_s:
            out["partial_epoch_lost"] = round(min(1.0, (fault_time - last_mark)
                                                  / epoch_s[len(epoch_s) // 2]), 2)
    if out["final_val_top1"] is not None and reference_top1 is not None:
        out["top1_minus_undisturbed"] = round(out["final_val_top1"] - reference_top1, 4)
    return out


def _nodes_per_start(events: list[dict]) -> list[int]:
    """Distinct nodes of each (re)start of the worker group (every rank logs one line)."""
    evs = sorted(events, key=lambda e: e["time"])
    w = max(1, int(evs[0]["world_size"])) if evs else 1
    return [len({e["node_id"] for e in evs[i:i + w]}) for i in range(0, len(evs), w)]


def _run_in_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported as the outcome
            box["error"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _run_again(cmd: list[str], env: dict, limit: float) -> tuple[int | None, bool]:
    """After a killed driver: wait for its resources to be released, then run ``cmd`` again.
    Returns ``(exit code, hung)``; a run past ``limit`` seconds is killed and counts as a hang."""
    _released()
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=limit).returncode, False
    except subprocess.TimeoutExpired:
        return None, True


def _released(timeout: float = 60.0) -> bool:
    from cnn_ray.tune.release import wait_for_release

    return wait_for_release(timeout)


# ------------------------------------------------------------------------------ faults
def fault_scenarios(args) -> dict:
    """The faults on a 2-node local cluster: an undisturbed reference run, then each fault
    asked for (``--faults``), each judged against the reference's final top-1."""
    import ray
    from ray.cluster_utils import Cluster

    from cnn_ray.data.prepare import prepare_data

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    storage = Path(tempfile.mkdtemp(prefix="cnn_ray_faults_"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    ctx = SimpleNamespace(cluster=cluster, node2=cluster.add_node(num_cpus=2), storage=storage,
                          env=None, limit=args.fault_timeout, results={}, top1=None)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    ctx.env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(REPO)}
    ctx.results.update(storage=str(storage), nodes=2)
    prepare_data(_cfg(ctx, "prepare"), progress=False)
    want = set(args.faults or FAULTS)
    if want & {"worker_killed", "node_removed", "driver_killed"}:
        for step in (_undisturbed, _worker_killed, _node_removed, _driver_killed):
            step(ctx)
    return _later_faults(args, want, cluster, storage, ctx.env, ctx.results)


def _cfg(ctx, name: str):
    from cnn_ray.config import TrainConfig

    return TrainConfig.from_dict(_recipe(ctx.storage, name))


def _record(ctx, name: str, res: dict) -> None:
    ctx.results[name] = res
    print(f"[faults] {name}: {json.dumps(res)}", flush=True)


def _undisturbed(ctx) -> None:
    from cnn_ray.train.launch import run_training

    t0 = time.time()
    run_training(_cfg(ctx, "undisturbed"))
    ref = _outcome(ctx.storage / "undisturbed", None, None)
    ref["wall_s"] = round(time.time() - t0, 1)
    ctx.top1 = ref["final_val_top1"]
    _record(ctx, "undisturbed", ref)


def _worker_killed(ctx) -> None:
    """One Train worker SIGKILLed mid-epoch."""
    from cnn_ray.train.launch import run_training

    marker = ctx.storage / "worker_killed.marker"
    t, box = _run_in_thread(lambda: run_training(
        _cfg(ctx, "worker_killed"), fault_injection={"rank": 1, "epoch": 2, "step": 2,
                                                     "marker": str(marker)}))
    t.join(ctx.limit)
    fault_time = marker.stat().st_mtime if marker.exists() else None
    res = _outcome(ctx.storage / "worker_killed", fault_time, ctx.top1)
    res.update(hang=t.is_alive(), error=box.get("error"), fault_happened=fault_time is not None)
    _record(ctx, "worker_killed", res)
    _released()


def _node_removed(ctx) -> None:
    """The worker node removed mid-run (a new one is added afterwards)."""
    from cnn_ray.train.launch import run_training

    run = ctx.storage / "node_removed"
    t, box = _run_in_thread(lambda: run_training(_cfg(ctx, "node_removed")))
    fault_time = None
    if _wait_for(lambda: len(_jsonl(run / "metrics.jsonl")) >= 1, ctx.limit):
        time.sleep(1.0)  # mid-epoch 2
        fault_time = time.time()
        ctx.cluster.remove_node(ctx.node2)
    t.join(ctx.limit)
    res = _outcome(run, fault_time, ctx.top1)
    res.update(hang=t.is_alive(), error=box.get("error"), fault_happened=fault_time is not None)
    _record(ctx, "node_removed", res)
    _released()
    ctx.cluster.add_node(num_cpus=2)
    ctx.cluster.wait_for_nodes()


def _driver_killed(ctx) -> None:
    """The job driver SIGKILLed, then re-submitted with the same run name."""
    import yaml

    recipe = ctx.storage / "driver_killed.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(ctx.storage, "driver_killed")))
    run = ctx.storage / "driver_killed"
    cmd = [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(recipe)]
    proc = subprocess.Popen(cmd, env=ctx.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    fault_time = None
    if _wait_for(lambda: len(_jsonl(run / "metrics.jsonl")) >= 1, ctx.limit):
        time.sleep(1.0)
        fault_time = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rc, hang = _run_again(cmd, ctx.env, ctx.limit)
    res = _outcome(run, fault_time, ctx.top1)
    res.update(hang=hang, resubmit_exit_code=rc, fault_happened=fault_time is not None)
    _record(ctx, "driver_killed", res)
    _released()


def _later_faults(args, want, cluster, storage: Path, env: dict, results: dict) -> dict:
    import ray

    limit = args.fault_timeout
    if "sweep_driver_killed" in want:
        results["sweep_driver_killed"] = sweep_driver_killed(storage, env, limit)
        print(f"[faults] sweep_driver_killed: {json.dumps(results['sweep_driver_killed'])}",
              flush=True)
    ray.shutdown()
    cluster.shutdown()
    if "kill_during_save" in want:
        results["kill_during_save"] = kill_during_save(storage / "save_kills", kills=10)
        print(f"[faults] kill_during_save: {json.dumps(results['kill_during_save'])}", flush=True)
    return results


def sweep_driver_killed(storage: Path, env: dict, limit: float) -> dict:
    """``jobs/tune.py`` SIGKILLed after its first finished trial, then run again."""
    sweep_dir = storage / "sweeps"
    cmd = [sys.executable, str(REPO / "jobs" / "tune.py"), "--config",
           str(REPO / "jobs" / "configs" / "sweep_smoke.yaml"),
           f"base.data.train={_subset(100, 'train')}", f"base.data.val={_subset(20, 'test')}",
           f"base.run.storage_path={sweep_dir}", "base.data.prepared_dir=" + str(storage / "prepared"),
           "base.data.shard_size=500", "base.data.cache=memory", "base.precision.dtype=auto",
           "base.run.smoke=false", "sweep.name=killed_sweep", "sweep.max_concurrent_trials=2"]
    exp = sweep_dir / "killed_sweep"

    def finished_trials() -> set[str]:
        """Trials Tune's saved experiment state records as TERMINATED (what a restore sees)."""
        done: set[str] = set()
        states = sorted(exp.glob("experiment_state-*.json")) if exp.exists() else []
        if states:
            try:
                state = json.loads(states[-1].read_text())
            except (OSError, ValueError):  # being rewritten right now
                return done
            for item in state.get("trial_data", []):
                trial = json.loads(item[0]) if isinstance(item, list) else item
                trial = json.loads(trial) if isinstance(trial, str) else trial
                if trial.get("status") == "TERMINATED":
                    done.add(trial.get("trial_id"))
        return done

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    killed = _wait_for(lambda: len(finished_trials()) >= 1 or proc.poll() is not None, limit)
    fault_time = time.time()
    done_before = finished_trials()
    finished_early = proc.poll() is not None
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # restoring a sweep takes --resume (without it an existing sweep name is a named error)
    rc, hang = _run_again([*cmd, "--resume"], env, limit)
    starts = _jsonl(exp / "trial_starts.jsonl")
    rerun = sorted({s["trial_id"] for s in starts
                    if s.get("event", "start") == "start" and s["time"] > fault_time
                    and s["trial_id"] in done_before})
    res = {"fault_happened": killed and not finished_early, "finished_trials_before_kill":
           sorted(done_before), "finished_trials_rerun": rerun, "resume_exit_code": rc,
           "hang": hang, "trials_total": len({s["trial_id"] for s in starts}),
           "finished": rc == 0}
    return res


def one_node_reference(args) -> dict:
    """The undisturbed recipe on ONE node (plain local Ray, 2 CPUs, ``PACK``): what the 2-node
    SPREAD run's accuracy is compared with."""
    import ray

    from cnn_ray.config import TrainConfig
    from cnn_ray.train.launch import run_training

    ray.init(num_cpus=2, include_dashboard=False)
    storage = Path(tempfile.mkdtemp(prefix="cnn_ray_one_node_"))
    raw = _recipe(storage, "one_node")
    raw["scaling"]["placement_strategy"] = "PACK"
    t0 = time.time()
    run_training(TrainConfig.from_dict(raw))
    out = _outcome(storage / "one_node", None, None)
    out["wall_s"] = round(time.time() - t0, 1)
    out["storage"] = str(storage)
    ray.shutdown()
    return out


# ------------------------------------------------------------------------------ bad inputs
def _timed(fn, limit: float) -> tuple[dict, bool]:
    """Run ``fn`` in a thread for at most ``limit`` seconds: ``({"result"|"error": ...}, hung)``."""
    t, box = _run_in_thread(fn)
    t.join(limit)
    return box, t.is_alive()


def _prepare_both_policies(data_kw: dict, work: Path, name: str, limit: float):
    """``prepare_dataset`` under ``bad_input: skip`` then ``fail``: (skip box, fail box, hung)."""
    from cnn_ray.config import DataConfig
    from cnn_ray.data.prepare import prepare_dataset

    boxes, hung = [], False
    for policy in ("skip", "fail"):
        cfg = DataConfig(**data_kw, val_fraction=0.25, shard_size=100, bad_input=policy,
                         max_bad_fraction=1.0)  # skipping is what is measured
        out = str(work / f"{name}-{policy}")
        box, hang = _timed(lambda cfg=cfg, out=out: prepare_dataset(cfg, out, progress=False),
                           limit)
        boxes.append(box)
        hung = hung or hang
    return boxes[0], boxes[1], hung


def _image_cases(work: Path, limit: float) -> dict:
    """Each generated image alone among good JPEGs, under both policies."""
    cases = {}
    for name, image in bad_images().items():
        src = write_image_tree(work / name, {f"cat/{image.filename}": image.data})
        skip, fail, hang = _prepare_both_policies({"train": str(src)}, work, name, limit)
        data = skip.get("result")
        listed = _jsonl(work / f"{name}-skip" / "bad_inputs.jsonl")
        if image.expected == "bad":
            ok = (data is not None and data.bad_count == 1 and len(listed) == 1
                  and name in listed[0]["path"] and "error" in fail
                  and "BadInputError" in fail["error"] and image.filename in fail["error"])
            outcome = {"skip": f"skipped {data.bad_count if data else '?'}: "
                       f"{listed[0]['reason'] if listed else skip.get('error')}",
                       "fail": fail.get("error")}
        else:
            ok = (data is not None and data.bad_count == 0
                  and data.num_train + data.num_val == 9 and "result" in fail)
            outcome = {"skip": "converted" if ok else skip.get("error"),
                       "fail": "converted" if "result" in fail else fail.get("error")}
        cases[name] = {"handled": bool(ok) and not hang, "hang": hang, **outcome}
    return cases


def _listing_cases(work: Path, limit: float) -> dict:
    """An empty class folder, bad manifest rows, a Parquet file with the wrong schema."""
    from cnn_ray.config import DataConfig
    from cnn_ray.data.prepare import prepare_dataset

    cases = {}
    # an empty class folder: kept as a class (stable label indices), listed with its reason
    src = write_image_tree(work / "empty_class", empty_class="zebra")
    box, hang = _timed(lambda: prepare_dataset(DataConfig(train=str(src), shard_size=100),
                                               str(work / "empty_class-out"), progress=False), limit)
    listed = _jsonl(work / "empty_class-out" / "bad_inputs.jsonl")
    reason = next((b["reason"] for b in listed if b["path"].endswith("zebra")), None)
    cases["empty_class_folder"] = {"handled": (reason is not None or "zebra" in box.get("error", ""))
                                   and not hang, "hang": hang,
                                   "skip": reason or box.get("error")}

    # manifest rows: a missing file (training manifest); a label not in the training classes
    # (validation manifest next to an ImageFolder training tree with classes cat, dog)
    src = write_image_tree(work / "manifest_src")
    for name, manifest in write_bad_manifests(work, src).items():
        skip, fail, hang = _prepare_both_policies(manifest.data, work, name, limit)
        listed = _jsonl(work / f"{name}-skip" / "bad_inputs.jsonl")
        data = skip.get("result")
        ok = (data is not None and data.bad_count == 1 and len(listed) == 1
              and "error" in fail and manifest.culprit in fail["error"])
        cases[name] = {"handled": bool(ok) and not hang, "hang": hang,
                       "skip": listed[0]["reason"] if listed else skip.get("error"),
                       "fail": fail.get("error")}

    # a Parquet shard with the wrong schema
    pq_dir = write_wrong_schema_parquet(work / "wrong_schema")
    box, hang = _timed(lambda: prepare_dataset(DataConfig(train=str(pq_dir), shard_size=100),
                                               str(work / "wrong_schema-out"), progress=False), limit)
    err = box.get("error", "")
    cases["parquet_wrong_schema"] = {"handled": "part-0.parquet" in err and "schema" in err
                                     and not hang, "hang": hang, "error": err}
    return cases


def _config_cases(work: Path, limit: float) -> dict:
    """Recipes with typos or impossible values; an existing run's files must survive them."""
    from cnn_ray.config_io import load_train_config

    run_dir = work / "runs" / "keep"
    (run_dir / "checkpoint_000001").mkdir(parents=True)
    (run_dir / "checkpoint_000001" / "model.pt").write_bytes(b"weights")
    base = {"data": {"train": str(write_image_tree(work / "config_src"))},
            "run": {"name": "keep", "storage_path": str(work / "runs")}}
    cases = {}
    for name, bad in write_bad_configs(work, base).items():
        box, hang = _timed(lambda path=str(bad.path): load_train_config(path), limit)
        err = box.get("error", "")
        intact = (run_dir / "checkpoint_000001" / "model.pt").read_bytes() == b"weights"
        cases[name] = {"handled": "ConfigError" in err and bad.key in err and intact and not hang,
                       "hang": hang, "error": err, "run_files_intact": intact}
    return cases


def bad_input_cases(args) -> dict:
    """Every generated bad input (:mod:`cnn_ray.testing`) through the entry point a user would
    hit; ``args.case_timeout`` seconds per call before it counts as a hang."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
    work = Path(tempfile.mkdtemp(prefix="cnn_ray_badinput_"))
    return {**_image_cases(work, args.case_timeout), **_listing_cases(work, args.case_timeout),
            **_config_cases(work, args.case_timeout)}


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["faults", "bad_inputs", "one_node"])
    p.add_argument("--faults", nargs="+", choices=FAULTS, help="run only these faults")
    p.add_argument("--fault-timeout", type=float, default=300.0, help="seconds per fault run")
    p.add_argument("--case-timeout", type=float, default=120.0, help="seconds per bad input")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--keep-storage", action="store_true",
                   help="keep the runs' storage folders under the temp dir (removed by default: "
                        "the kill-during-save runs alone write ~8 GB)")
    args = p.parse_args(argv)
    figures: dict = {}
    if args.only in (None, "bad_inputs"):
        figures["bad_inputs"] = bad_input_cases(args)
        import ray
        ray.shutdown()
    if args.only in (None, "one_node"):
        figures["one_node"] = one_node_reference(args)
        print(f"[faults] one_node: {json.dumps(figures['one_node'])}", flush=True)
    if args.only in (None, "faults"):
        figures["faults"] = fault_scenarios(args)
    if not args.keep_storage:
        for part in ("one_node", "faults"):
            folder = figures.get(part, {}).get("storage")
            if folder:
                shutil.rmtree(folder, ignore_errors=True)

    summary = {}
    if "bad_inputs" in figures:
        cases = figures["bad_inputs"]
        summary["bad_inputs_handled"] = sum(c["handled"] for c in cases.values())
        summary["bad_inputs_tried"] = len(cases)
        summary["bad_input_hangs"] = sum(c["hang"] for c in cases.values())
        for name, c in cases.items():
            print(f"  bad input {name:26s} {'handled' if c['handled'] else 'NOT HANDLED'}: "
                  f"{c.get('skip') or c.get('error')}"[:160])
    if "faults" in figures:
        f = figures["faults"]
        names = [n for n in FAULTS if n in f]
        survived = {n: bool(f[n].get("finished") or f[n].get("survived")) and not f[n].get("hang")
                    and f[n].get("fault_happened", True)
                    and not f[n].get("finished_trials_rerun")
                    and f[n].get("completed_epochs_lost", 0) in (0, None) for n in names}
        summary["faults_survived"] = sum(survived.values())
        summary["faults_tried"] = len(names)
        summary["fault_hangs"] = sum(bool(f[n].get("hang")) for n in names)
        summary["checkpoints_lost"] = sum(
            f[n].get("checkpoints_lost", 0) + (f[n].get("completed_epochs_lost") or 0)
            for n in names)
        if "undisturbed" in f:
            print(f"  undisturbed: {f['undisturbed']['final_val_top1']:.4f} top-1 after {EPOCHS} "
                  f"epochs, workers on {f['undisturbed']['nodes_per_start'][0]} nodes, "
                  f"{f['undisturbed']['wall_s']} s")
        for n in names:
            r = f[n]
            print(f"  fault {n:20s} {'survived' if survived[n] else 'NOT SURVIVED'}: "
                  + ", ".join(f"{k}={r[k]}" for k in (
                      "completed_epochs_lost", "partial_epoch_lost", "restarts", "nodes_per_start",
                      "final_val_top1",
                      "top1_minus_undisturbed", "finished_trials_rerun", "newest_loaded_after_kill",
                      "checkpoints_lost") if k in r))
    figures["summary"] = summary
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
