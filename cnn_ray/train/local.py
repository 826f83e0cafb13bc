"""Train a config on in-memory arrays in this process, without Ray.

The same parts as a Ray Train worker (:func:`cnn_ray.train.parts.build_parts`: the recipe's
model preparation, EMA, optimiser and schedule; :func:`cnn_ray.train.loop.train_one_epoch` with
the recipe's step hooks; evaluation of the EMA weights with test-time augmentation) and the
same memory-cache data path (:class:`cnn_ray.data.memory.InMemoryShard`, on the GPU as a
``DeviceShard`` when there is one). Used by ``benchmarks/gpu_check.py`` on machines without Ray and by
recipe probes; ``jobs/train.py`` remains the way to train (Ray Data, Ray Train, checkpoints).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.data.memory import InMemoryShard, shard_for_device
from cnn_ray.data.preprocess import EvalTransform
from cnn_ray.recipe.apply import (build_step_hooks, compute_stem_weights, eval_model,
                                  tta_predictor)
from cnn_ray.recipe.tta import tta_views
from cnn_ray.train.checkpoint import save_checkpoint
from cnn_ray.train.finetune import keep_pretrained_normalization, record_pretrained
from cnn_ray.train.inputs import DataSummary
from cnn_ray.train.loop import evaluate, train_one_epoch
from cnn_ray.train.parts import begin_epoch, build_parts

Arrays = tuple[np.ndarray, np.ndarray]


def train_arrays(cfg: TrainConfig, train: Arrays, val: Arrays, *, device: torch.device,
                 log: Optional[Callable[[str], None]] = None,
                 checkpoint_dir: Optional[str | os.PathLike] = None) -> dict[str, Any]:
    """Train ``cfg`` for ``optim.epochs`` on ``train`` and evaluate on ``val`` each epoch.

    Args:
        train, val: ``(images (N, H, W, C) uint8, labels (N,) int64)`` as stored (training
            images larger than ``data.image_size`` are random-resized cropped to it per
            batch, to each epoch's ``data.crop_size_at`` with ``data.progressive``; validation
            images get the run's validation transform once).
        device: where to train (``cuda``: rows and augmentation on the GPU).
        Fine-tuning keys (``model.pretrained``, ``model.freeze``, ``model.unfreeze_epoch``,
        ``optim.backbone_lr_mult``) act as in a Ray Train run (:mod:`cnn_ray.train.finetune`):
        a checkpoint's mean/std replace the arrays' statistics, and the report is logged.
        checkpoint_dir: when given (must not exist yet), a cnn_ray checkpoint of the last epoch
            is written there (:func:`cnn_ray.train.checkpoint.save_checkpoint`: raw and EMA
            weights, optimiser state, the normalisation used, class names ``"0"``...), so it
            can serve as ``model.pretrained`` of a later run.
    Raises:
        ConfigError: ``optim.budget_s`` is set (a budget is planned by the Ray Train worker,
            :mod:`cnn_ray.train.budget_run`; this trainer runs ``optim.epochs``).
    Returns:
        ``{"train_s": seconds from the first to the last training step (evaluation excluded),
        "eval_s", "epochs", "val_top1" (last epoch), "val_top1_by_epoch",
        "train_image_size_by_epoch" (the side trained each epoch, ``data.progressive``), "tta_views",
        "images_per_sec", "precision", "checkpoint" (the directory written, or None)}``.
    """
    if cfg.optim.budget_s is not None:
        raise ConfigError(f"optim.budget_s={cfg.optim.budget_s:g}: training to a time budget "
                          "runs through Ray Train (jobs/train.py); the Ray-free trainer runs "
                          "optim.epochs: drop optim.budget_s here")
    log = log or (lambda msg: print(f"[cnn_ray.local] {msg}", flush=True))
    summary = keep_pretrained_normalization(cfg, _summary(train, val))
    stem = _stem_weights(cfg, train, summary)
    parts = build_parts(cfg, summary, 0, 1, device=device, stem_weights=stem)
    record_pretrained(parts.finetune.report, None, log)
    host = InMemoryShard(train[0], train[1], np.arange(len(train[0]), dtype=np.int64))
    epochs, resize = cfg.optim.epochs, cfg.data.progressive.enabled
    shard = shard_for_device(host, device, cfg.augment, always_resize=resize,
                             out_size=cfg.data.crop_size_at(epochs, epochs))  # (the end size)
    val_images = EvalTransform.of(cfg).apply(val[0])  # as stored -> the validation transform
    val_shard = shard_for_device(InMemoryShard(val_images, val[1], np.arange(len(val[0]))),
                                 device)
    hooks = build_step_hooks(cfg, parts.model, parts.ema, summary.num_classes, seed=cfg.run.seed,
                             steps_per_epoch=parts.steps_per_epoch)
    train_s = eval_s = 0.0
    images, by_epoch, sizes = 0, [], []
    for epoch in range(epochs):
        begin_epoch(parts, cfg, epoch, 1, log)
        size = cfg.data.crop_size_at(epoch, epochs)  # data.progressive: this epoch's side
        sizes.append(int(size or train[0].shape[1]))
        t0 = time.perf_counter()
        stats = train_one_epoch(
            parts.model, shard.batches(cfg.per_worker_batch_size(), augment=cfg.augment,
                                       seed=cfg.run.seed, epoch=epoch, shuffle=True,
                                       drop_last=cfg.data.drop_last, out_size=size,
                                       always_resize=resize),
            parts.optimizer, parts.settings, scheduler=parts.scheduler,
            scheduler_per_step=parts.per_step, scaler=parts.scaler, hooks=hooks)
        train_s += time.perf_counter() - t0
        images += stats.num_images
        t0 = time.perf_counter()
        predict = tta_predictor(cfg.eval.tta_at(epoch, cfg.optim.epochs))
        ev = evaluate(eval_model(parts.model, parts.ema),
                      val_shard.batches(cfg.optim.eval_batch_size, shuffle=False),
                      parts.settings, predict=predict)
        eval_s += time.perf_counter() - t0
        by_epoch.append(round(ev.correct1 / max(1, ev.num_images), 4))
        log(f"epoch {epoch + 1}: val_top1 {by_epoch[-1]:.4f} train {stats.wall_s:.1f}s "
            f"({stats.num_images / max(stats.wall_s, 1e-9):.0f} images/s"
            + (f", size {size}px)" if resize else ")"))
    if checkpoint_dir is not None:
        save_checkpoint(checkpoint_dir, model=parts.model, epoch=cfg.optim.epochs,
                        config=cfg.to_dict(), class_names=list(summary.class_names),
                        mean=list(summary.mean), std=list(summary.std),
                        optimizer=parts.optimizer, scheduler=parts.scheduler,
                        scaler=parts.scaler, best=max(by_epoch, default=None),
                        metrics={"val_top1": by_epoch[-1] if by_epoch else None},
                        ema=parts.ema, eval_transform=EvalTransform.of(cfg).to_dict())
    return {"train_s": round(train_s, 2), "eval_s": round(eval_s, 2), "epochs": cfg.optim.epochs,
            "val_top1": by_epoch[-1] if by_epoch else None, "val_top1_by_epoch": by_epoch,
            "train_image_size_by_epoch": sizes,
            "tta_views": tta_views(cfg.eval.tta_at(cfg.optim.epochs - 1, cfg.optim.epochs)), "precision": parts.settings.precision,
            "images_per_sec": round(images / max(train_s, 1e-9)),
            "checkpoint": str(checkpoint_dir) if checkpoint_dir is not None else None}


def _summary(train: Arrays, val: Arrays) -> DataSummary:
    x = train[0].reshape(-1, train[0].shape[-1])
    mean = (x.mean(0) / 255.0).tolist()
    std = (x.std(0) / 255.0).tolist()
    classes = int(max(train[1].max(), val[1].max())) + 1
    return DataSummary(class_names=[str(i) for i in range(classes)], mean=mean, std=std,
                       num_train=len(train[0]), num_val=len(val[0]),
                       image_shape=tuple(train[0].shape[1:]), bad_inputs=0, raw=False)


def _stem_weights(cfg: TrainConfig, train: Arrays, summary: DataSummary):
    """The whitening filters from a seeded sample of the training images (as the driver does
    from the prepared shards), or None when whitening is off."""
    if not cfg.model.whitening.enabled:
        return None
    n = min(cfg.model.whitening.samples, len(train[0]))
    rows = np.random.default_rng(cfg.run.seed).choice(len(train[0]), n, replace=False)
    return compute_stem_weights(cfg, train[0][np.sort(rows)], num_classes=summary.num_classes,
                                mean=summary.mean, std=summary.std)
