"""Replay a finished FIFO sweep through ASHA settings: predicted wall time, epochs and best.

    python jobs/replay_sweep.py ~/cnn_ray_runs/benchmark_sweep/<stamp>/sweep_fifo
    python jobs/replay_sweep.py DIR --grace 1 2 --rf 2 3 4 --concurrency 2 --json out.json

Nothing is trained: each trial's recorded per-epoch metric and duration go through Ray Tune's
own ``ASHAScheduler`` (``--kind asha``) and through the sweep's promotion-based ASHA
(``asha_promotion``, :mod:`cnn_ray.tune.promotion`), see :mod:`cnn_ray.tune.replay`. Printed per setting: the modelled wall
time and its ratio to FIFO's (modelled the same way), epochs trained, the best metric kept and
its gap to FIFO's best; the same with a perfect predictor (``oracle``: each trial's final value
at every rung), which bounds what ASHA can save at this trial count and concurrency; and the
rank correlation of each epoch's metric with the final one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", help="a finished sweep's folder (every trial ran to the end)")
    p.add_argument("--metric", default="val_top1")
    p.add_argument("--mode", choices=["max", "min"], default="max")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (2)")
    p.add_argument("--max-t", type=int, help="epoch budget (default: the longest record)")
    p.add_argument("--grace", type=int, nargs="+", default=[1, 2], help="grace periods (1 2)")
    p.add_argument("--rf", type=float, nargs="+", default=[2, 3, 4],
                   help="reduction factors (2 3 4)")
    p.add_argument("--kind", nargs="+", choices=["asha", "asha_promotion"],
                   default=["asha", "asha_promotion"], help="scheduler kinds (both)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def replay_settings(records, args, max_t: int):
    """FIFO's replay and one row per (grace period, reduction factor) of ASHA, as recorded and
    with a perfect predictor; ratios are to FIFO's modelled wall time, gaps in points of the
    metric. Raises ConfigError (from :func:`cnn_ray.tune.replay.replay`)."""
    from cnn_ray.tune.replay import replay
    from cnn_ray.tune.settings import SchedulerSettings

    common = dict(mode=args.mode, concurrency=args.concurrency, max_t=max_t,
                  metric_name=args.metric)
    fifo = replay(records, SchedulerSettings(kind="fifo", max_t=max_t), **common)
    rows = []
    for kind, grace, rf in ((k, g, r) for k in args.kind
                            for g in args.grace for r in args.rf):
        if grace > max_t:
            continue
        s = SchedulerSettings(kind=kind, max_t=max_t, grace_period=grace,
                              reduction_factor=rf)
        real = replay(records, s, **common)
        ideal = replay(records, s, oracle=True, **common)
        rows.append({
            "kind": kind, "grace_period": grace, "reduction_factor": rf,
            "ratio": round(real.wall_s / fifo.wall_s, 3), "epochs": real.epochs,
            "best": real.best, "gap_points": round(100 * (real.best - fifo.best), 2),
            "oracle_ratio": round(ideal.wall_s / fifo.wall_s, 3),
            "oracle_epochs": ideal.epochs,
            "oracle_gap_points": round(100 * (ideal.best - fifo.best), 2)})
    return fifo, rows


def print_table(args, n_trials: int, max_t: int, fifo, rho: list, rows: list[dict]) -> None:
    print(f"{n_trials} trials x <= {max_t} epochs, {args.concurrency} at once; FIFO modelled "
          f"{fifo.wall_s:.0f} s, {fifo.epochs} epochs, best {args.metric} {fifo.best:.4f} "
          f"({fifo.best_trial})")
    print(f"rank correlation of epoch k's {args.metric} with the final one: "
          + ", ".join(f"{k + 1}: {r}" for k, r in enumerate(rho)))
    print(f"{'kind':>14} {'grace':>5} {'rf':>4} | {'ratio':>6} {'epochs':>6} {'best':>7} {'gap pt':>7} | "
          f"{'oracle ratio':>12} {'epochs':>6} {'gap pt':>7}")
    for r in rows:
        print(f"{r['kind']:>14} {r['grace_period']:>5} {r['reduction_factor']:>4g} | {r['ratio']:>6.3f} "
              f"{r['epochs']:>6} {r['best']:>7.4f} {r['gap_points']:>7.2f} | "
              f"{r['oracle_ratio']:>12.3f} {r['oracle_epochs']:>6} {r['oracle_gap_points']:>7.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)

    from cnn_ray.config import ConfigError
    from cnn_ray.io import atomic_write_json
    from cnn_ray.tune.replay import load_records, rank_correlation

    try:
        records = load_records(args.sweep_dir, metric=args.metric)
        max_t = args.max_t or max(len(r.metric) for r in records)
        fifo, rows = replay_settings(records, args, max_t)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rho = rank_correlation(records)
    print_table(args, len(records), max_t, fifo, rho, rows)
    if args.json:
        atomic_write_json(args.json, {
            "sweep_dir": args.sweep_dir, "trials": len(records), "max_t": max_t,
            "concurrency": args.concurrency, "fifo": {"wall_s": round(fifo.wall_s, 1),
                                                      "epochs": fifo.epochs, "best": fifo.best},
            "rank_correlation": rho, "settings": rows}, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
