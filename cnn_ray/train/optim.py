"""Optimisers and learning-rate schedules from :class:`cnn_ray.config.OptimConfig`.

All schedules except ReduceLROnPlateau are stepped once per optimiser step (so warm-up and
OneCycle are smooth within an epoch); ReduceLROnPlateau is stepped once per epoch on the
validation loss. Everything is a stock ``torch.optim`` object, so ``state_dict()`` round-trips
through checkpoints.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from cnn_ray.compat import set_scheduler_last_lr
from cnn_ray.config import OptimConfig
from cnn_ray.train.techniques import split_decay_params


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), AdamW or Adam with weight decay kept off norms and biases.

    Sources: Sutskever et al. 2013 (Nesterov momentum); Loshchilov & Hutter 2019 (AdamW);
    Kingma & Ba 2015 (Adam).
    """
    groups = split_decay_params(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau, bool]:
    """The schedule for ``cfg.schedule`` and whether it is stepped per optimiser step.

    - ``onecycle``: linear warm-up for ``pct_start`` of training to ``lr`` then cosine/linear
      anneal (Smith & Topin, "Super-Convergence", 2018; ``torch.optim.lr_scheduler.OneCycleLR``).
    - ``cosine``: linear warm-up over ``warmup_epochs`` then cosine decay to 0 (Loshchilov &
      Hutter, "SGDR", 2017; Goyal et al. 2017 warm-up).
    - ``step``: multiply by ``gamma`` every ``step_size`` epochs (He et al. 2016).
    - ``plateau``: multiply by ``gamma`` when the validation loss has not improved for
      ``plateau_patience`` epochs (stepped per epoch with the validation loss).
    - ``constant``: fixed ``lr`` (after an optional linear warm-up).

    Args:
        steps_per_epoch: optimiser steps per epoch on one worker (>= 1).
    Returns:
        ``(scheduler, per_step)``.
    """
    steps_per_epoch = max(1, int(steps_per_epoch))
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "onecycle":
        return sched.LambdaLR(optimizer, OneCycleFactor(total, cfg.pct_start)), True
    if cfg.schedule == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.gamma,
                                       patience=cfg.plateau_patience), False
    if cfg.schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=0.0)
    elif cfg.schedule == "step":
        main = sched.StepLR(optimizer, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
    else:
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main, True
    warm = sched.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(optimizer, [warm, main], milestones=[warmup]), True


class OneCycleFactor:
    """LR multiplier of the one-cycle policy as a function of the optimiser step.

    Linear warm-up from ``1/div_factor`` to 1 over the first ``pct_start`` of ``total_steps``,
    then linear decay to ``1/(div_factor * final_div_factor)``; clamped at the end, so a few
    steps more than planned (a streaming split's last partial batch) keep the final value
    instead of raising like ``torch.optim.lr_scheduler.OneCycleLR``. A callable object (not a
    lambda) so ``LambdaLR.state_dict()`` saves it. Source: Smith & Topin, "Super-Convergence",
    2018; the triangular schedule of airbench / Page's ResNet-9 DAWNBench entry.
    """

    def __init__(self, total_steps: int, pct_start: float, div_factor: float = 25.0,
                 final_div_factor: float = 1e3):
        self.total_steps = max(2, int(total_steps))
        self.warmup = max(1, int(round(pct_start * self.total_steps)))
        self.start = 1.0 / div_factor
        self.end = 1.0 / (div_factor * final_div_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start + (1.0 - self.start) * step / self.warmup
        frac = min(1.0, (step - self.warmup) / max(1, self.total_steps - self.warmup))
        return 1.0 + (self.end - 1.0) * frac


def schedule_total_steps(scheduler) -> Optional[int]:
    """Total optimiser steps of a one-cycle schedule (None for other schedules)."""
    lambdas = getattr(scheduler, "lr_lambdas", None) or []
    return lambdas[0].total_steps if lambdas and isinstance(lambdas[0], OneCycleFactor) else None


def stretch_schedule(scheduler, total_steps: Optional[int]) -> Optional[int]:
    """After a checkpoint restore: fit a one-cycle schedule to the CURRENT epoch budget.

    ``LambdaLR.load_state_dict`` brings back the saved :class:`OneCycleFactor`, whose
    ``total_steps`` is the budget of the run that wrote the checkpoint; resuming with a larger
    ``optim.epochs`` would then train the extra epochs at the final (minimum) LR. This keeps the
    restored step count and warm-up and sets ``total_steps`` so the decay ends at the new budget.
    Returns the previous total when it changed, else None. Other schedules are left as restored.
    """
    lambdas = getattr(scheduler, "lr_lambdas", None) or []
    if total_steps is None or not lambdas or not isinstance(lambdas[0], OneCycleFactor):
        return None
    factor = lambdas[0]
    old = factor.total_steps
    if old == max(2, int(total_steps)):
        return None
    factor.total_steps = max(2, int(total_steps), factor.warmup + 1)
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    set_scheduler_last_lr(scheduler)
    return old


def steps_per_epoch(num_rows: int, world_size: int, micro_batch: int, grad_accum_steps: int) -> int:
    """Optimiser steps one worker takes per epoch when ``num_rows`` are split equally.

    Ray's ``streaming_split(equal=True)`` gives each worker ``num_rows // world_size`` rows;
    batches are not dropped, and a trailing partial accumulation cycle still steps.
    """
    rows = num_rows // max(1, world_size)
    micro = math.ceil(rows / micro_batch) if rows else 0
    return max(1, math.ceil(micro / grad_accum_steps))
