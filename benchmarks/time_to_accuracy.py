"""Time to accuracy: the plain PyTorch recipe of the seed articles vs the cnn_ray fast recipe.

    python benchmarks/time_to_accuracy.py --json tta.json                 # both, the full data
    python benchmarks/time_to_accuracy.py --only fast                     # the cnn_ray recipe alone
    python benchmarks/time_to_accuracy.py --smoke                         # tiny subset, 1 epoch each
    python benchmarks/time_to_accuracy.py --plain-from tta.json --set optim.epochs=4 --json tta4.json
                                   # another fast budget against the plain curve of tta.json

Trains, one after the other on this machine (the fast recipe first; ``--json`` is rewritten
after it and after every plain epoch, ``"complete": false`` until the end):

(i) **plain**: the recipe of the PyTorch tutorials: ``torchvision.datasets.ImageFolder`` +
    ``DataLoader(num_workers=2, shuffle=True)`` + per-image ``transforms`` (``RandomCrop(32,
    padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``), fp32, NCHW, Adam (lr
    1e-3), cross-entropy; the SAME network and batch size as the fast recipe (``--config``'s
    model, ``create_model(name, **knobs)``); test top-1 on the test ImageFolder after every
    epoch; stops once every ``--thresholds`` top-1 is reached, or after ``--plain-max-epochs``
    (or the epoch that passes ``--plain-max-minutes``).
(ii) **fast**: ``--config`` (``jobs/configs/cifar10.yaml``) through cnn_ray on Ray, the code
    path of ``jobs/train.py`` (:func:`cnn_ray.train.launch.run_training`: prepare step, Ray
    Train worker) with ``eval.tta_epochs=all``, so every epoch's top-1 is the TTA figure; the
    per-epoch figures come from the run's ``metrics.jsonl``. Runs the recipe's epochs.

``--recipe photo`` (chosen by itself when ``--config`` sets ``data.store_size``): the fast
side is ``jobs/configs/flowers.yaml`` and the plain side the torchvision photo recipe of
``benchmarks/photo_plain.py`` (``RandomResizedCrop(128)`` per image, ``resnet18(num_classes=K)``,
SGD + cosine over ``--plain-max-epochs``, default 24, capped by ``--plain-max-minutes``, default
40; it runs its whole schedule, since its best top-1 is a target); the targets are the
thresholds (default 50% and 60%) plus the plain run's best top-1 (``"plain_best": true``).

    python benchmarks/time_to_accuracy.py --recipe photo --json tta_photo.json

Prints, for each threshold (default 80% and 85%), the wall time each recipe needs to reach it
from its start (data loading / Ray start / prepare included) and the training time alone
(evaluation excluded), and the ratio plain / fast ("not reached within N epochs" otherwise, with
the ratio's lower bound when only the fast recipe reached it); then the machine and its
pure-compute images/s for the network (:func:`cnn_ray.benchmark.synthetic_images_per_sec`, the
fast recipe's precision and layout). Uses the cluster in ``RAY_ADDRESS`` or starts local Ray.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "jobs" / "configs" / "cifar10.yaml"
PHOTO_CONFIG = REPO / "jobs" / "configs" / "flowers.yaml"
# per recipe: the fast config, thresholds, plain epochs and minutes when not given
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar": {"config": DEFAULT_CONFIG, "thresholds": [0.80, 0.85], "plain_max_epochs": 40,
              "plain_max_minutes": None},
    "photo": {"config": PHOTO_CONFIG, "thresholds": [0.50, 0.60], "plain_max_epochs": 24,
              "plain_max_minutes": 40.0},
}

from benchmarks.plain_recipes import (MEAN, STD, plain_loaders, plain_test_top1,  # noqa: E402,F401
                                      run_plain)

# A curve: one dict per epoch, {"epoch" (1-based), "val_top1" (fraction), "wall_s" (seconds from
# the recipe's start to the end of this epoch's evaluation), "train_s" (training seconds so far)}.
Curve = list[dict[str, float]]


def time_to(curve: Curve, threshold: float) -> Optional[dict[str, float]]:
    """The first epoch of ``curve`` whose top-1 is >= ``threshold``, as ``{"epoch", "wall_s",
    "train_s"}``; None when no epoch reaches it."""
    for row in curve:
        if row["val_top1"] >= threshold:
            return {k: row[k] for k in ("epoch", "wall_s", "train_s")}
    return None


def compare(plain: Curve, fast: Curve, thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Per threshold: ``{"threshold", "plain", "fast"}`` (each :func:`time_to` or None) and the
    ratios plain / fast of wall and training time (None unless both reached it). When only the
    fast recipe reached it, ``wall_ratio_at_least`` / ``train_ratio_at_least``: the plain run's
    total times over the fast ones, a lower bound of the speed-up."""
    out = []
    for t in thresholds:
        p, f = time_to(plain, t), time_to(fast, t)
        row: dict[str, Any] = {"threshold": t, "plain": p, "fast": f,
                               "wall_ratio": None, "train_ratio": None}
        if p and f:
            row["wall_ratio"] = round(p["wall_s"] / max(f["wall_s"], 1e-9), 2)
            row["train_ratio"] = round(p["train_s"] / max(f["train_s"], 1e-9), 2)
        elif f and plain:
            row["wall_ratio_at_least"] = round(plain[-1]["wall_s"] / max(f["wall_s"], 1e-9), 2)
            row["train_ratio_at_least"] = round(plain[-1]["train_s"] / max(f["train_s"], 1e-9), 2)
        out.append(row)
    return out


def curve_from_metrics(rows: Sequence[dict], start_unix: float) -> Curve:
    """A :data:`Curve` from a run's ``metrics.jsonl`` records (``epoch``, ``val_top1``,
    ``epoch_s``: training seconds of the epoch, ``time``: unix time the record was written, after
    the epoch's evaluation); ``start_unix``: when the recipe started (unix seconds)."""
    curve, train_s = [], 0.0
    for r in sorted(rows, key=lambda r: r["epoch"]):
        train_s += float(r["epoch_s"])
        curve.append({"epoch": int(r["epoch"]), "val_top1": float(r["val_top1"]),
                      "wall_s": round(float(r["time"]) - start_unix, 2),
                      "train_s": round(train_s, 2)})
    return curve


def describe(row: dict[str, Any], plain_epochs: int, fast_epochs: int) -> str:
    """One printed line of a :func:`compare` row (times in seconds); ``*_epochs``: epochs each
    recipe ran (0: not run)."""
    def side(name: str, hit: Optional[dict], epochs: int) -> str:
        if not hit and not epochs:
            return f"{name}: not run"
        if not hit:
            return f"{name}: not reached within {epochs} epoch{'s' if epochs != 1 else ''}"
        return (f"{name}: {hit['wall_s']:.0f} s from start, {hit['train_s']:.0f} s training "
                f"(epoch {hit['epoch']})")

    text = (f"{100 * row['threshold']:g}% top-1 -- {side('plain', row['plain'], plain_epochs)}; "
            f"{side('fast', row['fast'], fast_epochs)}")
    if row["wall_ratio"] is not None:
        text += f"; plain/fast: {row['wall_ratio']}x wall, {row['train_ratio']}x training"
    elif "wall_ratio_at_least" in row:
        text += (f"; plain/fast: > {row['wall_ratio_at_least']}x wall, "
                 f"> {row['train_ratio_at_least']}x training")
    return text


# ------------------------------------------------------------------------------ fast recipe
def run_fast(cfg, *, force_prepare: bool = False,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg`` as ``jobs/train.py`` does (Ray start if none, prepare step, Ray Train) and
    read its per-epoch figures back from ``<run dir>/metrics.jsonl``.

    Returns ``{"curve": Curve, "ray_init_s", "prepare_s", "total_s", "run_dir"}`` (seconds; the
    curve's ``wall_s`` from before Ray start; the driver's and the worker's clocks are compared,
    so run it on one machine or clock-synchronised nodes).
    """
    import ray

    from cnn_ray.io import read_jsonl_at
    from cnn_ray.data.prepare import prepare_data
    from cnn_ray.runs import run_dir
    from cnn_ray.train.launch import run_training

    start_unix, start = time.time(), time.perf_counter()
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS or local Ray, as jobs/train.py
    ray_init_s = time.perf_counter() - start
    prepared = prepare_data(cfg, force=force_prepare)
    prepare_s = time.perf_counter() - start - ray_init_s
    log(f"[tta] fast: Ray {ray_init_s:.1f} s, prepare {prepare_s:.1f} s; training {cfg.run.name}")
    run_training(cfg, prepared=prepared)
    total_s = time.perf_counter() - start
    directory = run_dir(cfg)
    curve = curve_from_metrics(read_jsonl_at(directory, "metrics.jsonl"), start_unix)
    for row in curve:
        log(f"[tta] fast epoch {row['epoch']}: test top-1 {row['val_top1']:.4f}, "
            f"{row['train_s']:.0f} s training, {row['wall_s']:.0f} s from start")
    return {"curve": curve, "ray_init_s": round(ray_init_s, 2), "prepare_s": round(prepare_s, 2),
            "total_s": round(total_s, 2), "run_dir": directory}


def earlier_plain(path: str, machine: str) -> dict[str, Any]:
    """The ``plain`` section of an earlier ``--json`` (its ``machine`` must be ``machine``: the
    plain times are only comparable on the box that measured them), marked with its source.

    Raises:
        ValueError: no plain curve in the file, or another machine's (naming both).
    """
    import json

    doc = json.loads(Path(path).read_text())
    plain = doc.get("plain")
    if not plain or not plain.get("curve"):
        raise ValueError(f"--plain-from {path}: no plain curve in it")
    if doc.get("machine") != machine:
        raise ValueError(f"--plain-from {path}: measured on {doc.get('machine')!r}, this is "
                         f"{machine!r}; the plain times are only comparable on one machine")
    return {**plain, "from": str(path)}


# ------------------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=sorted(RECIPE_DEFAULTS),
                   help="cifar (plain: Adam, the fast recipe's network) or photo (plain: "
                        "torchvision ResNet-18, RandomResizedCrop, SGD + cosine; targets include "
                        "its best top-1); default: photo when --config sets data.store_size")
    p.add_argument("--config", help="the fast recipe (YAML; default: jobs/configs/cifar10.yaml, "
                                    "photo: jobs/configs/flowers.yaml)")
    p.add_argument("--batch-size", type=int,
                   help="batch size of both recipes (default: the fast recipe's optim.batch_size)")
    p.add_argument("--thresholds", type=float, nargs="+",
                   help="test top-1 fractions to time (default: cifar 0.80 0.85, photo 0.50 "
                        "0.60)")
    p.add_argument("--plain-max-epochs", type=int,
                   help="plain epochs (default: cifar 40; photo 24, its cosine's length)")
    p.add_argument("--plain-max-minutes", type=float,
                   help="also stop the plain run after the epoch that passes this wall time "
                        "(the times it did not reach are then lower bounds; default: photo 40)")
    p.add_argument("--only", choices=["plain", "fast"], help="run one recipe only")
    p.add_argument("--plain-from", metavar="JSON",
                   help="take the plain curve from an earlier --json of this command on this "
                        "machine (the plain recipe has a constant learning rate, so one curve "
                        "serves every fast budget) and run the fast recipe only")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of the fast recipe (data paths apply to both)")
    p.add_argument("--storage", help="run.storage_path of the fast run (default: the recipe's)")
    p.add_argument("--force-prepare", action="store_true", help="redo the prepare step")
    p.add_argument("--compute-steps", type=int, default=5,
                   help="timed steps of the pure-compute images/s (0: skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of both recipes")
    p.add_argument("--smoke", action="store_true",
                   help="20 train / 10 test images per class (photo: 8 / 3 photos of 4 "
                        "classes), 1 epoch each, batch 64")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def resolve_recipe(args: argparse.Namespace) -> None:
    """Fill what ``args`` leaves unset from :data:`RECIPE_DEFAULTS`: ``recipe`` (``photo`` when
    ``--config`` sets ``data.store_size``, else ``cifar``), ``config``, ``thresholds``,
    ``plain_max_epochs`` and ``plain_max_minutes``.

    Raises:
        cnn_ray.config.ConfigError: ``--config`` does not validate.
    """
    if getattr(args, "recipe", None) is None:
        recipe = "cifar"
        if args.config:
            from cnn_ray.config_io import load_train_config

            if load_train_config(args.config, check_paths=False).data.store_size:
                recipe = "photo"
        args.recipe = recipe
    defaults = RECIPE_DEFAULTS[args.recipe]
    args.config = args.config or str(defaults["config"])
    for key in ("thresholds", "plain_max_epochs", "plain_max_minutes"):
        if getattr(args, key, None) is None:
            setattr(args, key, defaults[key])


def fast_config(args: argparse.Namespace, device):
    """The validated fast-recipe config for ``args`` (``eval.tta_epochs=all`` unless ``--set``
    says otherwise, a fresh run name, the seed, ``--set``, ``--batch-size``, ``--storage``;
    ``--smoke``: subsets, 1 epoch).

    Raises:
        cnn_ray.config.ConfigError: an invalid override or a data path that does not exist.
    """
    from cnn_ray.config_io import load_train_config

    overrides = ["eval.tta_epochs=all", *args.set, f"run.seed={args.seed}",
                 f"run.name=time_to_accuracy_{time.strftime('%Y%m%d_%H%M%S')}"]
    if args.smoke and getattr(args, "recipe", "cifar") == "photo":
        from cnn_ray.datasets import flowers102_subset

        overrides += [f"data.train={flowers102_subset('train', 8, classes=4)}",
                      f"data.val={flowers102_subset('val', 3, classes=4)}", "optim.epochs=1"]
    elif args.smoke:
        from cnn_ray.datasets import cifar10_subset

        overrides += [f"data.train={cifar10_subset('train', 20)}",
                      f"data.val={cifar10_subset('test', 10)}", "optim.epochs=1"]
    batch = args.batch_size or (64 if args.smoke else None)
    overrides += [f"optim.batch_size={batch}"] if batch else []
    overrides += [f"run.storage_path={args.storage}"] if args.storage else []
    overrides += ["scaling.use_gpu=true"] if device.type == "cuda" else []
    return load_train_config(args.config, overrides)


def _pure_compute(cfg, steps: int) -> Optional[float]:
    """Median images/s of forward+backward+step of the network on in-memory tensors (the fast
    recipe's batch, precision and layout); None when ``steps`` is 0."""
    if steps <= 0:
        return None
    from cnn_ray.benchmark import synthetic_images_per_sec

    return round(synthetic_images_per_sec(cfg, 10, steps=steps, warmup=1), 1)


def measure(args: argparse.Namespace, cfg, device,
            save: Optional[Callable[[dict[str, Any]], None]] = None,
            prior: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Run the selected recipes, the fast one first, and build the JSON document (curves,
    comparison, machine). ``prior``: the plain section of an earlier run (:func:`earlier_plain`)
    used instead of training the plain recipe. ``save(doc)`` receives the partial document
    after the fast run and after every plain epoch, so a run stopped from outside keeps what
    it measured."""
    import torch

    from cnn_ray.benchmark import hardware_summary

    recipe = getattr(args, "recipe", None) or "cifar"
    plain_epochs = 1 if args.smoke else args.plain_max_epochs
    doc: dict[str, Any] = {
        "recipe": recipe, "config": str(args.config), "set": list(args.set), "eval": cfg.eval.tta_epochs,
        "batch_size": cfg.optim.batch_size, "thresholds": list(args.thresholds),
        "seed": args.seed, "smoke": args.smoke, "device": str(device),
        "train_dir": cfg.data.train, "test_dir": cfg.data.val, "plain": None, "fast": None,
        "complete": False, "machine": hardware_summary()}

    def update() -> None:
        plain = doc["plain"]["curve"] if doc["plain"] else []
        fast = doc["fast"]["curve"] if doc["fast"] else []
        if recipe == "photo":  # the plain run's best top-1 is a target too
            from benchmarks.plain_recipes import mark_plain_best, targets_with_plain_best

            doc["comparison"] = mark_plain_best(
                compare(plain, fast, targets_with_plain_best(plain, args.thresholds)), plain)
        else:
            doc["comparison"] = compare(plain, fast, args.thresholds)
        if save is not None:
            save(doc)

    if args.only in (None, "fast"):
        doc["fast"] = run_fast(cfg, force_prepare=args.force_prepare)
        doc["fast"]["epochs"] = cfg.optim.epochs
        update()
    if prior:
        doc["plain"] = prior
        update()
    elif args.only in (None, "plain"):
        doc["plain"] = {"curve": [], "max_epochs": plain_epochs,
                        "max_minutes": args.plain_max_minutes,
                        "torch_threads": torch.get_num_threads()}

        def on_epoch(curve: Curve) -> None:
            doc["plain"]["curve"] = list(curve)
            update()

        run_plain(cfg, batch_size=cfg.optim.batch_size, seed=args.seed,
                  thresholds=args.thresholds, max_epochs=plain_epochs, device=device,
                  max_s=None if args.plain_max_minutes is None else 60 * args.plain_max_minutes,
                  on_epoch=on_epoch, recipe=recipe)
    doc["pure_compute_images_per_sec"] = _pure_compute(cfg, 1 if args.smoke else
                                                       args.compute_steps)
    doc["complete"] = True
    update()
    return doc


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure, print the times to each threshold and their ratios, write ``--json``. Exit 2 on
    an invalid override, missing data or an unusable ``--plain-from``."""
    import torch

    from cnn_ray.config import ConfigError
    from cnn_ray.io import atomic_write_json

    args = _parser().parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prior = None
    try:
        resolve_recipe(args)
        cfg = fast_config(args, device)
        if args.plain_from:  # checked before anything trains
            from cnn_ray.benchmark import hardware_summary

            args.only = "fast"
            prior = earlier_plain(args.plain_from, hardware_summary())
    except (ConfigError, ValueError, OSError) as exc:
        print(f"time_to_accuracy: {exc}", file=sys.stderr)
        return 2

    def save(partial: dict[str, Any]) -> None:
        if args.json:
            atomic_write_json(args.json, partial, indent=2)

    doc = measure(args, cfg, device, save, prior)
    plain_n = doc["plain"]["curve"][-1]["epoch"] if doc["plain"] else 0
    fast_n = doc["fast"]["curve"][-1]["epoch"] if doc["fast"] and doc["fast"]["curve"] else 0
    print(f"\n[tta] batch {doc['batch_size']}, seed {doc['seed']}, device {doc['device']}, "
          f"train {doc['train_dir']}, test {doc['test_dir']}")
    for row in doc["comparison"]:
        print("[tta] " + ("plain's best: " if row.get("plain_best") else "")
              + describe(row, plain_n, fast_n))
    if doc["fast"]:
        print(f"[tta] fast: Ray start {doc['fast']['ray_init_s']} s, prepare "
              f"{doc['fast']['prepare_s']} s, whole run {doc['fast']['total_s']} s")
    print(f"[tta] machine: {doc['machine']}; pure-compute images/s of the network "
          f"(fast recipe's batch/precision): {doc['pure_compute_images_per_sec']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
