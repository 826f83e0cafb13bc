"""Transfer pays: pretrain on five CIFAR-10 classes, fine-tune on 100 images per class of the other five.

    python benchmarks/transfer.py                                   # the measurement (docs/results.md figures)
    python benchmarks/transfer.py --epochs 40 --unfreeze-epoch 4 --seed 1   # a longer budget
    python benchmarks/transfer.py --smoke                           # tiny subsets, 1-2 epochs, ~1 min

What it does, one step after the other in this process (no Ray; the Ray-free trainer
:func:`cnn_ray.train.local.train_arrays`, which builds the model, optimiser, schedule, EMA,
fine-tuning keys and evaluation exactly as a Ray Train worker does, through
:func:`cnn_ray.train.parts.build_parts`):

1. **Data** (:func:`build_datasets`) from the CIFAR-10 JPEG archive (``$CNN_RAY_CIFAR_TAR``,
   decoded once by :func:`cnn_ray.datasets.cifar10_arrays` into ``~/.cache/cnn_ray``): the
   *pretraining* set is every training image of classes 0-4 (airplane, automobile, bird, cat,
   deer: 25,000) with their 5,000 test images as validation; the *target* set is a seeded
   choice of ``--per-class`` (100) training images of each of classes 5-9 (dog, frog, horse,
   ship, truck: 500 images) with all their 5,000 test images as validation. Labels are the
   class's position in its half (0-4 on both sides). Both sets are written as ``.npz`` files
   under ``--cache`` (default ``~/.cache/cnn_ray/transfer``; never in git) and reused.
2. **Pretrain** ``--config`` (the main recipe, ``jobs/configs/cifar10.yaml``: airbench's
   network and techniques) on the pretraining set for ``--pretrain-epochs``; the checkpoint
   goes to ``--cache`` and is reused by a later run with the same settings (``--fresh`` to
   redo it). Its evaluated weights (the EMA, as evaluation uses) minus the classifier head
   become ``backbone.pt``: both halves have five classes, so the head would otherwise load
   with the old classes' meaning; without its keys the new head starts from a fresh
   initialisation (``model.pretrained`` reports it as ``new``).
3. **Fine-tune** from ``backbone.pt`` on the 500 target images for ``--epochs``: the backbone
   frozen (``model.freeze=backbone``) until ``--unfreeze-epoch``, so the fresh head learns on
   fixed features first, then everything at ``--backbone-lr-mult`` x the head's learning rate.
4. **From scratch**: the same network, recipe, batch size and epochs on the same 500 images.
5. Prints both per-epoch validation top-1 curves, the final difference in points, the wall and
   training times, the machine (CPU model, cores, load average) and the pure-compute images/s
   of the network; writes ``transfer.json`` and ``transfer.png`` (both curves) to ``--out``
   (default ``results/transfer``).

Techniques and their sources:

- Transfer by fine-tuning pretrained features, measured on two disjoint halves of one data set's
  classes: Yosinski, Clune, Bengio & Lipson, "How transferable are features in deep neural
  networks?" (NeurIPS 2014), who split ImageNet's classes into halves A/B, pretrain on A and
  fine-tune on B, and find fine-tuned transferred layers beat training from scratch.
- Head first, then all (gradual unfreezing) and a lower learning rate for the pretrained layers
  (discriminative fine-tuning): Howard & Ruder, "Universal Language Model Fine-tuning for Text
  Classification" (ACL 2018, ULMFiT). Here in two groups (head / backbone):
  ``model.freeze`` + ``model.unfreeze_epoch`` and ``optim.backbone_lr_mult``
  (:mod:`cnn_ray.train.finetune`).
- The network and training techniques: airbench (Keller Jordan, "94% on CIFAR-10 in 3.29
  seconds on a single GPU", 2024), as in the main recipe.

Exit 2 with one line on a bad argument, an invalid override or a missing archive.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "jobs" / "configs" / "cifar10.yaml"
DEFAULT_OUT = REPO / "results" / "transfer"
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)  # airplane automobile bird cat deer
TARGET_CLASSES = (5, 6, 7, 8, 9)    # dog frog horse ship truck

Arrays = tuple[np.ndarray, np.ndarray]


class TransferError(ValueError):
    """A bad argument or input of the transfer job; printed as one line, exit 2."""


# ------------------------------------------------------------------------------ data
def class_subset(x: np.ndarray, y: np.ndarray, classes: Sequence[int],
                 per_class: Optional[int] = None, *, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of ``classes``, relabelled by position in ``classes`` (``classes[i]`` -> ``i``).

    Args:
        x, y: ``(N, H, W, C) uint8`` images and ``(N,) int64`` labels.
        per_class: None: every row of each class; else a seeded choice (``np.random
            .default_rng(seed)``, classes drawn in the order given) of that many rows per class,
            without replacement.
    Returns:
        ``(x_sub (M, H, W, C) uint8 contiguous, y_sub (M,) int64 in [0, len(classes)),
        rows (M,) int64)``: ``rows`` are the indices into ``x``/``y``, in class order then
        ascending index.
    Raises:
        TransferError: no classes, a repeated class, ``per_class`` < 1, or a class with fewer
            than ``per_class`` rows (named).
    """
    if not classes:
        raise TransferError("no classes given")
    if len(set(classes)) != len(classes):
        raise TransferError(f"classes repeat: {list(classes)}")
    if per_class is not None and per_class < 1:
        raise TransferError(f"per-class count must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    picked, labels = [], []
    for position, c in enumerate(classes):
        rows = np.flatnonzero(y == c)
        if per_class is not None:
            if len(rows) < per_class:
                raise TransferError(f"class {c} has {len(rows)} images, {per_class} asked for")
            rows = np.sort(rng.choice(rows, per_class, replace=False))
        picked.append(rows)
        labels.append(np.full(len(rows), position, dtype=np.int64))
    rows = np.concatenate(picked).astype(np.int64)
    return np.ascontiguousarray(x[rows]), np.concatenate(labels), rows


def build_datasets(train: Arrays, test: Arrays, *, per_class: int, seed: int,
                   pretrain_per_class: Optional[int] = None,
                   val_per_class: Optional[int] = None) -> dict[str, dict[str, Any]]:
    """The two data sets of the experiment from CIFAR-10-like arrays.

    Returns:
        ``{"pretrain": ..., "target": ...}``, each ``{"train": (x, y), "val": (x, y),
        "train_rows", "val_rows" (indices into the given arrays), "classes" (original labels)}``.
        ``pretrain``: :data:`PRETRAIN_CLASSES`, all training rows (``pretrain_per_class``: a
        seeded choice, for smoke runs); ``target``: :data:`TARGET_CLASSES`, ``per_class``
        training rows per class (seeded by ``seed``). Validation: all test rows of the classes
        (``val_per_class``: a seeded choice, for smoke runs).
    Raises:
        TransferError: as :func:`class_subset`.
    """
    out = {}
    for name, classes, n in (("pretrain", PRETRAIN_CLASSES, pretrain_per_class),
                             ("target", TARGET_CLASSES, per_class)):
        xt, yt, rt = class_subset(*train, classes, n, seed=seed)
        xv, yv, rv = class_subset(*test, classes, val_per_class, seed=seed)
        out[name] = {"train": (xt, yt), "val": (xv, yv), "train_rows": rt, "val_rows": rv,
                     "classes": list(classes)}
    return out


def _save_npz(path: Path, sets: dict[str, dict[str, Any]]) -> None:
    from cnn_ray.io import atomic_write_bytes

    arrays = {}
    for name, s in sets.items():
        arrays.update({f"{name}_x_train": s["train"][0], f"{name}_y_train": s["train"][1],
                       f"{name}_x_val": s["val"][0], f"{name}_y_val": s["val"][1],
                       f"{name}_train_rows": s["train_rows"], f"{name}_val_rows": s["val_rows"],
                       f"{name}_classes": np.asarray(s["classes"], dtype=np.int64)})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load_npz(path: Path) -> dict[str, dict[str, Any]]:
    with np.load(path) as z:  # allow_pickle stays False
        return {name: {"train": (z[f"{name}_x_train"], z[f"{name}_y_train"]),
                       "val": (z[f"{name}_x_val"], z[f"{name}_y_val"]),
                       "train_rows": z[f"{name}_train_rows"], "val_rows": z[f"{name}_val_rows"],
                       "classes": z[f"{name}_classes"].tolist()}
                for name in ("pretrain", "target")}


def cached_datasets(cache: Path, *, per_class: int, seed: int,
                    pretrain_per_class: Optional[int] = None,
                    val_per_class: Optional[int] = None, log: Callable = print
                    ) -> tuple[dict[str, dict[str, Any]], Path]:
    """:func:`build_datasets` on the decoded CIFAR-10 arrays
    (:func:`cnn_ray.datasets.cifar10_arrays`), written once to ``<cache>/data-<tag>.npz`` and
    read back from there on later runs. Returns ``(sets, path)``.

    Raises:
        FileNotFoundError: no archive (``$CNN_RAY_CIFAR_TAR``). TransferError: as
            :func:`class_subset`.
    """
    tag = (f"target{per_class}pc-seed{seed}"
           + (f"-pre{pretrain_per_class}pc" if pretrain_per_class else "")
           + (f"-val{val_per_class}pc" if val_per_class else ""))
    path = cache / f"data-{tag}.npz"
    if path.exists():
        log(f"[transfer] data sets: {path} (cached)")
        return _load_npz(path), path
    from cnn_ray.datasets import cifar10_arrays

    t0 = time.perf_counter()
    sets = build_datasets(cifar10_arrays("train"), cifar10_arrays("test"), per_class=per_class,
                          seed=seed, pretrain_per_class=pretrain_per_class,
                          val_per_class=val_per_class)
    _save_npz(path, sets)
    log(f"[transfer] data sets built in {time.perf_counter() - t0:.1f} s: {path}")
    return sets, path


# ------------------------------------------------------------------------------ configs
def run_configs(args: argparse.Namespace, backbone: str | os.PathLike, device) -> dict[str, Any]:
    """The validated configs ``{"pretrain", "finetune", "scratch"}`` (so a bad override fails
    before any training). ``--config``, then ``run.seed``, then per run:

    - pretrain: ``optim.epochs=--pretrain-epochs``, then ``--pretrain-set``;
    - finetune and scratch: ``optim.epochs=--epochs``, ``optim.batch_size=--batch-size``,
      ``eval.tta_epochs=--tta-epochs``, then ``--set``; finetune adds
      ``model.pretrained=backbone``, ``model.freeze=backbone``,
      ``model.unfreeze_epoch=--unfreeze-epoch`` (none when 1: everything trains from the
      start), ``optim.backbone_lr_mult`` and last ``--finetune-set``.

    ``scaling.use_gpu=true`` on a CUDA ``device``. Data paths and ``backbone`` are not checked.

    Raises:
        cnn_ray.config.ConfigError (a ValueError): an invalid override, named.
        TransferError: ``--unfreeze-epoch`` beyond ``--epochs``.
    """
    from cnn_ray.config_io import load_train_config

    if args.unfreeze_epoch > args.epochs:
        raise TransferError(f"--unfreeze-epoch {args.unfreeze_epoch} is beyond --epochs "
                            f"{args.epochs}: the backbone would never train")
    base = [f"run.seed={args.seed}", *(["scaling.use_gpu=true"] if device.type == "cuda" else [])]
    small = [f"optim.epochs={args.epochs}", f"optim.batch_size={args.batch_size}",
             f"eval.tta_epochs={args.tta_epochs}"]
    freeze = ([] if args.unfreeze_epoch == 1 else
              ["model.freeze=backbone", f"model.unfreeze_epoch={args.unfreeze_epoch}"])
    finetune = [f"model.pretrained={backbone}", *freeze,
                f"optim.backbone_lr_mult={args.backbone_lr_mult}"]

    def load(overrides):
        return load_train_config(args.config, [*base, *overrides], check_paths=False)

    return {"pretrain": load([f"optim.epochs={args.pretrain_epochs}", *args.pretrain_set]),
            "finetune": load([*small, *args.set, *finetune, *args.finetune_set]),
            "scratch": load([*small, *args.set])}


def pretrain_key(cfg, data_path: Path) -> str:
    """A short hash of the pretraining config and data file name: the cached checkpoint's
    name, so a changed recipe, epoch count or seed pretrains again."""
    doc = json.dumps({"config": cfg.to_dict(), "data": data_path.name}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


def write_backbone(checkpoint: str | os.PathLike, path: Path) -> dict[str, Any]:
    """``path``: the checkpoint's evaluated weights (its EMA when it kept an updated one, else
    its raw weights; :func:`cnn_ray.train.finetune.read_pretrained`) without the classifier
    head's keys (:func:`cnn_ray.models.classifier_head` of the checkpoint's model), as a plain
    state dict file. Returns ``{"weights": "ema"|"raw", "head": name, "dropped": keys}``."""
    import torch

    from cnn_ray.config import TrainConfig
    from cnn_ray.io import atomic_write_bytes
    from cnn_ray.models import classifier_head, create_model
    from cnn_ray.train.finetune import read_pretrained

    from cnn_ray.train.checkpoint import read_meta

    w = read_pretrained(str(checkpoint))
    cfg = TrainConfig.from_dict(read_meta(checkpoint)["config"], check_paths=False)
    model = create_model(cfg.model.name, num_classes=len(w.class_names),
                         in_channels=cfg.data.channels,
                         **cfg.model.build_knobs(cfg.data.image_size))
    head = classifier_head(model)[0]
    dropped = sorted(k for k in w.state if k.startswith(head + "."))
    buf = io.BytesIO()
    torch.save({k: v for k, v in w.state.items() if k not in dropped}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return {"weights": w.weights, "head": head, "dropped": dropped}


# ------------------------------------------------------------------------------ runs
def pretrain(cfg, sets, cache: Path, data_path: Path, *, fresh: bool, device,
             log: Callable = print) -> dict[str, Any]:
    """Pretrain ``cfg`` on ``sets["pretrain"]`` unless ``<cache>/pretrain-<key>`` holds the
    checkpoint of an earlier identical run (``fresh``: train again). Writes ``backbone.pt``
    beside it. Returns the run's record (``train_arrays``' result plus ``wall_s``,
    ``checkpoint``, ``backbone``, ``reused``)."""
    import shutil

    from cnn_ray.io import atomic_write_json
    from cnn_ray.train.local import train_arrays

    run_dir = cache / f"pretrain-{pretrain_key(cfg, data_path)}"
    record_path, ckpt, backbone = run_dir / "record.json", run_dir / "checkpoint", \
        run_dir / "backbone.pt"
    if not fresh and record_path.exists() and backbone.exists():
        record = json.loads(record_path.read_text())
        log(f"[transfer] pretraining reused: {run_dir} ({record['epochs']} epochs, val top-1 "
            f"{record['val_top1']:.4f}, trained in {record['wall_s']:.0f} s on "
            f"{record.get('finished', '?')}); --fresh to train again")
        return {**record, "reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    n = len(sets["pretrain"]["train"][0])
    log(f"[transfer] pretraining: {n} images of classes {sets['pretrain']['classes']}, "
        f"{cfg.optim.epochs} epochs")
    t0 = time.perf_counter()
    out = train_arrays(cfg, sets["pretrain"]["train"], sets["pretrain"]["val"], device=device,
                       log=lambda m: log(f"[transfer]   pretrain {m}"), checkpoint_dir=ckpt)
    wall = time.perf_counter() - t0
    head = write_backbone(ckpt, backbone)
    record = {**out, "wall_s": round(wall, 1), "train_images": n, "backbone": str(backbone),
              "backbone_weights": head["weights"], "head_dropped": head["dropped"],
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(record_path, record, indent=2)
    return {**record, "reused": False}


def train_target(name: str, cfg, target: dict, *, device, log: Callable = print
                 ) -> dict[str, Any]:
    """Train ``cfg`` on the target set; ``train_arrays``' result plus ``wall_s`` (whole run,
    evaluation and set-up included)."""
    from cnn_ray.train.local import train_arrays

    log(f"[transfer] {name}: {len(target['train'][0])} images of classes {target['classes']}, "
        f"{cfg.optim.epochs} epochs, batch {cfg.optim.batch_size}")
    t0 = time.perf_counter()
    out = train_arrays(cfg, target["train"], target["val"], device=device,
                       log=lambda m: log(f"[transfer]   {name} {m}"))
    return {**out, "wall_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------ report
def summary_doc(args, configs, sets, data_path: Path, pre: dict, ft: dict, sc: dict,
                machine: dict) -> dict[str, Any]:
    """The JSON document of the run: settings, data, the three runs' figures, the difference."""
    diff = None
    if ft["val_top1"] is not None and sc["val_top1"] is not None:
        diff = round(100 * (ft["val_top1"] - sc["val_top1"]), 2)
    keep = ("val_top1", "val_top1_by_epoch", "epochs", "train_s", "eval_s", "wall_s",
            "images_per_sec", "tta_views", "precision")
    ft_cfg = configs["finetune"]
    return {
        "command": "python benchmarks/transfer.py " + " ".join(args.argv),
        "config": os.path.relpath(args.config, REPO) if str(args.config).startswith(str(REPO))
        else str(args.config),
        "seed": args.seed,
        "data": {"file": str(data_path),
                 "pretrain": {"classes": sets["pretrain"]["classes"],
                              "train_images": len(sets["pretrain"]["train"][0]),
                              "val_images": len(sets["pretrain"]["val"][0])},
                 "target": {"classes": sets["target"]["classes"], "per_class": args.per_class,
                            "train_images": len(sets["target"]["train"][0]),
                            "val_images": len(sets["target"]["val"][0]),
                            "train_rows": [int(r) for r in sets["target"]["train_rows"]]}},
        "pretrain": {**{k: pre.get(k) for k in keep}, "reused": pre["reused"],
                     "finished": pre.get("finished"), "set": list(args.pretrain_set),
                     "backbone_weights": pre.get("backbone_weights"),
                     "head_dropped": pre.get("head_dropped")},
        "finetune": {**{k: ft[k] for k in keep},
                     "freeze": ft_cfg.model.freeze, "unfreeze_epoch": ft_cfg.model.unfreeze_epoch,
                     "backbone_lr_mult": ft_cfg.optim.backbone_lr_mult},
        "scratch": {k: sc[k] for k in keep},
        "target_recipe": {"epochs": args.epochs, "batch_size": args.batch_size,
                          "lr": ft_cfg.optim.lr, "label_smoothing": ft_cfg.optim.label_smoothing,
                          "tta_epochs": args.tta_epochs, "set": list(args.set),
                          "finetune_set": list(args.finetune_set)},
        "difference_points": diff,
        "target_points": 10.0,
        "target_met": diff is not None and diff >= 10.0,
        "machine": machine,
    }


def machine_info(cfg, steps: int) -> dict[str, Any]:
    """``{"summary"}`` (:func:`cnn_ray.benchmark.hardware_summary`: CPU model, cores, memory,
    GPU, versions), ``"loadavg"`` (1/5/15 min, at the end) and
    ``"pure_compute_images_per_sec"``: forward+backward+step of ``cfg``'s model on resident
    tensors at its batch size (:func:`cnn_ray.benchmark.synthetic_images_per_sec`; None when
    ``steps`` is 0)."""
    from cnn_ray.benchmark import hardware_summary, synthetic_images_per_sec

    ips = None
    if steps > 0:
        ips = round(synthetic_images_per_sec(cfg, 5, steps=steps, warmup=1), 1)
    return {"summary": hardware_summary(), "loadavg": [round(v, 2) for v in os.getloadavg()],
            "pure_compute_images_per_sec": ips, "pure_compute_batch": cfg.optim.batch_size}


def plot(doc: dict[str, Any], path: Path) -> Path:
    """``path`` (PNG): validation top-1 (%) per epoch of the fine-tuned and from-scratch runs,
    the unfreezing epoch marked; final figures in the legend and title."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from cnn_ray.io import atomic_write_bytes

    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    ft, sc = doc["finetune"], doc["scratch"]
    for run, label, color in ((ft, "fine-tuned (pretrained on classes 0-4)", "tab:blue"),
                              (sc, "from scratch", "tab:orange")):
        ys = [100 * v for v in run["val_top1_by_epoch"]]
        ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, color=color,
                label=f"{label}: {ys[-1]:.1f}%")
    if ft.get("unfreeze_epoch"):
        ax.axvline(ft["unfreeze_epoch"] - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.text(ft["unfreeze_epoch"] - 0.4, 5, "backbone unfrozen", color="grey", fontsize=8)
    t = doc["data"]["target"]
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"CIFAR-10 classes 5-9, {t['train_images']} training images "
                 f"({t['per_class']}/class), {t['val_images']} val: "
                 f"{doc['difference_points']:+.1f} points", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def print_report(doc: dict[str, Any], log: Callable = print) -> None:
    """The per-epoch curves of both runs, the difference, the times and the machine."""
    ft, sc, pre = doc["finetune"], doc["scratch"], doc["pretrain"]
    log("\nepoch | fine-tuned top-1 | scratch top-1")
    for i, (a, b) in enumerate(zip(ft["val_top1_by_epoch"], sc["val_top1_by_epoch"]), start=1):
        mark = "  <- backbone unfrozen" if ft.get("unfreeze_epoch") == i else ""
        log(f"{i:5d} | {100 * a:15.2f}% | {100 * b:12.2f}%{mark}")
    log(f"\nfinal val top-1: fine-tuned {100 * ft['val_top1']:.2f}%, scratch "
        f"{100 * sc['val_top1']:.2f}%: difference {doc['difference_points']:+.2f} points "
        f"(target >= +{doc['target_points']:g}: {'met' if doc['target_met'] else 'NOT met'})")
    log(f"pretraining: {doc['data']['pretrain']['train_images']} images, {pre['epochs']} epochs, "
        f"val top-1 {100 * pre['val_top1']:.2f}% on {doc['data']['pretrain']['val_images']}; "
        f"wall {pre['wall_s']:.0f} s (training {pre['train_s']:.0f} s)"
        + (f" [reused from {pre['finished']}]" if pre["reused"] else ""))
    for name, r in (("fine-tune", ft), ("scratch", sc)):
        log(f"{name}: {r['epochs']} epochs, wall {r['wall_s']:.1f} s (training {r['train_s']:.1f}"
            f" s, evaluation {r['eval_s']:.1f} s), {r['images_per_sec']} images/s, "
            f"{r['precision']}, TTA views at the last epoch {r['tta_views']}")
    m = doc["machine"]
    log(f"machine: {m['summary']}; load average {m['loadavg']}; pure-compute images/s "
        f"(fwd+bwd+step, batch {m['pure_compute_batch']}): {m['pure_compute_images_per_sec']}")


# ------------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/transfer.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the recipe (YAML)")
    p.add_argument("--pretrain-epochs", type=int, default=12,
                   help="epochs on the 25,000 pretraining images (default 12)")
    p.add_argument("--epochs", type=int, default=10,
                   help="epochs of both the fine-tuned and the from-scratch run (default 10: "
                   "fine-tuning is at its plateau by then; docs/results.md: 10, 20 and 40 measured)")
    p.add_argument("--per-class", type=int, default=100,
                   help="training images per target class (default 100)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="batch size of both target runs (default 100: 5 steps per epoch)")
    p.add_argument("--unfreeze-epoch", type=int, default=2,
                   help="1-based epoch from which the backbone trains too (1: no freeze; "
                   "default 2: the head alone for one epoch)")
    p.add_argument("--backbone-lr-mult", type=float, default=1.0,
                   help="backbone lr relative to the head's after unfreezing (0, 1]")
    p.add_argument("--tta-epochs", choices=("all", "last"), default="last",
                   help="test-time augmentation (the recipe's eval.tta) at the last epoch only (default, as the recipe) or at every epoch")
    p.add_argument("--seed", type=int, default=0, help="subset choice and run.seed")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of both target runs (fine-tuned and scratch)")
    p.add_argument("--finetune-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of the fine-tuned run only (after --set)")
    p.add_argument("--pretrain-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of the pretraining run")
    p.add_argument("--out", help="where transfer.json/.png go (default results/transfer; "
                                 "with --smoke <cache>/smoke)")
    p.add_argument("--cache", help="data sets and pretraining checkpoint "
                                   "(default ~/.cache/cnn_ray/transfer)")
    p.add_argument("--fresh", action="store_true",
                   help="pretrain again even when the cache holds an identical run")
    p.add_argument("--compute-steps", type=int, default=3,
                   help="timed steps of the pure-compute images/s (0: skip)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run: 40 pretraining and 10 target images per class, 50 "
                        "validation images per class, 1 pretraining and 2 target epochs")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Raise :class:`TransferError` naming the first out-of-range argument."""
    for name in ("pretrain_epochs", "epochs", "per_class", "batch_size", "unfreeze_epoch"):
        if getattr(args, name) < 1:
            raise TransferError(f"--{name.replace('_', '-')} must be >= 1, got "
                                f"{getattr(args, name)}")
    if args.per_class > 5000:
        raise TransferError(f"--per-class {args.per_class}: CIFAR-10 has 5000 training images "
                            f"per class")
    if not 0.0 < args.backbone_lr_mult <= 1.0:
        raise TransferError(f"--backbone-lr-mult must be in (0, 1], got {args.backbone_lr_mult}")
    if args.compute_steps < 0:
        raise TransferError(f"--compute-steps must be >= 0, got {args.compute_steps}")
    if not Path(args.config).is_file():
        raise TransferError(f"--config {args.config}: no such file")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parsed and checked arguments (``--smoke`` applied; ``argv`` kept for the record).

    Raises:
        TransferError: an out-of-range argument (:func:`check_args`).
        SystemExit: argparse's own errors (exit 2 with its usage line).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    args.pretrain_per_class = args.val_per_class = None
    if args.smoke:
        args.pretrain_epochs, args.epochs, args.per_class = 1, 2, 10
        args.unfreeze_epoch, args.batch_size, args.compute_steps = 2, 10, 0
        args.pretrain_per_class, args.val_per_class = 40, 50
    check_args(args)
    return args


def prepare(args: argparse.Namespace, log: Callable = print) -> dict[str, Any]:
    """Everything that can fail on the user's input, before any training: the device, the
    cache and output folders, the validated configs (:func:`run_configs`) and the data sets
    (:func:`cached_datasets`). Returns ``{"device", "cache", "out", "sets", "data_path"}``.

    Raises:
        TransferError, ConfigError (ValueErrors): bad arguments or overrides.
        FileNotFoundError: no CIFAR-10 archive.
    """
    import torch

    from cnn_ray.datasets import default_cache_dir

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache = Path(args.cache) if args.cache else default_cache_dir() / "transfer"
    out = Path(args.out) if args.out else (cache / "smoke" if args.smoke else DEFAULT_OUT)
    run_configs(args, cache / "backbone.pt", device)  # the real path is set after pretraining
    cache.mkdir(parents=True, exist_ok=True)
    sets, data_path = cached_datasets(cache, per_class=args.per_class, seed=args.seed,
                                      pretrain_per_class=args.pretrain_per_class,
                                      val_per_class=args.val_per_class, log=log)
    return {"device": device, "cache": cache, "out": out, "sets": sets, "data_path": data_path}


def run(args: argparse.Namespace, plan: dict[str, Any], log: Callable = print) -> dict[str, Any]:
    """The experiment (module docstring) on :func:`prepare`'s ``plan``; returns the JSON
    document written to ``<out>/transfer.json`` (``<out>/transfer.png`` beside it)."""
    from cnn_ray.io import atomic_write_json

    device, sets, out = plan["device"], plan["sets"], plan["out"]
    configs = run_configs(args, plan["cache"] / "backbone.pt", device)
    pre = pretrain(configs["pretrain"], sets, plan["cache"], plan["data_path"],
                   fresh=args.fresh, device=device, log=log)
    configs = run_configs(args, pre["backbone"], device)
    ft = train_target("fine-tune", configs["finetune"], sets["target"], device=device, log=log)
    sc = train_target("scratch", configs["scratch"], sets["target"], device=device, log=log)
    machine = machine_info(configs["pretrain"], args.compute_steps)
    doc = summary_doc(args, configs, sets, plan["data_path"], pre, ft, sc, machine)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "transfer.json", doc, indent=2)
    plot(doc, out / "transfer.png")
    print_report(doc, log)
    log(f"wrote {out / 'transfer.json'} and {out / 'transfer.png'}")
    return doc


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, :func:`prepare`, :func:`run`. Exit 2 with one line (no traceback) on a bad
    argument, an invalid override or a missing archive; errors during training are not
    caught."""
    try:
        args = parse_args(argv)
        plan = prepare(args)
    except (ValueError, FileNotFoundError) as exc:  # TransferError, ConfigError, no archive
        print(f"transfer: {exc}", file=sys.stderr)
        return 2
    run(args, plan)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
