"""Command line: ``cnn-ray {train,prepare,evaluate,benchmark,doctor,tune} --config FILE [a.b=value ...]``,
``cnn-ray export --checkpoint DIR --format torchscript|onnx`` and ``cnn-ray predict --checkpoint
DIR --data PATH [a.b=value ...]`` (these two read the config saved in the checkpoint), and
``cnn-ray config-reference [--out docs/config.md] [--check]`` (writes the configuration
reference generated from the config models, :mod:`cnn_ray.config_reference`; ``--check`` exits
with status 1 when the file differs) and ``cnn-ray models [NAME ...] [--json] [--markdown FILE]``
(the model table, no config).

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
from cnn_ray.data.errors import user_error


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
            sp.add_argument("--out", help="output directory (default: <run dir>/eval/<checkpoint name>)")
        if name == "benchmark":
            sp.add_argument("--steps", type=int, default=20, help="timed steps of (a) and "
                            "(c), after their warm-up steps")
            sp.add_argument("--json", help="write the figures to this JSON file")
            sp.add_argument("--only", nargs="+", metavar="FIGURE",
                            choices=["a", "c", "b", "b_stream", "b_raw", "compile"],
                            help="the figures to run (default all but compile): a pure "
                            "compute (alone: the machine's images/s for this model, batch and "
                            "precision, no Ray, no data), c plain PyTorch, b memory cache, "
                            "b_stream streaming the prepared shards, b_raw streaming and "
                            "decoding the raw JPEGs; compile (alone): eager vs torch.compile")
            sp.add_argument("--epochs", type=int, help="epochs each Ray pipeline figure trains "
                            "(default: optim.epochs); the last one is reported")
            sp.add_argument("--epoch-steps", type=int, help="at most this many steps (and "
                            "validation batches) per epoch of the Ray pipeline figures "
                            "(run.max_steps_per_epoch; default: whole epochs)")
        if name == "doctor":
            sp.add_argument("--steps", type=int, default=20, help="timed training steps (raised "
                            "so that at least --min-images images are timed)")
            sp.add_argument("--min-images", type=int, default=2048, help="images every timed "
                            "window covers at least (small batches run more steps; 0: --steps)")
            sp.add_argument("--warmup", type=int, default=3, help="untimed steps first")
            sp.add_argument("--json", help="write the measurements and the verdict here")
            sp.add_argument("--trace", help="write a torch.profiler trace (Chrome/TensorBoard "
                            "format) of the timed steps into this folder")
        if name == "tune":
            sp.add_argument("--resume", action="store_true", help="restore an interrupted sweep")
    sp = sub.add_parser("export", help="TorchScript/ONNX file + preprocessing contract + parity check")
    sp.add_argument("--checkpoint", required=True, help="checkpoint dir (checkpoint_*/) or a run "
                    "dir (its newest complete checkpoint)")
    sp.add_argument("--format", required=True, help="torchscript or onnx")
    sp.add_argument("--out", help="output directory (default: <checkpoint>/export)")
    sp.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    sp = sub.add_parser("predict", help="batch prediction over images with Ray Data")
    sp.add_argument("--checkpoint", required=True, help="checkpoint dir (checkpoint_*/) or a run "
                    "dir (its newest complete checkpoint)")
    sp.add_argument("--data", required=True, help="ImageFolder tree, folder of images, glob of "
                    "image files, CSV/Parquet manifest (path[,label]) or Parquet shards")
    sp.add_argument("--out", help="predictions file, .parquet or .csv (default: "
                    "<checkpoint>/predictions.parquet)")
    sp.add_argument("--top-k", type=int, default=5, help="classes and probabilities kept per image")
    sp.add_argument("--concurrency", type=int, default=1, help="model actors")
    sp.add_argument("--batch-size", type=int, help="images per model call (default: "
                    "optim.eval_batch_size)")
    sp.add_argument("overrides", nargs="*", help="key.path=value overrides of the checkpoint's "
                    "config (eval.tta, data.bad_input, data.data_cpus, scaling.torch_threads, ...)")
    sp = sub.add_parser("config-reference", help="write the configuration reference "
                        "(every config and sweep key) generated from the config models")
    sp.add_argument("--out", default="docs/config.md", help="Markdown file to write "
                    "(default: docs/config.md)")
    sp.add_argument("--check", action="store_true", help="write nothing; exit 1 when the "
                    "file differs from the generated text")
    sp = sub.add_parser("models", help="the model table: params and GMAC/image at 32/128/224 px")
    sp.add_argument("names", nargs="*", help="models to list (default: every registered one; "
                    "timm/<name> works too)")
    sp.add_argument("--json", action="store_true", help="print the rows as JSON")
    sp.add_argument("--markdown", help="write the table as a Markdown page here "
                    "(docs/models.md)")
    sp.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 224],
                    help="square input sizes in pixels")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a subcommand; config errors and the data layer's user-facing errors
    (:mod:`cnn_ray.data.errors`, also when raised in a Ray task) print one clear message, no
    traceback, and exit with status 2."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except Exception as exc:  # noqa: BLE001 (re-raised unless user-facing)
        err = user_error(exc)
        if err is None:
            raise
        print(f"cnn-ray {args.command}: {err}", file=sys.stderr)
        return 2


def _checkpoint_arg(path: str) -> str:
    """``--checkpoint``: a checkpoint dir, or a run dir standing for its newest checkpoint."""
    from cnn_ray.train.checkpoint import CheckpointError, resolve_checkpoint  # noqa: PLC0415

    try:
        return str(resolve_checkpoint(path))
    except CheckpointError as exc:
        raise ConfigError(f"--checkpoint: {exc}") from None


def _dispatch(args) -> int:
    if args.command == "config-reference":
        from cnn_ray.config_reference import reference_main  # noqa: PLC0415 (no Ray needed)

        return reference_main(args.out, check=args.check)
    if args.command == "models":
        return _models(args)
    if args.command == "export":
        from cnn_ray.export import export_main  # noqa: PLC0415 (no Ray needed)

        return export_main(_checkpoint_arg(args.checkpoint), args.format, out=args.out,
                           use_ema=not args.no_ema)
    if args.command == "predict":
        from cnn_ray.predict import predict_main  # noqa: PLC0415

        return predict_main(_checkpoint_arg(args.checkpoint), args.data,
                            overrides=args.overrides, out=args.out,
                            top_k=args.top_k, concurrency=args.concurrency,
                            batch_size=args.batch_size)
    if args.command == "tune":
        from cnn_ray.tune.jobs import tune_main  # noqa: PLC0415 (optional subsystem)

        return tune_main(args.config, args.overrides, resume=args.resume)
    cfg = load_train_config(args.config, args.overrides)
    import ray

    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS (set by `ray job submit`) or local Ray
    if args.command == "prepare":
        from cnn_ray.data.prepare import prepare_data
        from cnn_ray.train.launch import prepared_summary

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

        if (args.epochs is not None and args.epochs < 1) or (
                args.epoch_steps is not None and args.epoch_steps < 1) or args.steps < 1:
            raise ConfigError("--steps, --epochs and --epoch-steps must be >= 1")
        return benchmark_main(cfg, steps=args.steps, json_path=args.json, only=args.only,
                              epochs=args.epochs, epoch_steps=args.epoch_steps)
    if args.command == "doctor":
        from cnn_ray.doctor.run import doctor_main

        if args.steps < 1 or args.warmup < 0 or args.min_images < 0:
            raise ConfigError(f"--steps must be >= 1, --warmup and --min-images >= 0, got "
                              f"{args.steps}, {args.min_images} and "
                              f"{args.warmup}")
        return doctor_main(cfg, steps=args.steps, warmup=args.warmup,
                           min_images=args.min_images, json_path=args.json,
                           trace_dir=args.trace)
    raise AssertionError(args.command)


def _models(args) -> int:
    from cnn_ray.models.table import model_table, to_json, to_markdown, to_text

    if any(s < 1 for s in args.sizes):
        raise ConfigError(f"--sizes: expected sizes >= 1 pixel, got {args.sizes}")
    try:
        rows = model_table(args.names or None, args.sizes)
    except ValueError as exc:  # unknown name, timm missing or without the model
        raise ConfigError(str(exc)) from None
    if args.markdown:
        from cnn_ray.io import atomic_write_bytes

        atomic_write_bytes(args.markdown, to_markdown(rows, args.sizes).encode())
        print(f"wrote {args.markdown} ({len(rows)} models)", file=sys.stderr)
    print(to_json(rows) if args.json else to_text(rows, args.sizes), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
