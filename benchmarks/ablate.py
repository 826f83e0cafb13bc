"""Ablation table of the fast recipe, in the form of airbench's: each technique removed in turn.

    python benchmarks/ablate.py                                     # every variant, all data, 1 seed
    python benchmarks/ablate.py --train-images 10000 --epochs 6 --seeds 0 1 --json ablate.json
    python benchmarks/ablate.py --only full no_whitening --set optim.batch_size=512
    python benchmarks/ablate.py --list                              # the variants and their overrides

Trains ``jobs/configs/cifar10.yaml`` (``--config``) and, for each technique, the same recipe with
that technique removed (``sgd``: no Muon; plus one addition: ``drop_last``, airbench's dropping
of each epoch's last partial batch, which the recipe does not do), each variant a list of dotted
overrides (:data:`VARIANTS`), through the Ray-free trainer :func:`cnn_ray.train.local.train_arrays`
(the Ray Train worker's parts on in-memory arrays). Every variant runs with
``eval.tta_epochs=all``, so each epoch's top-1 is the figure with the variant's test-time
augmentation (none for ``no_tta``), as airbench measures. Dirac init is part of the airbench
network, not a switch, so it has no row.

``--recipe photo`` (chosen by itself when ``--config`` sets ``data.store_size``) ablates the
photo recipe ``jobs/configs/flowers.yaml`` instead (:data:`PHOTO_VARIANTS`: progressive
resizing, FixRes evaluation, label smoothing, EMA, flip TTA, BlurPool), on the config's
``data.train`` / ``data.val`` image folders decoded once into ``data.store_size`` squares
(:func:`cnn_ray.datasets.image_folder_arrays`), thresholds 50/60/70% by default:

    python benchmarks/ablate.py --recipe photo --seeds 0 1 --json ablate_photo.json

Prints a markdown table: variant, overrides, test top-1 after the last epoch (mean over seeds),
the epochs to reach each ``--thresholds`` top-1 on the mean per-epoch curve ("-" when not
reached), training seconds (mean; evaluation excluded), wall seconds of the whole run (mean;
evaluation included); then the machine and its pure-compute
images/s for the recipe's model (:func:`cnn_ray.benchmark.synthetic_images_per_sec`). Epochs
are the unit, so the table holds on any machine; the seeds, the subset (a seeded draw, seed 0,
of the decoded CIFAR-10 JPEG arrays, :func:`cnn_ray.datasets.cifar10_arrays`, or of the photos)
and the epochs are printed with it. No Ray.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "jobs" / "configs" / "cifar10.yaml"
PHOTO_CONFIG = REPO / "jobs" / "configs" / "flowers.yaml"

# Each variant: the dotted overrides (on the fast recipe) that remove one technique.
VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_whitening": ["model.whitening.enabled=false"],
    "bn_defaults": ["model.batchnorm.momentum=null", "model.batchnorm.eps=null",
                    "model.batchnorm.freeze_scale=false", "model.batchnorm.bias_lr_mult=1"],
    "random_flip": ["augment.hflip.mode=random"],
    "no_tta": ["eval.tta=none"],
    "no_label_smoothing": ["optim.label_smoothing=0"],
    "onecycle": ["optim.schedule=onecycle"],
    "no_lookahead": ["optim.ema.enabled=false"],
    "sgd": ["optim.optimizer=sgd"],  # no Muon: SGD-Nesterov on the conv filters too (airbench93)
    "drop_last": ["data.drop_last=true"],  # an addition: airbench drops the last partial batch
}
# The photo recipe (jobs/configs/flowers.yaml), each technique removed in turn.
PHOTO_VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_progressive": ["data.progressive.enabled=false"],  # every epoch at data.image_size
    # FixRes off: test at the 128-px train size, torchvision's 0.875 ratio (146 -> centre 128)
    "no_fixres": ["eval.image_size=128", "eval.resize_size=146"],
    "no_label_smoothing": ["optim.label_smoothing=0"],
    "no_ema": ["optim.ema.enabled=false"],
    "no_tta": ["eval.tta=none"],
    "no_blurpool": ["model.blurpool=false"],
}
RECIPES: dict[str, dict[str, Any]] = {
    "cifar": {"config": DEFAULT_CONFIG, "variants": VARIANTS, "thresholds": [0.85, 0.88, 0.896]},
    "photo": {"config": PHOTO_CONFIG, "variants": PHOTO_VARIANTS, "thresholds": [0.5, 0.6, 0.7]},
}
ALWAYS = ["eval.tta_epochs=all"]  # every epoch's top-1 is the TTA figure


def variant_overrides(only: Optional[Sequence[str]] = None,
                      recipe: str = "cifar") -> list[tuple[str, list[str]]]:
    """``[(name, overrides)]`` of ``recipe``'s variants (:data:`VARIANTS` for ``cifar``,
    :data:`PHOTO_VARIANTS` for ``photo``) in table order, or of ``only`` in its order.

    Raises:
        ValueError: an unknown ``recipe``, or a name of ``only`` that is not one of its
            variants (the known names listed).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    table = RECIPES[recipe]["variants"]
    names = list(only) if only else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown {recipe} variant(s) {unknown}; known: {', '.join(table)}")
    return [(n, list(table[n])) for n in names]


def detect_recipe(config: str | os.PathLike) -> str:
    """``photo`` when the recipe file sets ``data.store_size`` (photos stored larger than the
    training crop), else ``cifar``.

    Raises:
        cnn_ray.config.ConfigError: the file does not validate.
    """
    from cnn_ray.config_io import load_train_config

    return "photo" if load_train_config(config, check_paths=False).data.store_size else "cifar"


def resolve_recipe(args: argparse.Namespace) -> None:
    """Fill ``args.recipe``, ``args.config`` and ``args.thresholds`` left unset: the recipe from
    the config (:func:`detect_recipe`) or ``cifar``; the config and thresholds from the recipe
    (:data:`RECIPES`)."""
    if args.recipe is None:
        args.recipe = detect_recipe(args.config) if args.config else "cifar"
    args.config = args.config or str(RECIPES[args.recipe]["config"])
    if args.thresholds is None:
        args.thresholds = list(RECIPES[args.recipe]["thresholds"])


def variant_config(config: str | os.PathLike, variant: Sequence[str], *, seed: int,
                   epochs: Optional[int] = None, extra: Sequence[str] = ()):
    """The validated :class:`~cnn_ray.config.TrainConfig` of one variant and seed: the recipe
    file, then ``extra`` (``--set``), :data:`ALWAYS`, ``run.seed``, ``optim.epochs`` (None: the
    recipe's) and the variant's overrides. Data paths are not checked (arrays are passed in).

    Raises:
        cnn_ray.config.ConfigError: an override the config rejects, named.
    """
    from cnn_ray.config_io import load_train_config

    overrides = [*extra, *ALWAYS, f"run.seed={seed}"]
    if epochs is not None:
        overrides.append(f"optim.epochs={epochs}")
    return load_train_config(config, [*overrides, *variant], check_paths=False)


def epochs_to(top1_by_epoch: Sequence[float], threshold: float) -> Optional[int]:
    """The first 1-based epoch whose top-1 is >= ``threshold`` (fractions, 0.85 = 85%), or None
    when no epoch reaches it."""
    for epoch, top1 in enumerate(top1_by_epoch, start=1):
        if top1 >= threshold:
            return epoch
    return None


def seeded_subset(x: np.ndarray, y: np.ndarray, n: Optional[int], *, seed: int = 0):
    """The first ``n`` rows (all when None or >= len) of a seeded permutation of ``(x, y)``:
    ``((n, H, W, C) uint8 contiguous, (n,) int64)``."""
    order = np.random.default_rng(seed).permutation(len(x))[: n or len(x)]
    return np.ascontiguousarray(x[order]), y[order]


def summarise(name: str, overrides: Sequence[str], runs: Sequence[dict],
              thresholds: Sequence[float]) -> dict[str, Any]:
    """One table row from the :func:`~cnn_ray.train.local.train_arrays` results of one variant
    (one per seed): mean per-epoch top-1 curve, mean last top-1, epochs to each threshold on the
    mean curve, mean training seconds."""
    curves = np.asarray([r["val_top1_by_epoch"] for r in runs], dtype=np.float64)
    mean_curve = [round(float(v), 4) for v in curves.mean(0)]
    return {"variant": name, "overrides": list(overrides),
            "top1_last": mean_curve[-1] if mean_curve else None,
            "top1_last_by_seed": [r["val_top1"] for r in runs],
            "top1_by_epoch": mean_curve,
            "epochs_to": {str(t): epochs_to(mean_curve, t) for t in thresholds},
            "train_s": round(statistics.mean(r["train_s"] for r in runs), 1),
            **({"wall_s": round(statistics.mean(r["wall_s"] for r in runs), 1)}
               if all("wall_s" in r for r in runs) else {}),
            "tta_views": runs[0]["tta_views"], "precision": runs[0]["precision"]}


def markdown_table(rows: Sequence[dict], thresholds: Sequence[float]) -> str:
    """The rows of :func:`summarise` as a markdown table (top-1 in %; a ``wall s`` column when
    every row has its wall time)."""
    wall = bool(rows) and all("wall_s" in r for r in rows)
    head = ["variant", "overrides", "top-1 last epoch"]
    head += [f"epochs to {100 * t:g}%" for t in thresholds] + ["train s"]
    head += ["wall s"] if wall else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        reached = [r["epochs_to"][str(t)] for t in thresholds]
        cells = [r["variant"], ", ".join(f"`{o}`" for o in r["overrides"]) or "(the recipe)",
                 f"{100 * r['top1_last']:.2f}%" if r["top1_last"] is not None else "-",
                 *("-" if e is None else str(e) for e in reached), f"{r['train_s']:.0f}"]
        cells += [f"{r['wall_s']:.0f}"] if wall else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line() -> str:
    """One line without Ray: :func:`cnn_ray.benchmark.hardware_summary`."""
    from cnn_ray.benchmark import hardware_summary

    return hardware_summary()


def recipe_arrays(recipe: str, cfg) -> tuple[tuple[np.ndarray, np.ndarray],
                                             tuple[np.ndarray, np.ndarray]]:
    """``((x_train, y_train), (x_test, y_test))`` uint8 NHWC images and int64 labels:
    CIFAR-10's decoded arrays for ``cifar``; for ``photo`` the ``cfg.data.train`` /
    ``cfg.data.val`` image folders decoded into ``data.store_size`` squares, as prepare stores
    them (:func:`cnn_ray.datasets.image_folder_arrays`; the class folders must match).

    Raises:
        ValueError: a photo config without ``data.val``, or other class folders in val.
        FileNotFoundError: a missing archive or folder.
    """
    if recipe == "cifar":
        from cnn_ray.datasets import cifar10_arrays

        return cifar10_arrays("train"), cifar10_arrays("test")
    from cnn_ray.datasets import image_folder_arrays

    if cfg.data.val is None:
        raise ValueError("ablate --recipe photo: the config needs data.val (an image folder)")
    size = cfg.data.stored_size
    xt, yt, names = image_folder_arrays(cfg.data.train, size)
    xv, yv, val_names = image_folder_arrays(cfg.data.val, size)
    if val_names != names:
        raise ValueError(f"ablate: data.val's class folders differ from data.train's "
                         f"({len(val_names)} vs {len(names)})")
    return (xt, yt), (xv, yv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="cifar (jobs/configs/cifar10.yaml's variants) or photo "
                        "(jobs/configs/flowers.yaml's); default: photo when --config sets "
                        "data.store_size, else cifar")
    p.add_argument("--config", help="the recipe (YAML; default: the --recipe's)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="variants to run (default: all)")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the recipe's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="run.seed values")
    p.add_argument("--train-images", type=int, help="seeded training subset (default: all)")
    p.add_argument("--test-images", type=int, help="seeded test subset (default: all)")
    p.add_argument("--thresholds", type=float, nargs="+",
                   help="top-1 fractions to count epochs to (default: cifar 0.85 0.88 0.896, "
                        "photo 0.5 0.6 0.7)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides applied to every variant (e.g. optim.batch_size=512)")
    p.add_argument("--compute-steps", type=int, default=5,
                   help="timed steps of the pure-compute images/s (0: skip)")
    p.add_argument("--json", help="write the table and its settings to this JSON file")
    return p


def _pure_compute(config: str, extra: Sequence[str], steps: int) -> Optional[float]:
    """Median images/s of forward+backward+step of the recipe's model on in-memory tensors."""
    if steps <= 0:
        return None
    from cnn_ray.benchmark import synthetic_images_per_sec

    cfg = variant_config(config, [], seed=0, extra=extra)
    return round(synthetic_images_per_sec(cfg, 10, steps=steps, warmup=1), 1)


def plan(args: argparse.Namespace, device) -> tuple[list, dict, list[str]]:
    """``(variants, configs, extra)``: the selected variants, the validated config of every
    (variant, seed) -- so a bad override fails before any training -- and the overrides applied
    to all (``--set``, plus ``scaling.use_gpu=true`` on a CUDA device).

    Raises:
        ValueError: an unknown variant; ConfigError (a ValueError): an invalid override.
        FileNotFoundError: ``--recipe photo`` and ``data.train`` / ``data.val`` is not a folder.
    """
    extra = [*args.set, *(["scaling.use_gpu=true"] if device.type == "cuda" else [])]
    variants = variant_overrides(args.only, getattr(args, "recipe", None) or "cifar")
    configs = {(n, s): variant_config(args.config, ov, seed=s, epochs=args.epochs, extra=extra)
               for n, ov in variants for s in args.seeds}
    if getattr(args, "recipe", None) == "photo":  # the photos are read from the config's folders
        data = configs[variants[0][0], args.seeds[0]].data
        for key in ("train", "val"):
            path = getattr(data, key)
            if path is None or not os.path.isdir(os.path.expanduser(path)):
                raise FileNotFoundError(f"data.{key}: not an image folder: {path!r} (extract "
                                        "the photos first, see the recipe's header)")
    return variants, configs, extra


def run_ablation(args: argparse.Namespace, variants, configs, extra, device,
                 log=print) -> dict[str, Any]:
    """Train every variant of :func:`plan` for every seed; returns the JSON document (``rows``:
    one :func:`summarise` dict per variant, plus the settings, machine, pure-compute images/s).
    With ``args.json`` the rows done so far are written there (``"partial": true``) after each
    variant, so a run stopped early keeps them."""
    from cnn_ray.io import atomic_write_json

    from cnn_ray.train.local import train_arrays

    recipe = getattr(args, "recipe", None) or "cifar"
    first = configs[variants[0][0], args.seeds[0]]
    train_xy, test_xy = recipe_arrays(recipe, first)
    train = seeded_subset(*train_xy, args.train_images)
    test = seeded_subset(*test_xy, args.test_images)
    rows = []
    for name, overrides in variants:
        runs = []
        for seed in args.seeds:
            log(f"[ablate] {name} seed {seed}: {' '.join(overrides) or '(the recipe)'}")
            t0 = time.perf_counter()
            run = train_arrays(configs[name, seed], train, test, device=device,
                               log=lambda m: log(f"[ablate]   {m}"))
            runs.append({**run, "wall_s": round(time.perf_counter() - t0, 2)})
        rows.append(summarise(name, overrides, runs, args.thresholds))
        if getattr(args, "json", None):
            atomic_write_json(args.json, {"partial": True, "config": str(args.config),
                                          "set": list(args.set), "seeds": list(args.seeds),
                                          "device": str(device), "rows": rows}, indent=2)
    epochs = configs[variants[0][0], args.seeds[0]].optim.epochs
    return {"recipe": recipe, "config": str(args.config), "set": list(args.set), "always": ALWAYS,
            "seeds": list(args.seeds), "epochs": epochs, "train_images": len(train[0]),
            "test_images": len(test[0]), "subset_seed": 0, "thresholds": list(args.thresholds),
            "device": str(device), "machine": machine_line(),
            "pure_compute_images_per_sec": _pure_compute(args.config, extra, args.compute_steps),
            "rows": rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ablation, print the table and its settings, write ``--json``. Exit 2 on an unknown
    variant, an invalid override or (photo) missing image folders."""
    import torch

    from cnn_ray.io import atomic_write_json

    args = _parser().parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolve_recipe(args)
        if args.list:
            for name, overrides in variant_overrides(recipe=args.recipe):
                print(f"{name:20s} {' '.join(overrides) or '(the recipe)'}")
            return 0
        variants, configs, extra = plan(args, device)
    except (ValueError, OSError) as exc:  # an unknown variant, a ConfigError naming the
        # override, or photo folders that are not there
        print(f"ablate: {exc}", file=sys.stderr)
        return 2
    doc = run_ablation(args, variants, configs, extra, device)
    print(markdown_table(doc["rows"], doc["thresholds"]))
    print(f"\n{doc['config']} with {' '.join(doc['always'] + doc['set'])}; {doc['epochs']} epochs; "
          f"seeds {doc['seeds']} (top-1 and epochs-to on the mean over seeds); "
          f"{doc['train_images']} train / {doc['test_images']} test images (seeded subset, "
          f"seed {doc['subset_seed']}); device {doc['device']}")
    print(f"machine: {doc['machine']}; pure-compute images/s of the recipe's model "
          f"(fwd+bwd+step, batch of the recipe): {doc['pure_compute_images_per_sec']}")
    if args.json:
        atomic_write_json(args.json, doc, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
