"""Optimisers and learning-rate schedules from :class:`cnn_ray.config.OptimConfig`.

All schedules except ReduceLROnPlateau are stepped once per optimiser step (so warm-up and
OneCycle are smooth within an epoch); ReduceLROnPlateau is stepped once per epoch on the
validation loss. Every schedule scales each parameter group's own initial lr (``base_lrs``), so
per-group multipliers (BN biases at x ``bias_lr_mult``, Muon's conv filters at ``muon_lr``) keep
their ratio to ``lr`` all run long. Everything is a stock ``torch.optim`` object (or
:class:`cnn_ray.recipe.MuonSGD`, one), so ``state_dict()`` round-trips through checkpoints.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from cnn_ray.compat import set_scheduler_last_lr
from cnn_ray.config import OptimConfig
from cnn_ray.recipe import (MuonSGD, RungAnnealed, TimeWarp, WarmupLinearDecay, WarmupStableDecay,
                            WarmupThen, bn_bias_param_groups, decoupled_sgd_hparams,
                            split_muon_groups, warpable)
from cnn_ray.train.techniques import split_decay_params

if TYPE_CHECKING:
    from cnn_ray.train.finetune import ParamRoles


def sgd_hparams(cfg: OptimConfig) -> tuple[float, float]:
    """``(lr, weight_decay)`` for torch's SGD/AdamW/Adam from ``cfg``.

    ``optim.decoupled=false``: ``cfg.lr`` and ``cfg.weight_decay`` as written. ``true``: they
    are per 1024 examples and momentum-corrected (airbench; card in
    :mod:`cnn_ray.recipe.optimizers`), converted with
    :func:`cnn_ray.recipe.decoupled_sgd_hparams` for the global ``cfg.batch_size`` and the
    loss as the training step computes it (mean over the global batch: each micro-batch's mean
    divided by ``grad_accum_steps``, averaged over workers by DDP).
    """
    if not cfg.decoupled:
        return cfg.lr, cfg.weight_decay
    return decoupled_sgd_hparams(cfg.lr, cfg.weight_decay, cfg.momentum, cfg.batch_size,
                                 loss_reduction="mean")


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 bn_bias_lr_mult: float = 1.0, *, decay_norm_and_bias: bool = False) -> list[dict]:
    """Parameter groups: weight decay on weights only (or on all), BN biases optionally at a
    higher lr.

    ``bn_bias_lr_mult == 1``: :func:`cnn_ray.train.techniques.split_decay_params` (decay /
    no-decay; every group at the optimiser's lr). Otherwise
    :func:`cnn_ray.recipe.bn_bias_param_groups`: ``decay`` (ndim > 1, ``weight_decay``),
    ``no_decay`` (other 1-D parameters) at ``lr``, and ``bn_bias`` (trainable BatchNorm biases
    only) at ``lr * bn_bias_lr_mult`` without weight decay. Frozen parameters are left out.

    ``decay_norm_and_bias`` (``optim.decay_norm_and_bias``): every group decays, as in airbench
    (``lib_airbench93.py`` / ``utils.train``: all trainable parameters get the decay, the
    BN biases at ``weight_decay / bn_bias_lr_mult`` so that ``lr * weight_decay`` per step is
    the same for every parameter). The groups keep their names.
    """
    if bn_bias_lr_mult == 1.0:
        groups = split_decay_params(model, weight_decay)
    else:
        groups = bn_bias_param_groups(model, lr, weight_decay, bias_scaler=bn_bias_lr_mult,
                                      decay_bn_bias=decay_norm_and_bias)
    if decay_norm_and_bias:
        for g in groups:
            if g.get("name") != "bn_bias":
                g["weight_decay"] = weight_decay
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, bn_bias_lr_mult: float = 1.0,
                    roles: Optional["ParamRoles"] = None) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), AdamW, Adam or Muon + SGD, weight decay kept off norms/biases.

    - ``optimizer: muon``: :class:`cnn_ray.recipe.MuonSGD`; conv filters (ndim >= 4) in one
      Muon group at ``muon_lr`` / ``muon_momentum`` without weight decay (Muon's orthogonalised
      update does not scale with the loss, so ``muon_lr`` is never converted); every other
      parameter SGD (Nesterov if ``nesterov``) at ``lr`` / ``momentum`` in its group.
    - ``decoupled``: ``lr`` and ``weight_decay`` per 1024 examples (:func:`sgd_hparams`).
    - ``bn_bias_lr_mult`` (``model.batchnorm.bias_lr_mult``): BN biases at ``lr`` x mult
      without weight decay (:func:`param_groups`); 1 keeps the two plain groups.
    - ``decay_norm_and_bias``: biases and norm parameters decay too (airbench).
    - ``roles`` (fine-tuning, :func:`cnn_ray.train.finetune.param_roles`): every group above is
      split into its classifier-head part, its non-head part at lr x ``backbone_lr_mult`` and
      its part frozen until ``model.unfreeze_epoch`` (:meth:`~cnn_ray.train.finetune.ParamRoles.split_groups`).

    Sources: Sutskever et al. 2013 (Nesterov momentum); Loshchilov & Hutter 2019 (AdamW);
    Kingma & Ba 2015 (Adam); Jordan et al. 2024 (Muon); Page 2018 / airbench (decoupled).

    Raises:
        ValueError: ``bn_bias_lr_mult <= 0``, or a decoupled setting out of range.
    """
    if bn_bias_lr_mult <= 0:
        raise ValueError(f"bn_bias_lr_mult must be > 0, got {bn_bias_lr_mult}")
    lr, weight_decay = sgd_hparams(cfg)
    groups = param_groups(model, lr, weight_decay, bn_bias_lr_mult,
                          decay_norm_and_bias=cfg.decay_norm_and_bias)
    nesterov = cfg.nesterov and cfg.momentum > 0
    if cfg.optimizer == "muon":
        groups = split_muon_groups(groups, cfg.muon_lr, cfg.muon_momentum)
    if roles is not None:
        groups = roles.split_groups(groups, lr, cfg.backbone_lr_mult)
    if cfg.optimizer == "muon":
        return MuonSGD(groups, lr=lr, momentum=cfg.momentum, nesterov=nesterov)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)
    return torch.optim.Adam(groups, lr=lr, betas=cfg.betas)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau, bool]:
    """The schedule for ``cfg.schedule`` and whether it is stepped per optimiser step.

    - ``onecycle``: linear warm-up for ``pct_start`` of training to ``lr`` then cosine/linear
      anneal (Smith & Topin, "Super-Convergence", 2018; ``torch.optim.lr_scheduler.OneCycleLR``).
    - ``linear_decay``: airbench's triangle, :class:`cnn_ray.recipe.WarmupLinearDecay`: from
      ``initial_lr_frac`` x ``lr`` up to ``lr`` over the first ``pct_start`` of the steps, then
      linearly down to ``final_lr_frac`` x ``lr`` at the last step (``initial_lr_frac=1``: no
      warm-up, as airbench94_muon). ``warmup_epochs`` is not used.
    - ``wsd``: warm-up, stable, decay (:class:`cnn_ray.recipe.WarmupStableDecay`): up to
      ``lr`` over the first ``pct_start`` of the steps, flat, then linearly down to
      ``final_lr_frac`` x ``lr`` over the last ``decay_frac``: early epochs rank trials as the
      final ones do (for ASHA sweeps).
    - ``rung_anneal``: warm restarts ending at ``anneal_epochs`` and at the last epoch
      (:class:`cnn_ray.recipe.RungAnnealed`): each cycle warms up over its first ``pct_start``
      from ``initial_lr_frac`` x ``lr`` and decays linearly to ``final_lr_frac`` x ``lr`` at its
      end; a sweep derives ``anneal_epochs`` from its ASHA rungs, so every rung compares
      annealed trials (no ``anneal_epochs``: one cycle, warm-up + linear decay).
    - ``cosine``: linear warm-up over ``warmup_epochs`` then cosine decay to 0 (Loshchilov &
      Hutter, "SGDR", 2017; Goyal et al. 2017 warm-up).
    - ``step``: multiply by ``gamma`` every ``step_size`` epochs (He et al. 2016).
    - ``plateau``: multiply by ``gamma`` when the validation loss has not improved for
      ``plateau_patience`` epochs (stepped per epoch with the validation loss).
    - ``constant``: fixed ``lr`` (after an optional linear warm-up).

    Each scales every parameter group's own initial lr, so per-group multipliers persist.

    With ``optim.budget_s`` every per-step schedule is a ``LambdaLR`` over a
    :class:`~cnn_ray.recipe.TimeWarp` of its factor (cosine, step and constant as
    :class:`~cnn_ray.recipe.WarmupThen`), provisionally ``optim.epochs`` long: the budget's
    plan re-fits its length as one schedule (:mod:`cnn_ray.train.budget_run`). ``plateau``
    does not depend on the run's length and is kept as is (the budget sets only the epochs).

    Args:
        steps_per_epoch: optimiser steps per epoch on one worker (>= 1).
    Returns:
        ``(scheduler, per_step)``.
    """
    steps_per_epoch = max(1, int(steps_per_epoch))
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler
    if cfg.budget_s is not None and cfg.schedule != "plateau":  # one schedule, re-fitted
        factor = _step_factor(cfg, steps_per_epoch)
        return sched.LambdaLR(optimizer, TimeWarp(factor, factor.total_steps)), True
    if cfg.schedule in ("onecycle", "linear_decay", "wsd", "rung_anneal"):
        return sched.LambdaLR(optimizer, _step_factor(cfg, steps_per_epoch)), True
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


def _step_factor(cfg: OptimConfig, steps_per_epoch: int):
    """The factor of step of per-step schedule ``cfg.schedule`` over ``cfg.epochs`` epochs (the
    values :func:`build_lr_scheduler` gives it without a budget)."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        return OneCycleFactor(total, cfg.pct_start)
    if cfg.schedule == "linear_decay":
        return WarmupLinearDecay(total, warmup_frac=cfg.pct_start, start=cfg.initial_lr_frac,
                                 end=cfg.final_lr_frac)
    if cfg.schedule == "wsd":
        return WarmupStableDecay(total, warmup_frac=cfg.pct_start, decay_frac=cfg.decay_frac,
                                 start=cfg.initial_lr_frac, end=cfg.final_lr_frac)
    if cfg.schedule == "rung_anneal":
        ends = [e * steps_per_epoch for e in (cfg.anneal_epochs or [])]
        return RungAnnealed(total, ends, warmup_frac=cfg.pct_start, start=cfg.initial_lr_frac,
                            end=cfg.final_lr_frac)
    return WarmupThen(cfg.schedule, total, warmup, step_steps=cfg.step_size * steps_per_epoch,
                      gamma=cfg.gamma)


@warpable
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


def _budget_factor(scheduler) -> Optional[OneCycleFactor | WarmupLinearDecay | WarmupStableDecay]:
    """The :class:`OneCycleFactor`, :class:`~cnn_ray.recipe.WarmupLinearDecay` or
    :class:`~cnn_ray.recipe.WarmupStableDecay` driving a ``LambdaLR`` (the schedules planned
    over a step budget), else None."""
    lambdas = getattr(scheduler, "lr_lambdas", None) or []
    if lambdas and isinstance(lambdas[0], (OneCycleFactor, WarmupLinearDecay, WarmupStableDecay)):
        return lambdas[0]
    return None


def schedule_total_steps(scheduler) -> Optional[int]:
    """Total optimiser steps of a one-cycle or linear-decay schedule (None for the others)."""
    factor = _budget_factor(scheduler)
    return None if factor is None else factor.total_steps


def stretch_schedule(scheduler, total_steps: Optional[int]) -> Optional[int]:
    """After a checkpoint restore: fit a one-cycle or linear-decay schedule to the CURRENT budget.

    ``LambdaLR.load_state_dict`` brings back the saved factor, whose ``total_steps`` is the
    budget of the run that wrote the checkpoint; resuming with a larger ``optim.epochs`` would
    then train the extra epochs at the final (minimum) LR. This keeps the restored step count
    and warm-up (``warmup`` / ``peak`` step) and sets ``total_steps`` so the decay ends at the
    new budget; every group's lr is reset from its own ``base_lr``. Returns the previous total
    when it changed, else None. Other schedules are left as restored.
    """
    factor = _budget_factor(scheduler)
    if total_steps is None or factor is None:
        return None
    one_cycle = isinstance(factor, OneCycleFactor)
    old, new = factor.total_steps, max(2 if one_cycle else 1, int(total_steps))
    if old == new:
        return None
    factor.total_steps = max(new, (factor.warmup if one_cycle else factor.peak) + 1)
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    set_scheduler_last_lr(scheduler)
    return old


def steps_per_epoch(num_rows: int, world_size: int, micro_batch: int, grad_accum_steps: int,
                    drop_last: bool = False) -> int:
    """Optimiser steps one worker takes per epoch when ``num_rows`` are split equally.

    Ray's ``streaming_split(equal=True)`` gives each worker ``num_rows // world_size`` rows;
    a last partial micro-batch is trained unless ``drop_last`` (``data.drop_last``), and a
    trailing partial accumulation cycle still steps.
    """
    rows = num_rows // max(1, world_size)
    micro = (rows // micro_batch if drop_last else math.ceil(rows / micro_batch)) if rows else 0
    return max(1, math.ceil(micro / grad_accum_steps))
