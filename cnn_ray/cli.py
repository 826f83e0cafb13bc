"""Command line: ``cnn-ray {train,prepare,evaluate,benchmark,doctor,tune} --config FILE [a.b=value ...]``.

The only place (with ``jobs/``) that parses argv; config files and overrides are read by
:mod:`cnn_ray.config_io`, and the rest of the library takes typed configs. Nothing in
``cnn_ray`` imports this module.
``jobs/train.py`` etc. are thin wrappers around :func:`main`, so ``ray job submit ... -- python
jobs/train.py ...`` and ``cnn-ray train ...`` behave the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from cnn_ray.config import ConfigError
from cnn_ray.config_io import load_train_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnn-ray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in [("train", "prepare (if needed) and train on Ray"),
                        ("prepare", "decode images once into Parquet shards"),
                        ("evaluate", "top-1, per-class accuracy and confusion matrix of a checkpoint"),
                        ("benchmark", "throughput: synthetic vs Ray pipeline vs plain PyTorch"),
                        ("doctor", "short profile: the bottleneck (input/compute/memory/...) "
                         "and the config changes that address it"),
                        ("tune", "ASHA-scheduled sweep over the same trainer")]:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", required=True, help="YAML config (recipe or sweep file)")
        sp.add_argument("overrides", nargs="*", help="key.path=value overrides")
        if name == "prepare":
            sp.add_argument("--force", action="store_true", help="rebuild even if up to date")
        if name == "evaluate":
            sp.add_argument("--checkpoint", help="checkpoint dir (default: the run's latest)")
            sp.add_argument("--data", help="data to evaluate (default: the config's validation data)")
            sp.add_argument("--out", help="output directory (default: <checkpoint>/eval)")
        if name == "benchmark":
            sp.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
            sp.add_argument("--json", help="write the figures to this JSON file")
            sp.add_argument("--only", choices=["a"], help="a: only the pure-compute figure "
                            "(the machine's images/s for this model, batch and precision)")
        if name == "doctor":
            sp.add_argument("--steps", type=int, default=20, help="timed training steps")
            sp.add_argument("--warmup", type=int, default=3, help="untimed steps first")
            sp.add_argument("--json", help="write the measurements and the verdict here")
            sp.add_argument("--trace", help="write a torch.profiler trace (Chrome/TensorBoard "
                            "format) of the timed steps into this folder")
        if name == "tune":
            sp.add_argument("--resume", action="store_true", help="restore an interrupted sweep")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a subcommand; config errors print one clear message and exit with status 2."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"cnn-ray {args.command}: {exc}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    if args.command == "tune":
        from cnn_ray.tune.jobs import tune_main  # noqa: PLC0415 (optional subsystem)

        return tune_main(args.config, args.overrides, resume=args.resume)
    cfg = load_train_config(args.config, args.overrides)
    import ray

    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS (set by `ray job submit`) or local Ray
    if args.command == "prepare":
        from cnn_ray.train.launch import prepare_data, prepared_summary

        prepared = prepare_data(cfg, force=args.force)
        print(json.dumps(prepared_summary(prepared), indent=2, default=str))
        return 0
    if args.command == "train":
        from cnn_ray.train.launch import run_training

        result = run_training(cfg)
        print(json.dumps({"final_metrics": result.metrics, "checkpoint":
                          result.checkpoint.path if result.checkpoint else None,
                          "run_dir": result.path}, indent=2, default=str))
        return 0
    if args.command == "evaluate":
        from cnn_ray.evaluate import evaluate_main

        return evaluate_main(cfg, checkpoint=args.checkpoint, data=args.data, out=args.out)
    if args.command == "benchmark":
        from cnn_ray.benchmark import benchmark_main

        return benchmark_main(cfg, steps=args.steps, json_path=args.json, only=args.only)
    if args.command == "doctor":
        from cnn_ray.doctor.run import doctor_main

        if args.steps < 1 or args.warmup < 0:
            raise ConfigError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and "
                              f"{args.warmup}")
        return doctor_main(cfg, steps=args.steps, warmup=args.warmup, json_path=args.json,
                           trace_dir=args.trace)
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
