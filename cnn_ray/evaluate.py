"""Evaluate a checkpoint: top-1, per-class accuracy and a confusion matrix (CSV and PNG).

``jobs/evaluate.py --config RECIPE [--checkpoint DIR] [--data PATH] [--out DIR]``. Without
``--checkpoint`` the run's latest checkpoint (``<storage_path>/<run.name>/checkpoint_*``) is used;
without ``--data`` the recipe's validation data (its prepared shards). ``--data`` may be any
folder/manifest/Parquet input; its classes are matched to the checkpoint's by name.

The model is built as the run trained it (:func:`cnn_ray.recipe.apply.prepare_model`: BatchNorm
settings, the whitening conv's bias, ``channels_last``; not ``torch.compile``: one pass over
the data does not repay the compile time). A checkpoint of a run that kept an EMA of the
weights (``optim.ema``) is evaluated with the averaged weights, which the run's own per-epoch
``val_top1`` measured too; the raw weights are used otherwise (or with ``use_ema=False``). Test-time augmentation follows ``eval.tta`` of the config given (so
``eval.tta=flip`` on the command line changes it); the number of views is in the report.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.io import atomic_write_json
from cnn_ray.inference import eval_transform_for, load_inference_model
from cnn_ray.runs import run_dir
from cnn_ray.train.checkpoint import latest_checkpoint, load_checkpoint
from cnn_ray.train.loop import evaluate


@dataclass
class EvalResult:
    """``top1`` in [0, 1]; ``per_class`` accuracy per class (NaN for classes absent from the
    data); ``confusion`` (K, K) int64 counts, rows = true class, columns = predicted;
    ``weights``: ``"ema"`` (averaged) or ``"raw"``; ``tta_views``: forward passes per image."""

    top1: float
    loss: float
    num_images: int
    class_names: list[str]
    per_class: list[float]
    confusion: np.ndarray
    weights: str = "raw"
    tta_views: int = 1
    eval_transform: Optional[dict] = None  # the sizes the batches were made at (EvalTransform)


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts; rows are true classes, columns predictions."""
    idx = label.astype(np.int64) * num_classes + pred.astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def evaluate_batches(checkpoint: str | os.PathLike, batches: Iterable[dict], *,
                     threads: Optional[int] = None, tta: Optional[str] = None,
                     use_ema: bool = True) -> EvalResult:
    """Run a checkpoint over ``{"image": uint8 (N,H,W,C), "label": (N,)}`` batches (no Ray).

    Args:
        tta: ``eval.tta`` mode (``none``, ``flip``, ``flip_translate``); None: the checkpoint
            config's.
        use_ema: evaluate the averaged weights when the checkpoint holds them (``ema.pt``).
    Raises:
        CheckpointError: an unreadable checkpoint. ValueError: an unknown ``tta`` mode.
    """
    im = load_inference_model(checkpoint, tta=tta, use_ema=use_ema, threads=threads)
    names = im.class_names
    stats = evaluate(im.model, batches, im.settings, collect_predictions=True, predict=im.predict)
    pred, label = stats.extra["pred"].numpy(), stats.extra["label"].numpy()
    cm = confusion_matrix(pred, label, len(names))
    totals = cm.sum(axis=1)
    per_class = [float(cm[i, i] / totals[i]) if totals[i] else float("nan") for i in range(len(names))]
    n = max(1, stats.num_images)
    return EvalResult(top1=stats.correct1 / n, loss=stats.loss_sum / n, num_images=stats.num_images,
                      class_names=list(names), per_class=per_class, confusion=cm,
                      weights=im.weights, tta_views=im.tta_views)


def write_report(result: EvalResult, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``metrics.json``, ``per_class.csv``, ``confusion_matrix.csv`` and
    ``confusion_matrix.png`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: str(out / f) for k, f in [("metrics", "metrics.json"), ("per_class", "per_class.csv"),
                                           ("confusion_csv", "confusion_matrix.csv"),
                                           ("confusion_png", "confusion_matrix.png")]}
    atomic_write_json(paths["metrics"], {
        "top1": result.top1, "loss": result.loss, "num_images": result.num_images,
        "weights": result.weights, "tta_views": result.tta_views,
        **({"eval_transform": result.eval_transform} if result.eval_transform else {}),
        "per_class": dict(zip(result.class_names, result.per_class))}, indent=2)
    with open(paths["per_class"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "accuracy", "images"])
        for name, acc, n in zip(result.class_names, result.per_class, result.confusion.sum(axis=1)):
            w.writerow([name, f"{acc:.4f}", int(n)])
    with open(paths["confusion_csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true\\pred", *result.class_names])
        for name, row in zip(result.class_names, result.confusion):
            w.writerow([name, *map(int, row)])
    k = len(result.class_names)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * k + 2), max(4, 0.6 * k + 1)))
    norm = result.confusion / np.maximum(result.confusion.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), result.class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), result.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"top-1 {100 * result.top1:.2f}% on {result.num_images} images")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(result.confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(paths["confusion_png"], dpi=120)
    plt.close(fig)
    return paths


def evaluate_main(cfg: TrainConfig, *, checkpoint: Optional[str] = None, data: Optional[str] = None,
                  out: Optional[str] = None) -> int:
    """CLI entry (Ray glue): pick checkpoint and data, stream batches with Ray Data, report."""
    from cnn_ray.data.pipeline import build_eval_dataset, build_raw_dataset
    from cnn_ray.data.prepare import prepare_data
    from cnn_ray.data.sources import ManifestSpec, discover

    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir(cfg))
    meta = load_checkpoint(ckpt).meta
    names = meta["class_names"]
    transform = eval_transform_for(meta, cfg)  # the checkpoint's, unless cfg sets other sizes
    if data:
        if not os.path.exists(os.path.expanduser(data)):
            raise ConfigError(f"--data: path does not exist: {data!r}")
        source = discover(data, cfg.data.format, class_names=names, channels=cfg.data.channels,
                          manifest=ManifestSpec.of(cfg.data))
        ds = build_raw_dataset(source, cfg.data, train=False, bands=meta.get("bands"),
                               transform=transform)
    else:
        prepared = prepare_data(cfg)
        if list(prepared.class_names) != list(names):
            raise ConfigError(f"{ckpt}: checkpoint classes {names} differ from the data's "
                              f"{prepared.class_names}")
        ds = build_eval_dataset(prepared.val_files, cfg.data, image_shape=prepared.image_shape,
                                transform=transform)
    ds.context.enable_progress_bars = False
    batches = ds.iter_torch_batches(batch_size=cfg.optim.eval_batch_size, prefetch_batches=2)
    result = evaluate_batches(ckpt, batches, threads=cfg.scaling.torch_threads, tta=cfg.eval.tta)
    result.eval_transform = transform.to_dict()
    out_dir = out or os.path.join(os.path.dirname(ckpt), "eval", Path(ckpt).name)
    paths = write_report(result, out_dir)
    print(f"top1 {100 * result.top1:.2f}% on {result.num_images} images (checkpoint {ckpt}, "
          f"{result.weights} weights, {result.tta_views} TTA views, resize "
          f"{transform.resize_size} -> centre crop {transform.image_size})")
    for name, acc in zip(result.class_names, result.per_class):
        print(f"  {name:20s} {100 * acc:6.2f}%")
    print(json.dumps(paths, indent=2))
    return 0
