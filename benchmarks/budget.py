"""Training to a time budget: does a run with ``optim.budget_s`` end on time, and does a larger
budget buy accuracy?

    python benchmarks/budget.py --budgets 600 1800 --json results/budget.json
    python benchmarks/budget.py --config benchmarks/configs/flowers_resnet18_128.yaml \\
        --budgets 600 1800 --set optim.schedule=onecycle
    python benchmarks/budget.py --smoke                 # generated photos, budgets 8 and 16 s

Trains ``--config`` (default ``jobs/configs/cifar10.yaml``) once per budget, one after the
other on this machine, through the code path of ``jobs/train.py``
(:func:`cnn_ray.train.launch.run_training`: prepare step, Ray Train worker) with
``optim.budget_s`` set and a fresh run name, then reads each run's ``budget.json`` and
``metrics.jsonl``. Prints a table per budget: the budget, the seconds used (first training
step to the end of the last evaluation), used / budget (target 0.9-1.03), the start-up before
the first step (run_training's call to the first step: prepare check, Train controller and
worker start, model build, data; not in the budget), the epochs and optimiser steps the plan
derived, the number of re-plans and the final ``val_top1``; then the machine and the
pure-compute images/s of the network (:func:`cnn_ray.benchmark.synthetic_images_per_sec`).
Uses the cluster in ``RAY_ADDRESS`` or starts local Ray. Measure alone on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "jobs" / "configs" / "cifar10.yaml"
SMOKE_BUDGETS = (8.0, 16.0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the recipe (YAML)")
    p.add_argument("--budgets", type=float, nargs="+", metavar="SECONDS",
                   help="optim.budget_s of each run (default 600 1800; --smoke: 8 16)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of the recipe")
    p.add_argument("--storage", help="run.storage_path of the runs (default: the recipe's)")
    p.add_argument("--compute-steps", type=int, default=5,
                   help="timed steps of the pure-compute images/s (0: skip)")
    p.add_argument("--smoke", action="store_true",
                   help="generated photos (2 classes x 10, 32 px) instead of the recipe's data, "
                        "budgets 8 and 16 s unless --budgets")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def run_config(args: argparse.Namespace, budget: float, stamp: str):
    """The validated config of the run at ``budget`` seconds (``--set``, a fresh run name,
    ``--storage``; ``--smoke``: generated photos).

    Raises:
        cnn_ray.config.ConfigError: an invalid override or a data path that does not exist.
    """
    from cnn_ray.config_io import load_train_config

    overrides = [*args.set, f"optim.budget_s={budget:g}",
                 f"run.name=budget_{budget:g}s_{stamp}"]
    if args.storage:
        overrides.append(f"run.storage_path={args.storage}")
    if args.smoke:
        from cnn_ray.testing import write_photo_tree

        root = Path(args.storage or "/tmp") / f"budget_smoke_{stamp}"
        photos = root / "photos"
        if not photos.exists():
            write_photo_tree(photos, per_class=10)
        overrides += [f"data.train={photos}", "data.val=null", "data.val_fraction=0.2",
                      "data.image_size=32", "data.store_size=null",
                      f"data.prepared_dir={root / 'prepared'}"]
    return load_train_config(args.config, overrides)


def measure_run(cfg) -> dict[str, Any]:
    """Train ``cfg`` as ``jobs/train.py`` does and read back its ``budget.json`` and
    ``metrics.jsonl``: the row of the table."""
    import json

    import ray

    from cnn_ray.io import read_jsonl_at, read_text
    from cnn_ray.runs import run_dir
    from cnn_ray.train.launch import run_training

    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS or local Ray, as jobs/train.py
    called = time.time()
    run_training(cfg)
    wall = time.time() - called
    directory = run_dir(cfg)
    report = json.loads(read_text(directory, "budget.json") or "{}")
    rows = read_jsonl_at(directory, "metrics.jsonl")
    first = report.get("first_step_unix")
    return {
        "budget_s": cfg.optim.budget_s, "used_s": report.get("used_s"),
        "ratio": report.get("ratio"),
        "startup_s": round(first - called, 2) if first else None,
        "worker_startup_s": report.get("startup_s"), "wall_s": round(wall, 2),
        "epochs": report.get("epochs"), "steps": report.get("steps"),
        "replans": max(0, len(report.get("history", [])) - 1),
        "val_top1": rows[-1].get("val_top1") if rows else None,
        "history": report.get("history", []), "run_dir": directory,
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table of the runs."""
    def fmt(v, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    out = ["| budget s | used s | used / budget | start-up s | epochs | steps | re-plans | "
           "val_top1 |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['budget_s']:g} | {fmt(r['used_s'], '.1f')} | {fmt(r['ratio'], '.3f')} | "
                   f"{fmt(r['startup_s'], '.1f')} | {fmt(r['epochs'], 'd')} | "
                   f"{fmt(r['steps'], 'd')} | {r['replans']} | {fmt(r['val_top1'], '.4f')} |")
    return "\n".join(out)


def _pure_compute(cfg, steps: int) -> Optional[float]:
    if steps <= 0:
        return None
    from cnn_ray.benchmark import synthetic_images_per_sec

    return round(synthetic_images_per_sec(cfg, 10, steps=steps, warmup=1), 1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every budget, print the table and the machine line, write ``--json``. Exit 2 on an
    invalid override or missing data (nothing trained)."""
    from cnn_ray.benchmark import hardware_summary
    from cnn_ray.config import ConfigError
    from cnn_ray.io import atomic_write_json

    args = _parser().parse_args(argv)
    budgets = args.budgets or (list(SMOKE_BUDGETS) if args.smoke else [600.0, 1800.0])
    stamp = time.strftime("%Y%m%d_%H%M%S")
    try:
        configs = [run_config(args, b, stamp) for b in budgets]  # all checked before training
    except (ConfigError, OSError) as exc:
        print(f"budget: {exc}", file=sys.stderr)
        return 2
    doc: dict[str, Any] = {"config": str(args.config), "set": list(args.set),
                           "smoke": args.smoke, "machine": hardware_summary(), "runs": [],
                           "complete": False}
    for cfg in configs:
        doc["runs"].append(measure_run(cfg))
        if args.json:
            atomic_write_json(args.json, doc, indent=2)
    doc["pure_compute_images_per_sec"] = _pure_compute(configs[0], 1 if args.smoke else
                                                       args.compute_steps)
    doc["complete"] = True
    if args.json:
        atomic_write_json(args.json, doc, indent=2)
    print("\n" + table(doc["runs"]))
    print(f"[budget] machine: {doc['machine']}; pure-compute images/s of the network: "
          f"{doc['pure_compute_images_per_sec']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
