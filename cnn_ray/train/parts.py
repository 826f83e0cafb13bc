"""What a training process trains with, built the same way with or without Ray.

:func:`build_parts` turns a config and a data summary into the model (the recipe's switches
applied before any DDP wrapping), its EMA, optimiser, LR schedule, grad scaler and step
settings. The Ray Train worker (:mod:`cnn_ray.train.worker`) calls it with Ray Train's device and
``prepare_model``; the Ray-free trainer (:mod:`cnn_ray.train.local`, ``benchmarks/gpu_check.py``) with a
plain device and no wrapping. No Ray here.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from cnn_ray.config import TrainConfig
from cnn_ray.models import create_model
from cnn_ray.recipe.apply import freeze_whitening_bias, make_model_ema, prepare_model
from cnn_ray.train.checkpoint import TrainingState, restore_training_state
from cnn_ray.train.finetune import Finetune, apply_pretrained, attach_freeze_gate, param_roles
from cnn_ray.train.inputs import DataSummary
from cnn_ray.train.loop import StepSettings, TrainProgress
from cnn_ray.train.optim import (build_lr_scheduler, build_optimizer, schedule_total_steps,
                                 steps_per_epoch, stretch_schedule)
from cnn_ray.train.techniques import make_grad_scaler, resolve_precision, unwrap_model

Wrap = Callable[[nn.Module], nn.Module]


def no_wrap(model: nn.Module) -> nn.Module:
    """The single-process ``wrap``: the model itself."""
    return model


@dataclass
class TrainParts:
    """What one worker trains with: the (DDP-wrapped when world > 1) model on ``device``, its
    optimiser, LR schedule (``per_step``: stepped per optimiser step, else per epoch on the
    validation loss), fp16 grad scaler (or None), step settings, torch threads, optimiser
    steps per epoch on this worker, the EMA of the weights (``optim.ema``; else None) and the
    fine-tuning state (``model.pretrained`` report, frozen parameters; :mod:`cnn_ray.train.finetune`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    per_step: bool
    scaler: Optional[torch.amp.GradScaler]
    settings: StepSettings
    device: torch.device
    threads: int
    steps_per_epoch: int = 1
    ema: Optional[Any] = None
    finetune: Finetune = field(default_factory=Finetune)


def build_parts(cfg: TrainConfig, data: DataSummary, rank: int, world: int, *,
                device: torch.device, wrap: Wrap = no_wrap, precision: Optional[str] = None,
                stem_weights=None) -> TrainParts:
    """Set torch threads and seed (``run.seed + rank``), build model (the recipe's switches
    applied by :func:`cnn_ray.recipe.apply.prepare_model` before DDP wraps it), its EMA,
    optimiser, schedule (over this worker's steps per epoch; at most 2 in smoke runs) and
    grad scaler. ``precision``: the group's resolved precision (None: resolve
    ``precision.dtype`` here); ``stem_weights``: the driver's whitening filters; ``wrap``:
    the distributed wrapper (Ray Train's ``prepare_model``; :func:`no_wrap` in one process).

    Fine-tuning (:mod:`cnn_ray.train.finetune`): ``model.pretrained`` is loaded into the
    prepared model before it is wrapped and before the EMA copies it (a resumed run's
    :func:`restore_parts` overwrites it afterwards); ``model.freeze`` and
    ``optim.backbone_lr_mult`` split the optimiser groups, and a
    :class:`~cnn_ray.train.finetune.FreezeGate` holds the frozen ones still until
    ``model.unfreeze_epoch`` (:func:`begin_epoch`).

    Raises:
        ConfigError: unreadable or mismatched ``model.pretrained``, unknown ``model.freeze``
            prefix."""
    threads = cfg.scaling.torch_threads or max(1, int(cfg.scaling.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.run.seed + rank)
    model = create_model(cfg.model.name, num_classes=data.num_classes,
                         in_channels=data.image_shape[2],
                         **cfg.model.build_knobs(cfg.data.image_size))
    prepare_model(model, cfg, stem_weights)  # the same on every rank, before DDP
    report = apply_pretrained(model, cfg)  # every rank loads the same file, before DDP
    model = wrap(model.to(device))
    roles = param_roles(model, cfg)  # the parameters the optimiser gets, wrapped or not
    ema = make_model_ema(model, cfg)
    optimizer = build_optimizer(model, cfg.optim, bn_bias_lr_mult=cfg.model.batchnorm.bias_lr_mult,
                                roles=roles)
    finetune = Finetune(report, roles, attach_freeze_gate(optimizer, roles, cfg))
    spe = steps_per_epoch(data.num_train, world, cfg.per_worker_batch_size(),
                          cfg.optim.grad_accum_steps, drop_last=cfg.data.drop_last)
    if cfg.run.steps_cap() is not None:
        spe = min(spe, cfg.run.steps_cap())
    scheduler, per_step = build_lr_scheduler(optimizer, cfg.optim, spe)
    precision = precision or resolve_precision(cfg.precision.dtype, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
    settings = StepSettings(
        device=device, precision=precision, mean=data.mean, std=data.std,
        channels_last=cfg.model.channels_last, label_smoothing=cfg.optim.label_smoothing,
        grad_accum_steps=cfg.optim.grad_accum_steps, grad_clip_norm=cfg.optim.grad_clip_norm,
        max_bad_steps=cfg.optim.max_bad_steps, log_every=cfg.run.log_every,
    )
    return TrainParts(model, optimizer, scheduler, per_step, make_grad_scaler(device, precision),
                      settings, device, threads, steps_per_epoch=spe, ema=ema,
                      finetune=finetune)


def restore_parts(parts: TrainParts, cfg: TrainConfig, state: TrainingState, log) -> TrainProgress:
    """Load a run's own checkpoint ``state`` into ``parts`` (model, EMA, optimiser, schedule,
    scaler: over any ``model.pretrained`` weights loaded at build); a one-cycle or
    linear-decay schedule is refitted to the current ``optim.epochs`` (a budget's schedule keeps
    its saved plan). Returns where training stands (epochs done, best ``val_top1``, epochs
    without improvement, the budget plan)."""
    planned = schedule_total_steps(parts.scheduler)  # the current config's budget
    restore_training_state(state, model=parts.model, optimizer=parts.optimizer,
                           scheduler=parts.scheduler, scaler=parts.scaler, ema=parts.ema)
    previous = stretch_schedule(parts.scheduler, planned)
    if previous is not None:
        log(f"one-cycle schedule refitted to optim.epochs={cfg.optim.epochs}: "
            f"{previous} -> {planned} total steps")
    log(f"resumed from checkpoint at epoch {state.epoch}")
    stale = int(state.meta.get("metrics", {}).get("epochs_without_improvement", 0))
    return TrainProgress(start_epoch=state.epoch, best=state.best, stale=stale,
                         budget=state.meta.get("budget"))


def begin_epoch(parts: TrainParts, cfg: TrainConfig, epoch: int, world: int, log, *,
                wrap: Wrap = no_wrap) -> None:
    """Epoch-start switches of the recipe: the fine-tuning freeze is held or released for
    ``epoch`` (``model.unfreeze_epoch``, through the optimiser, never ``requires_grad``); the
    whitening bias is frozen once ``model.whitening.bias_epochs`` are done
    (:func:`cnn_ray.recipe.apply.freeze_whitening_bias`). DDP fixes the parameters it reduces
    when it is built, so with world > 1 the model is then re-wrapped (every rank at the same
    epoch); the old wrapper and its gradient hooks go first."""
    parts.finetune.begin_epoch(epoch, cfg, log)
    if not freeze_whitening_bias(parts.model, cfg, epoch):
        return
    log(f"whitening bias frozen from epoch {epoch + 1} (model.whitening.bias_epochs="
        f"{cfg.model.whitening.bias_epochs:g})")
    if world > 1:
        bare = unwrap_model(parts.model)
        parts.model = bare
        gc.collect()
        parts.model = wrap(bare)
