"""Planning a run to a wall-clock budget (``optim.budget_s``): how many optimiser steps fit.

Pure arithmetic (no Ray, no torch). The plan is in optimiser steps, so a budget is hit to
within a step rather than an epoch: the last epoch may stop early (its evaluation still runs),
and the run has ``ceil(steps / steps_per_epoch)`` epochs. :func:`plan_steps` returns the
largest step count whose estimated time fits the budget left; :func:`seconds_to_end` is that
estimate. The worker side (the clock, calibration, re-plans, the schedule) is
:mod:`cnn_ray.train.budget_run`.

Cost model, per epoch ``e`` of a run of ``E`` epochs: its training steps at ``step_s`` each
times ``step_cost(e, E)`` (progressive resizing: ``(crop side / end side)^2``, so early
epochs at a small crop are cheaper; the side depends on ``E``, so the plan is a fixed point
over ``E``), one evaluation of ``eval_s`` times ``eval_views(e, E)`` (test-time augmentation
on the epochs ``eval.tta_epochs`` says), and ``overhead_s`` between an evaluation and the next
epoch's first step (report, checkpoint). Source: budget-aware training, where the schedule is
planned for a fixed compute budget (Li, Yumer & Ramanan, "Budgeted Training", ICLR 2020);
the step-level plan and its re-fitting are cnn_ray's (issue 26).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from cnn_ray.config import ConfigError

EpochFn = Callable[[int, int], float]  # (0-based epoch, epochs of the run) -> a multiplier
MAX_EPOCHS = 100_000  # no plan goes beyond this many epochs (costs measured as ~0)


def _one(epoch: int, epochs: int) -> float:
    return 1.0


class BudgetTooSmall(ConfigError):
    """``optim.budget_s`` cannot hold one epoch (training + evaluation); the message names the
    key, the estimated seconds per epoch and the smallest budget that fits."""


@dataclass(frozen=True)
class Costs:
    """Seconds of the parts of an epoch on this machine.

    Attributes:
        step_s: one optimiser step at the reference crop side (data wait included), > 0.
        eval_s: one evaluation of the validation share without test-time augmentation, >= 0.
        overhead_s: between an evaluation and the next epoch's first step, >= 0.
        step_cost: ``(epoch, epochs) -> `` a step's cost relative to ``step_s``.
        eval_views: ``(epoch, epochs) -> `` the evaluation's cost relative to ``eval_s``.
    """

    step_s: float
    eval_s: float = 0.0
    overhead_s: float = 0.0
    step_cost: EpochFn = field(default=_one)
    eval_views: EpochFn = field(default=_one)


@dataclass(frozen=True)
class Position:
    """Where the run stands: ``epoch`` (0-based) is in progress or about to start (its
    evaluation is ahead), ``steps_in_epoch`` of its steps are done, ``steps_done`` over the
    run. Before an epoch that has not started (``steps_in_epoch == 0``, ``epoch > 0``) an
    overhead is still ahead."""

    epoch: int = 0
    steps_in_epoch: int = 0
    steps_done: int = 0


class Plan(NamedTuple):
    """A plan: ``steps`` over the whole run, ``epochs`` (the last may be cut short) and the
    estimated ``seconds`` from the position to the end of the last evaluation."""

    steps: int
    epochs: int
    seconds: float


def seconds_to_end(epochs: int, last_steps: int, costs: Costs, steps_per_epoch: int,
                   pos: Position = Position()) -> float:
    """Estimated seconds from ``pos`` to the end of the evaluation of epoch ``epochs - 1``
    when every epoch trains ``steps_per_epoch`` steps but the last, which trains
    ``last_steps`` (counted from its start; ``epochs - 1 == pos.epoch``: including the
    ``pos.steps_in_epoch`` already done). No overhead after the last evaluation: the budget
    ends there."""
    total = 0.0
    for e in range(pos.epoch, epochs):
        steps = last_steps if e == epochs - 1 else steps_per_epoch
        if e == pos.epoch:
            steps -= pos.steps_in_epoch
        total += max(0, steps) * costs.step_s * costs.step_cost(e, epochs)
        total += costs.eval_s * costs.eval_views(e, epochs)
        if e > pos.epoch or (pos.steps_in_epoch == 0 and pos.epoch > 0):
            total += costs.overhead_s
    return total


def _fit(epochs: int, budget_s: float, costs: Costs, spe: int, pos: Position):
    """The most steps of a run of ``epochs`` epochs that fit ``budget_s`` as ``(total steps,
    seconds)``, or None when not even one step of its last epoch does."""
    last = epochs - 1
    first = pos.steps_in_epoch if last == pos.epoch else 0
    fixed = seconds_to_end(epochs, first, costs, spe, pos)  # all but the last epoch's new steps
    per_step = costs.step_s * costs.step_cost(last, epochs)
    k = min(spe - first, math.floor((budget_s - fixed) / per_step + 1e-9))  # 1e-9: rounding
    if k < 1:
        return None
    if last == pos.epoch:
        steps = pos.steps_done + k
    else:
        steps = pos.steps_done + (spe - pos.steps_in_epoch) + (last - pos.epoch - 1) * spe + k
    return steps, fixed + k * per_step


def plan_steps(budget_s: float, costs: Costs, steps_per_epoch: int,
               pos: Position = Position()) -> Plan:
    """The largest number of optimiser steps (over the whole run) whose estimated time from
    ``pos`` fits ``budget_s`` seconds, with the epochs it spans.

    Searches the epoch count ``E`` (a fixed point: the per-epoch costs depend on ``E``):
    doubling until ``E`` does not fit, a bisection below, then a scan of the next few ``E``
    (progressive resizing's rounding can make a longer run fit where a shorter one does not).
    When nothing more fits, the plan is the position itself: ``pos.steps_done`` steps,
    ``pos.epoch`` epochs at an epoch boundary (stop now) or ``pos.epoch + 1`` mid-epoch
    (end the epoch here), 0 seconds.

    Args:
        budget_s: seconds left from ``pos`` to the end of the last evaluation.
        costs: see :class:`Costs` (``step_s`` > 0).
        steps_per_epoch: optimiser steps of a whole epoch on one worker, >= 1.
        pos: see :class:`Position`.
    Raises:
        ValueError: ``steps_per_epoch < 1``, ``costs.step_s <= 0`` or a position past its
            epoch.
    """
    spe = int(steps_per_epoch)
    if spe < 1 or not costs.step_s > 0 or not 0 <= pos.steps_in_epoch < spe:
        raise ValueError(f"need steps_per_epoch >= 1, step_s > 0 and 0 <= steps_in_epoch < "
                         f"steps_per_epoch; got {spe}, {costs.step_s}, {pos.steps_in_epoch}")
    stay = pos.epoch + (1 if pos.steps_in_epoch else 0)
    best = Plan(pos.steps_done, stay, 0.0)
    fits = lambda epochs: _fit(epochs, budget_s, costs, spe, pos) is not None  # noqa: E731
    lo = pos.epoch + 1
    if not fits(lo):
        return best
    hi = lo + 1
    while hi <= MAX_EPOCHS and fits(hi):
        lo, hi = hi, 2 * hi
    hi = min(hi, MAX_EPOCHS + 1)
    while hi - lo > 1:  # lo fits; hi does not (or is past the cap)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    for epochs in range(lo, min(lo + 4, MAX_EPOCHS + 1)):
        fit = _fit(epochs, budget_s, costs, spe, pos)
        if fit is not None and fit[0] > best.steps:
            best = Plan(fit[0], epochs, fit[1])
    return best


def epoch_seconds(costs: Costs, steps_per_epoch: int, epoch: int = 0, epochs: int = 1) -> float:
    """Estimated seconds of one whole epoch ``epoch`` of ``epochs`` (training + evaluation)."""
    return (steps_per_epoch * costs.step_s * costs.step_cost(epoch, epochs)
            + costs.eval_s * costs.eval_views(epoch, epochs))


def too_small(budget_s: float, need_s: float, costs: Costs, steps_per_epoch: int,
              epoch: int = 0) -> BudgetTooSmall:
    """The error for a budget that cannot hold one whole epoch ``epoch`` (of a one-epoch run):
    its estimated seconds and ``need_s``, the smallest ``optim.budget_s`` that would hold it."""
    one = epoch_seconds(costs, steps_per_epoch, epoch, epoch + 1)
    return BudgetTooSmall(
        f"optim.budget_s={budget_s:g}: not even one epoch fits: an epoch takes ~{one:.1f} s "
        f"here ({steps_per_epoch} steps at {costs.step_s:.3g} s + evaluation "
        f"~{costs.eval_s * costs.eval_views(epoch, epoch + 1):.1f} s, measured on the first "
        f"steps), so the smallest budget that fits is ~{math.ceil(need_s)} s (counted from the "
        f"first training step); expected optim.budget_s >= {math.ceil(need_s)}, or train by "
        "optim.epochs without optim.budget_s")
