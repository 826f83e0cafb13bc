"""ASHA vs FIFO on the same sampled configurations of a seeded CIFAR-10 subset.

    python benchmarks/benchmark_sweep.py            # ASHA over 32 configs, FIFO over the first 16,
                                              # <= 8 epochs each, 10,000 + 2,000 images
    python benchmarks/benchmark_sweep.py --quick    # ASHA 8 / FIFO 4 configs x 2 epochs, 1,000 + 200

The configurations (learning rate, weight decay, and the architecture: airbench or resnet9 with
their own knobs) are drawn ONCE with a seeded searcher; ASHA runs all ``--trials`` of them and
FIFO (every trial to the end) the first ``--fifo-trials``, with the same trial resources and
concurrency: the question a user asks is whether early stopping over twice the configurations
finds at least FIFO's best in less time (issue 13). Printed (and written with ``--json``): both
wall times (``Tuner.fit``, seconds), the ratio ASHA / FIFO (target <= 0.60) and both best
validation top-1 (target: ASHA's >= FIFO's), the epochs each sweep trained, each trial's
start-up (trial function start -> first epoch's training loop, seconds; target median <= 3 s),
the share of each sweep's wall time during which every slot was training (target >= 0.90), the
replay oracle bound, and the hardware. One-worker trials on the memory cache train in the Tune
trial's own process (``sweep.in_trial``). The data is prepared once before either sweep is timed.
Both sweeps start their trials longest first (``--fifo-order``, ``--asha-order``,
``sweep.order``: each network's images/s timed once before the sweep); ASHA is promotion-based
(``--asha-kind asha_promotion``; ``asha`` for Tune's ``ASHAScheduler``).
Every trial runs ``--schedule`` (default ``rung_anneal``: annealed at the end of every ASHA rung,
so the rungs compare trials as their final epoch will; ``wsd`` and ``onecycle`` for comparison,
``onecycle`` as in the 2026-11-21 table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, on any node


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 trials, 2 epochs, 1,000 train images")
    p.add_argument("--trials", type=int, help="sampled configurations, all run by ASHA (32; "
                   "quick 8)")
    p.add_argument("--fifo-trials", type=int, help="the first N of them run by FIFO (half of "
                   "--trials)")
    p.add_argument("--epochs", type=int, help="max epochs per trial (8; quick 2)")
    p.add_argument("--train-per-class", type=int, help="train images per class (1000; quick 100)")
    p.add_argument("--val-per-class", type=int, help="validation images per class (200; quick 20)")
    p.add_argument("--cpus", type=float, help="logical CPUs for a local Ray (default: all cores)")
    p.add_argument("--concurrency", type=int, help="trials at once (default: as many as fit)")
    p.add_argument("--threads", type=int, help="torch threads per trial (default: cores / trials "
                   "at once)")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset and the sampled configs")
    p.add_argument("--order", choices=["asha-first", "fifo-first"], default="asha-first",
                   help="which sweep runs first")
    p.add_argument("--fifo-order", choices=["as_drawn", "longest_first"],
                   default="longest_first", help="sweep.order of the FIFO sweep (longest_first: "
                   "the costliest networks start first, so the sweep does not end on one long "
                   "trial with an idle slot)")
    p.add_argument("--asha-order", choices=["as_drawn", "longest_first"],
                   default="longest_first", help="sweep.order of the ASHA sweep (with "
                   "asha_promotion, longest first: the costly networks' promotions run while "
                   "cheap first-rung trials fill the other slot)")
    p.add_argument("--asha-kind", choices=["asha", "asha_promotion"], default="asha_promotion",
                   help="the early-stopping sweep's scheduler.kind: asha_promotion (trials pause "
                   "at a rung until they rank in its top 1/reduction_factor; the paper's ASHA) or "
                   "asha (Tune's ASHAScheduler: a trial continues unless below the cutoff of the "
                   "trials recorded so far)")
    p.add_argument("--schedule", choices=["rung_anneal", "wsd", "onecycle"],
                   default="rung_anneal",
                   help="every trial's lr schedule (both sweeps): rung_anneal (warm restarts "
                   "annealed at the end of each ASHA rung: trials are compared annealed), wsd "
                   "(warm-up 10%%, stable, linear decay over the last 25%%) or onecycle")
    p.add_argument("--reduction-factor", type=int, help="ASHA's reduction factor (4; quick 2): "
                   "rungs at epochs 1 and 4 of 8, a quarter promoted at each")
    p.add_argument("--storage", help="where sweeps are written (default: a fresh folder in "
                   "~/cnn_ray_runs/benchmark_sweep)")
    p.add_argument("--compute-steps", type=int, default=10,
                   help="timed synthetic steps of each network's pure-compute images/s, recorded "
                        "with the hardware (0: skip)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--startup-probe", type=int, metavar="N", help="only measure N bare "
                   "TorchTrainer.fit() start-ups (1 worker, empty training function): the floor "
                   "of any trial's start-up on this machine")
    args = p.parse_args(argv)
    quick = args.quick
    args.trials = args.trials or (8 if quick else 32)
    args.fifo_trials = min(args.trials, args.fifo_trials or max(1, args.trials // 2))
    args.epochs = args.epochs or (2 if quick else 8)
    args.train_per_class = args.train_per_class or (100 if quick else 1000)
    args.val_per_class = args.val_per_class or (20 if quick else 200)
    args.reduction_factor = args.reduction_factor or (2 if quick else 4)
    return args


def make_data(args) -> dict[str, Path]:
    """Seeded ImageFolder subsets of the real CIFAR-10 JPEGs (made once, then reused)."""
    from cnn_ray.datasets import cifar10_subset

    return {"train": cifar10_subset("train", args.train_per_class, seed=args.seed),
            "val": cifar10_subset("test", args.val_per_class, seed=args.seed)}


def base_config(args, data: dict[str, Path], storage: str, threads: int):
    from cnn_ray.config import TrainConfig

    return TrainConfig.from_dict({
        "data": {"train": str(data["train"]), "val": str(data["val"]), "image_size": 32,
                 "shard_size": 10_000, "data_cpus": 0.5, "shuffle_buffer": 2048,
                 "cache": "memory"},  # read once for all trials, augment in the worker
        "augment": {"random_crop": {"enabled": True, "padding": 4}, "hflip": {"enabled": True}},
        "model": {"name": "resnet9", "channels_last": True},
        "optim": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.1,
                  "schedule": args.schedule, "batch_size": 256, "epochs": args.epochs,
                  **schedule_knobs(args)},
        "precision": {"dtype": "auto"},  # bf16 where the CPU has native kernels, else fp32
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": threads},
        "run": {"name": "bench", "storage_path": storage, "keep_checkpoints": 1,
                "seed": args.seed, "log_every": 1000},
    })


def asha_settings(args) -> dict:
    return {"kind": args.asha_kind, "max_t": args.epochs, "grace_period": 1,
            "reduction_factor": args.reduction_factor}


def schedule_knobs(args) -> dict:
    """The schedule's own keys. rung_anneal: the cycles end at the ASHA rungs, written into
    the base so that FIFO trials run the very same schedule as ASHA's."""
    if args.schedule == "wsd":
        return {"pct_start": 0.1, "decay_frac": 0.25}
    if args.schedule == "rung_anneal":
        from cnn_ray.tune.plan import asha_rungs
        from cnn_ray.tune.settings import SchedulerSettings

        rungs = [e for e in asha_rungs(SchedulerSettings(**asha_settings(args))) if e < args.epochs]
        return {"pct_start": 0.15, "anneal_epochs": rungs or None}
    return {}


SPACE = {
    "optim.lr": {"loguniform": [0.02, 0.8]},
    "optim.weight_decay": {"loguniform": [1.0e-5, 1.0e-3]},
    # Two families with their own knobs, sized so that FIFO's 16 x 8 epochs fit about 40 minutes
    # on 2 cores (synthetic fp32 speeds there: airbench x0.25 ~930, x0.5 ~410; resnet9 x0.25
    # ~650, separable ~1,840 images/s).
    "model": {"family": {
        "airbench": {"model.width_mult": {"choice": [0.25, 0.5]}},
        "resnet9": {"model.width_mult": {"choice": [0.25]},
                    "model.separable": {"choice": [False, True]}},
    }},
}


def hardware(ray_cpus: float) -> dict:
    import ray
    import torch

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "ray_cpus": ray_cpus,
            "gpus": torch.cuda.device_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__, "load_avg_1m": os.getloadavg()[0]}


def slot_occupancy(sweep_dir: str, concurrency: int, *, while_queued: bool = False) -> Optional[float]:
    """Share of the sweep's span (first trial start to last report) during which ``concurrency``
    trials were training at once (each trial: first epoch's loop start -> its last report, from
    its run's ``metrics.jsonl``); None without records. ``while_queued``: the span ends when
    the last trial starts (after it no trial waits for a slot, so the drain at the end, where
    the last trials finish one by one, is not counted: what is left is the time lost between
    trials)."""
    from cnn_ray.io import iter_jsonl
    from cnn_ray.tune.plan import TRAIN_RUNS, TRIAL_STARTS
    from cnn_ray.tune.results import read_trial_starts

    starts = read_trial_starts(Path(sweep_dir) / TRIAL_STARTS)
    spans, events = [], []
    for tid in starts:
        rows = list(iter_jsonl(Path(sweep_dir) / TRAIN_RUNS / tid / "metrics.jsonl"))
        if not rows:
            continue
        spans.append((min(starts[tid]), rows[-1]["time"]))
        # one training segment per start (a paused and resumed trial holds no slot between)
        bounds = sorted(starts[tid]) + [float("inf")]
        for lo, hi in zip(bounds, bounds[1:]):
            seg = [m for m in rows if lo <= m["time"] < hi]
            if seg:
                begin = seg[0]["time"] - seg[0].get("epoch_s", 0.0) - seg[0].get("eval_s", 0.0)
                events += [(begin, 1), (seg[-1]["time"], -1)]
    if not spans:
        return None
    t0 = min(a for a, _ in spans)
    t1 = max(a for a, _ in spans) if while_queued else max(b for _, b in spans)
    full, running, last = 0.0, 0, t0
    for t, delta in sorted(events):
        t = min(t, t1)
        if running >= concurrency:
            full += t - last
        running, last = running + delta, max(last, t)
    return round(full / max(t1 - t0, 1e-9), 3)


def network_speeds(base, points: list, steps: int) -> list[dict]:
    """Pure-compute training images/s (forward + backward + step on in-memory tensors,
    :func:`cnn_ray.tune.order.measured_rate`, the timing ``sweep.order`` uses, here with more
    steps) of each distinct network set-up among ``points`` at the trials' batch, precision and
    threads: the machine's speed, stated next to the sweep's wall times. Measured before either
    sweep, on the driver; ``steps`` 0: none."""
    if steps <= 0:
        return []
    import torch

    from cnn_ray.train.techniques import resolve_precision
    from cnn_ray.tune.order import measured_rate, speed_key
    from cnn_ray.tune.space import validate_variants

    rate = measured_rate(10, steps=steps, warmup=1)
    out: dict[str, dict] = {}
    for point, cfg in zip(points, validate_variants(base, points)):
        key = speed_key(cfg)
        if key in out:
            continue
        network = {k: v for k, v in point.items() if k.startswith("model.")}
        ips = rate(cfg)
        out[key] = {"network": network,
                    "precision": resolve_precision(cfg.precision.dtype, torch.device("cpu")),
                    "batch_size": cfg.per_worker_batch_size(),
                    "threads": cfg.scaling.torch_threads, "images_per_sec": round(ips, 1)}
        print(f"[benchmark_sweep] pure compute {network}: {ips:.0f} images/s", flush=True)
    return list(out.values())


def sweep_figures(result, elapsed: float, concurrency: int) -> dict:
    startups = [t.startup_s for t in result.trials if t.startup_s is not None]
    return {
        "tune_fit_s": round(result.wall_s, 1),
        "run_sweep_s": round(elapsed, 1),
        "best_val_top1": result.best.best if result.best else None,
        "best_config": result.best.config if result.best else None,
        "epochs_trained": sum(t.epochs for t in result.trials),
        "statuses": {s: sum(t.status == s for t in result.trials)
                     for s in sorted({t.status for t in result.trials})},
        "startup_seconds_median": round(statistics.median(startups), 2) if startups else None,
        "startup_seconds_max": round(max(startups), 2) if startups else None,
        "startup_s": startups,
        "concurrency": result.concurrency,
        "path": result.path,
        "startup_phases": startup_phases(result.path),
        "slot_occupancy": slot_occupancy(result.path, concurrency),
        "slot_occupancy_while_queued": slot_occupancy(result.path, concurrency, while_queued=True),
    }


PHASES = (("trial_function", "trainer_built"), ("controller_to_worker_process", "process_started"),
          ("ray_train_worker_setup", "import_started"), ("worker_imports", "entered"),
          ("model_optimizer_checkpoint", "time"))
# a trial that trains in its own process (sweep.in_trial) has no controller or worker process
IN_TRIAL_PHASES = (("trial_function", "trainer_built"), ("to_training_function", "entered"),
                   ("model_optimizer_checkpoint", "time"))


def startup_phases(sweep_dir: str) -> dict:
    """Median seconds of each start-up phase over a sweep's trials, from the trial-start log
    (trial function start, trainer built) and each Train run's first ``events.jsonl`` line
    (worker process created, worker module imports begin, training function entered, ready):
    trial function -> trainer built -> worker process -> Ray Train worker set up (torch, process
    group) -> our imports -> model, optimiser and checkpoint -> first epoch's loop; for a trial
    that trains in its own process: trial function -> inputs built -> training function entered
    -> model, optimiser and checkpoint -> first epoch's loop."""
    from cnn_ray.io import iter_jsonl
    from cnn_ray.tune.results import read_trial_starts
    from cnn_ray.tune.plan import TRAIN_RUNS, TRIAL_STARTS

    path = Path(sweep_dir) / TRIAL_STARTS
    starts, built = read_trial_starts(path), read_trial_starts(path, "trainer_built")
    pids = {r["pid"] for r in iter_jsonl(path) if r.get("event") == "start" and "pid" in r}
    phases: dict[str, list[float]] = {}
    for tid in starts:
        first = next(iter_jsonl(Path(sweep_dir) / TRAIN_RUNS / tid / "events.jsonl"), None)
        if tid not in built or first is None:
            continue
        order = IN_TRIAL_PHASES if first.get("pid") in pids else PHASES
        times = [starts[tid][0], built[tid][0]] + [first.get(k) for _, k in order[1:]]
        if any(t is None for t in times):
            continue
        for (name, _), a, b in zip(order, times, times[1:]):
            phases.setdefault(name, []).append(b - a)
    return {name: round(statistics.median(v), 2) for name, v in phases.items() if v}


def _probe_fn(config: dict) -> None:
    Path(config["stamp"]).write_text(repr(time.time()))  # the first thing the worker does


def startup_probe(n: int, storage: str) -> dict:
    """Seconds from ``TorchTrainer.fit()`` to the training function's first line (bare Train
    V2: controller actor + worker actor + process group), ``n`` times in one Ray session."""
    import ray.train
    from ray.train.torch import TorchTrainer

    out = []
    Path(storage).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stamp = Path(storage) / f"probe{i}.entered"
        t0 = time.time()
        TorchTrainer(
            _probe_fn, train_loop_config={"stamp": str(stamp)},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name=f"probe{i}-{int(t0)}", storage_path=storage),
        ).fit()
        out.append({"to_function_s": round(float(stamp.read_text()) - t0, 2),
                    "fit_s": round(time.time() - t0, 2)})
        print(f"[benchmark_sweep] bare Train start-up {i + 1}/{n}: {out[-1]}", flush=True)
    return {"runs": out, "median_to_function_s":
            statistics.median(r["to_function_s"] for r in out)}


def run_startup_probe(args) -> int:
    """``--startup-probe N``: time N bare Train start-ups, print (and write) the figures."""
    import ray

    from cnn_ray.io import atomic_write_json

    ray.init(num_cpus=args.cpus or float(os.cpu_count() or 1), include_dashboard=False)
    probe = startup_probe(args.startup_probe, args.storage or "/tmp/cnn_ray_startup_probe")
    probe["hardware"] = hardware(ray.cluster_resources().get("CPU", 0.0))
    print(json.dumps(probe, indent=2))
    if args.json:
        atomic_write_json(args.json, probe, indent=2)
    return 0


def init_ray(args) -> float:
    """Join ``RAY_ADDRESS`` or start a local Ray with ``--cpus`` (unless one is running);
    returns the cluster's logical CPUs."""
    import ray

    cpus = args.cpus or float(os.cpu_count() or 1)
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=cpus, include_dashboard=False)
    return ray.cluster_resources().get("CPU", cpus)


def plan_trials(args, data: dict[str, Path], storage: str):
    """The base config, the sampled configurations (drawn once, seeded: both sweeps run exactly
    these), the trials at once and the torch threads per trial.

    How many trials fit at once is planned first (data.cache=memory: 1 worker CPU each, no Ray
    Data tasks); the cores are then split between them.
    """
    import ray

    from cnn_ray.tune.plan import SweepPlan, fit_concurrency
    from cnn_ray.tune.settings import SchedulerSettings, SearcherSettings, SweepSettings

    plan = SweepPlan(base_config(args, data, storage, 1), SPACE,
                     SweepSettings(num_samples=args.trials,
                                   max_concurrent_trials=args.concurrency),
                     SchedulerSettings(kind="fifo"), SearcherSettings(seed=args.seed))
    concurrency = fit_concurrency(plan, ray.cluster_resources())
    threads = args.threads or max(1, int((os.cpu_count() or 1) // concurrency))
    return base_config(args, data, storage, threads), plan.points, concurrency, threads


def run_sweeps(args, base, points: list, concurrency: int) -> dict:
    """ASHA and FIFO over the same ``points``, in ``--order``; the figures of each."""
    from cnn_ray.tune import run_sweep

    schedulers = {
        "asha": asha_settings(args),
        "fifo": {"kind": "fifo"},
    }
    order = ["asha", "fifo"] if args.order == "asha-first" else ["fifo", "asha"]
    figures: dict = {"settings": {k: v for k, v in vars(args).items()},
                     "space": SPACE, "configs": points}
    for kind in order:
        t0 = time.time()
        mine = points if kind == "asha" else points[:args.fifo_trials]
        result = run_sweep(base, SPACE, name=f"sweep_{kind}", points=mine,
                           scheduler=schedulers[kind], max_concurrent_trials=concurrency,
                           order=getattr(args, f"{kind}_order"), resume=False, verbose=1)
        figures[kind] = sweep_figures(result, time.time() - t0, concurrency)
        figures[kind]["trials"] = len(mine)
        figures[kind]["scheduler"] = schedulers[kind]
        figures[kind]["order"] = getattr(args, f"{kind}_order")
    return figures


def add_comparison(figures: dict, cpus: float, concurrency: int) -> None:
    """ASHA / FIFO wall-time ratio and start-up against their targets, the hardware, and the
    replay of the FIFO curves through the same ASHA (in place)."""
    asha, fifo = figures["asha"], figures["fifo"]
    ratio = asha["tune_fit_s"] / fifo["tune_fit_s"]
    startups = asha["startup_s"] + fifo["startup_s"]
    median = statistics.median(startups) if startups else float("nan")
    figures["ratio_asha_over_fifo"] = round(ratio, 3)
    figures["target_ratio_met"] = ratio <= 0.60
    figures["target_best_met"] = (asha["best_val_top1"] or 0) >= (fifo["best_val_top1"] or 0)
    figures["startup_seconds_median"] = round(median, 2)
    figures["target_startup_met"] = median <= 3.0
    figures["target_occupancy_met"] = (fifo["slot_occupancy"] or 0) >= 0.90
    figures["hardware"] = hardware(cpus)
    figures["replay"] = replay_bound(fifo["path"], asha["scheduler"], concurrency)


def print_summary(figures: dict, concurrency: int) -> None:
    asha, fifo, hw = figures["asha"], figures["fifo"], figures["hardware"]
    ratio = figures["ratio_asha_over_fifo"]

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"\nASHA ({asha['scheduler']['kind']}) over {asha['trials']} configs "
          f"({asha.get('order', 'as_drawn')}): "
          f"{asha['tune_fit_s']:.0f} s "
          f"({asha['epochs_trained']} epochs, best top-1 {asha['best_val_top1']:.4f})  vs  FIFO "
          f"over the first {fifo['trials']} ({fifo.get('order', 'as_drawn')}): "
          f"{fifo['tune_fit_s']:.0f} s ({fifo['epochs_trained']}"
          f" epochs, best top-1 {fifo['best_val_top1']:.4f})")
    print(f"ratio ASHA/FIFO {ratio:.2f} (target <= 0.60: {met(figures['target_ratio_met'])}); "
          f"ASHA best >= FIFO best: {met(figures['target_best_met'])}; trial start-up median "
          f"{figures['startup_seconds_median']} s (ASHA {asha['startup_seconds_median']}, FIFO "
          f"{fifo['startup_seconds_median']}; target <= 3 s: {met(figures['target_startup_met'])})"
          f"; every slot training: ASHA {asha['slot_occupancy']}, FIFO {fifo['slot_occupancy']} "
          f"(while trials were queued, i.e. without the drain at the end: ASHA "
          f"{asha['slot_occupancy_while_queued']}, FIFO {fifo['slot_occupancy_while_queued']}) "
          f"of the wall time (target >= 0.90: {met(figures['target_occupancy_met'])}); "
          f"{hw['cpu']}, {hw['cores']} cores, load {hw['load_avg_1m']:.1f}")
    print(f"start-up phases, median s (ASHA): {asha['startup_phases']}")
    for n in hw.get("pure_compute_images_per_sec") or []:
        print(f"pure compute {n['network']}: {n['images_per_sec']} images/s "
              f"({n['precision']}, batch {n['batch_size']}, {n['threads']} threads)")
    rp = figures["replay"]
    print(f"replay of the FIFO curves through the same ASHA (jobs/replay_sweep.py): ratio "
          f"{rp['ratio']}, {rp['epochs']} epochs; with a perfect predictor (oracle) ratio "
          f"{rp['oracle_ratio']}, {rp['oracle_epochs']} epochs - the floor of this ASHA at "
          f"{concurrency} trials at once; rank correlation of epoch k with the final top-1: "
          f"{rp['rank_correlation']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if args.startup_probe:
        return run_startup_probe(args)

    from cnn_ray.io import atomic_write_json
    from cnn_ray.data.prepare import prepare_data

    data = make_data(args)
    cpus = init_ray(args)
    storage = args.storage or str(Path.home() / "cnn_ray_runs" / "benchmark_sweep" /
                                  time.strftime("%Y%m%d-%H%M%S"))
    base, points, concurrency, threads = plan_trials(args, data, storage)
    print(f"[benchmark_sweep] {args.trials} configurations (FIFO: the first "
          f"{args.fifo_trials}) x <= {args.epochs} epochs, "
          f"{args.train_per_class * 10} train / {args.val_per_class * 10} val images, "
          f"{concurrency} trials at once x {threads} threads, storage {storage}", flush=True)
    prepare_data(base)  # once, before anything is timed; both sweeps reuse it
    speeds = network_speeds(base, points, args.compute_steps)
    figures = run_sweeps(args, base, points, concurrency)
    add_comparison(figures, cpus, concurrency)
    figures["hardware"]["pure_compute_images_per_sec"] = speeds
    print(json.dumps(figures, indent=2, default=str))
    print_summary(figures, concurrency)
    if args.json:
        atomic_write_json(args.json, figures, indent=2, default=str)
    return 0


def replay_bound(fifo_dir: str, asha: dict, concurrency: int) -> dict:
    """The FIFO sweep's curves replayed through the benchmark's ASHA settings, as recorded and
    with a perfect predictor (cnn_ray.tune.replay): what ASHA could have saved here at best."""
    from cnn_ray.tune.replay import load_records, rank_correlation, replay
    from cnn_ray.tune.settings import SchedulerSettings

    records = load_records(fifo_dir)
    s = SchedulerSettings(**asha)
    fifo = replay(records, SchedulerSettings(kind="fifo", max_t=s.max_t), concurrency=concurrency)
    real = replay(records, s, concurrency=concurrency)
    ideal = replay(records, s, concurrency=concurrency, oracle=True)
    return {"ratio": round(real.wall_s / fifo.wall_s, 3), "epochs": real.epochs,
            "best": real.best, "oracle_ratio": round(ideal.wall_s / fifo.wall_s, 3),
            "oracle_epochs": ideal.epochs, "rank_correlation": rank_correlation(records)}


if __name__ == "__main__":
    raise SystemExit(main())
