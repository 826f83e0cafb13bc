"""The clock and the plan of a run trained to ``optim.budget_s``, on one worker (no Ray).

A :class:`BudgetRun` lives beside the training loop of every rank
(:func:`cnn_ray.train.worker.run_worker`):

1. **Clock**: starts at the first training step (:meth:`BudgetRun.start_epoch`); what came
   before (worker start, model build, data) is reported as start-up, not counted.
2. **Calibration**: in the first epoch, after ``WARMUP_STEPS`` steps it times
   ``optim.budget_calibration_steps`` steps (data wait included: the real rate), estimates
   the evaluation from the validation share (~1/3 of a training step per image, x the TTA
   views), plans (:func:`cnn_ray.train.budget.plan_steps`) and re-fits the schedule. A budget
   that cannot hold one whole epoch raises :class:`~cnn_ray.train.budget.BudgetTooSmall`.
3. **Re-check** after every epoch's evaluation: that epoch's measured step, evaluation and
   overhead seconds re-plan the rest from the budget left (shorter when the machine slowed,
   longer when it sped up, never past what fits); the schedule's tail is re-fitted
   (:class:`cnn_ray.recipe.TimeWarp`: one schedule, continuous, no restart) and one line is
   logged when the plan changes.

Rank 0 decides every plan and the other ranks take its numbers (``reduce``: a sum over ranks,
:func:`cnn_ray.train.loop.distributed_reduce`; the identity on one process). The state
(:meth:`BudgetRun.state`) goes into every checkpoint's ``meta.json`` (``budget``), so a
resumed run keeps its derived epochs and the budget already used (the time lost to the fault
and the restart is not counted). At the end rank 0 writes ``<run dir>/budget.json``
(:meth:`BudgetRun.report`).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable, Optional

import torch

from cnn_ray.config import TrainConfig
from cnn_ray.io import read_text, write_text
from cnn_ray.recipe.tta import tta_views
from cnn_ray.train.budget import Costs, Plan, Position, plan_steps, seconds_to_end, too_small

WARMUP_STEPS = 2  # untimed steps before the calibration (allocations, first batches)
EVAL_STEP_SHARE = 1.0 / 3.0  # an evaluated image costs ~1/3 of a trained one (no backward)
PLAN_SHARE = 0.99  # plan to 99% of the budget left: the last epoch's estimate is a guess
BUDGET_FILE = "budget.json"

Reduce = Callable[[torch.Tensor], torch.Tensor]


class BudgetRun:
    """One rank's budget clock and plan (see the module docstring).

    Args:
        cfg: the run's config (``optim.budget_s`` set).
        steps_per_epoch: optimiser steps of a whole epoch on this worker.
        val_images: validation images this worker evaluates per epoch.
        scheduler: the run's schedule (a ``LambdaLR`` over a ``TimeWarp``; ``plateau``: not
            re-fitted).
        rank: this worker's rank (rank 0 decides and logs). device: for the reduce.
        reduce: sums a tensor over ranks. log: ``log(msg)`` (rank 0 prints).
        started: unix time this worker started (start-up = first step - this).
        start_epoch: epochs already trained (a resumed run).
        state: :meth:`state` of a checkpoint (a resumed run), or None.
        on_plan: called with every new total of steps (the EMA's decay ramp follows it).
        clock: seconds of a monotonic clock (tests pass a simulated one).
    """

    def __init__(self, cfg: TrainConfig, *, steps_per_epoch: int, val_images: int, scheduler,
                 rank: int, device: torch.device, reduce: Reduce, log, started: float,
                 start_epoch: int = 0, state: Optional[dict] = None,
                 on_plan: Optional[Callable[[int], None]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg, self.spe, self.scheduler = cfg, max(1, int(steps_per_epoch)), scheduler
        self.rank, self.device, self.reduce, self.log = rank, device, reduce, log
        self.on_plan, self.clock = on_plan or (lambda total: None), clock
        self.budget_s = float(cfg.optim.budget_s)
        s = dict(state or {})
        self.calibrated = bool(s.get("calibrated", False))
        self.planned_steps = int(s.get("planned_steps", cfg.optim.epochs * self.spe))
        self.planned_epochs = int(s.get("planned_epochs", cfg.optim.epochs))
        self.steps_done = int(s.get("steps_done", start_epoch * self.spe))
        self.used_before = float(s.get("used_s", 0.0))
        self.step_s = s.get("step_s")
        batch = cfg.per_worker_batch_size()
        self._eval_steps = val_images / batch * EVAL_STEP_SHARE  # x step_s: the eval estimate
        self.eval_s = s.get("eval_s")
        self.overhead_s = float(s.get("overhead_s", 0.0))
        self.startup_s = s.get("startup_s")
        self.first_step_unix = s.get("first_step_unix")
        self.history: list[dict] = list(s.get("history", []))
        self.started = started
        self._clock: Optional[float] = None  # monotonic time of this process's first step
        self._epoch_start = self._last_step = self._warm = self._eval_end = None
        self._epoch, self._epoch_steps, self._epoch_cost = start_epoch, 0, 1.0
        self.used_s = self.used_before
        if state is not None:
            self.history.append({"epoch": int(s.get("epoch", 0)), "steps": self.planned_steps,
                                 "epochs": self.planned_epochs, "reason": "resumed"})

    # -- cost model ------------------------------------------------------------------------
    def step_cost(self, epoch: int, epochs: int) -> float:
        """A step's cost relative to one at the end crop side: ``(side / end side)^2`` with
        progressive resizing (``data.crop_size_at``), else 1."""
        p = self.cfg.data.progressive
        if not p.enabled:
            return 1.0
        side = self.cfg.data.crop_size_at(epoch, epochs)
        return (side / float(p.end_size or self.cfg.data.image_size)) ** 2

    def eval_views(self, epoch: int, epochs: int) -> float:
        """Forward passes per validation image of ``epoch`` (``eval.tta_at``)."""
        return float(tta_views(self.cfg.eval.tta_at(epoch, epochs)))

    def costs(self) -> Costs:
        eval_s = self.eval_s if self.eval_s is not None else (
            self.step_s * self._eval_steps)
        return Costs(step_s=self.step_s, eval_s=eval_s, overhead_s=self.overhead_s,
                     step_cost=self.step_cost, eval_views=self.eval_views)

    # -- clock -----------------------------------------------------------------------------
    def now_used(self) -> float:
        """Budget seconds used so far (0 before the first step)."""
        if self._clock is None:
            return self.used_before
        return self.used_before + self.clock() - self._clock

    def start_epoch(self, epoch: int, epochs: int, cap: Optional[int]) -> Optional[int]:
        """Before ``epoch``'s first step (``epochs``: the planned count, which sets its crop
        side): start the clock on the first call, measure the overhead since the last
        evaluation, and return the epoch's step cap: the plan's remaining steps when it ends
        within this epoch, combined with ``cap`` (smoke runs' cap; None: none)."""
        now = self.clock()
        if self._clock is None:
            self._clock = now
            self.first_step_unix = self.first_step_unix or time.time()
            if self.startup_s is None:
                self.startup_s = round(time.time() - self.started, 3)
        elif self._eval_end is not None:
            self.overhead_s = now - self._eval_end
        self._epoch_start, self._epoch, self._epoch_steps, self._warm = now, epoch, 0, None
        self._epoch_cost = self.step_cost(epoch, epochs)
        left = self.planned_steps - self.steps_done
        if self.calibrated and left < self.spe:
            cap = max(1, left) if cap is None else min(cap, max(1, left))
        return cap

    def after_step(self, epoch_step: int) -> None:
        """``StepHooks.after_step``: count the step; in the first epoch trained without a plan,
        time the calibration steps and plan when they are done."""
        now = self.clock()
        self.steps_done += 1
        self._epoch_steps, self._last_step = epoch_step, now
        if self.calibrated:
            return
        n = self.cfg.optim.budget_calibration_steps
        if epoch_step == WARMUP_STEPS:
            self._warm = now
        elif epoch_step == WARMUP_STEPS + n and self._warm is not None and epoch_step < self.spe:
            self.step_s = (now - self._warm) / n / self._epoch_cost
            pos = Position(self._epoch, epoch_step, self.steps_done)
            self._plan(pos, "calibration", self._epoch,
                       need=self.steps_done - epoch_step + self.spe)

    def end_epoch(self, epoch: int, metrics: dict) -> dict[str, Any]:
        """After ``epoch``'s evaluation (``metrics``: its ``eval_s`` and ``tta_views``):
        measure the epoch, re-plan the rest from the budget left, and return the metrics'
        budget fields (``budget_s``, ``budget_used_s``, ``planned_epochs``,
        ``planned_steps``)."""
        self._eval_end = self.clock()
        self.used_s = self.now_used()
        steps = max(1, self._epoch_steps)
        if self._warm is not None and steps > WARMUP_STEPS:  # past the warm-up steps only
            rate = (self._last_step - self._warm) / (steps - WARMUP_STEPS)
        else:
            rate = ((self._last_step or self._eval_end) - self._epoch_start) / steps
        self.step_s = rate / self._epoch_cost
        self.eval_s = float(metrics.get("eval_s", 0.0)) / max(1, int(metrics.get("tta_views", 1)))
        pos = Position(epoch + 1, 0, self.steps_done)
        if self.calibrated:
            self._plan(pos, "re-check", epoch)
        else:  # an epoch shorter than the calibration: it is the measure
            self._plan(pos, "calibration", epoch, need=self.steps_done)
        return {"budget_s": self.budget_s, "budget_used_s": round(self.used_s, 3),
                "planned_epochs": self.planned_epochs, "planned_steps": self.planned_steps}

    # -- planning --------------------------------------------------------------------------
    def _plan(self, pos: Position, reason: str, epoch: int, *,
              need: Optional[int] = None) -> None:
        """Plan from ``pos`` on rank 0, take rank 0's plan on every rank, re-fit the schedule.
        ``need``: the first plan's least total steps (the end of the first whole epoch).

        Raises:
            BudgetTooSmall: the first plan cannot hold ``need`` steps within the budget.
        """
        used = self.now_used()
        costs = self.costs()
        plan = plan_steps(PLAN_SHARE * self.budget_s - used, costs, self.spe, pos)
        if need is not None and (plan.steps < need or used > self.budget_s):
            plan = Plan(-1, 0, 0.0)  # every rank raises
        steps, epochs = self._agree(plan)
        if steps < 0:
            rest = 0.0 if pos.steps_in_epoch == 0 else seconds_to_end(
                pos.epoch + 1, self.spe, costs, self.spe, pos)
            raise too_small(self.budget_s, (used + rest) / PLAN_SHARE, costs, self.spe,
                            pos.epoch)
        first, self.calibrated = not self.calibrated, True
        if steps == self.planned_steps and epochs == self.planned_epochs and not first:
            return
        before = self.planned_steps
        self.planned_steps, self.planned_epochs = steps, epochs
        self._refit(steps)
        self.history.append({"epoch": epoch + 1, "steps": steps, "epochs": epochs,
                             "reason": reason, "used_s": round(used, 3),
                             "step_s": round(costs.step_s, 6), "eval_s": round(costs.eval_s, 4),
                             "overhead_s": round(costs.overhead_s, 4)})
        self.log(f"budget {reason} (epoch {epoch + 1}, {used:.1f} s of {self.budget_s:g} s "
                 f"used): {steps} steps in {epochs} epochs (was {before} steps), "
                 f"{costs.step_s * 1000:.1f} ms/step, evaluation ~{costs.eval_s:.1f} s, "
                 f"~{plan.seconds:.0f} s to go")

    def _agree(self, plan: Plan) -> tuple[int, int]:
        """Rank 0's ``(steps, epochs)`` on every rank (a sum in which the others add 0)."""
        mine = [float(plan.steps), float(plan.epochs)] if self.rank == 0 else [0.0, 0.0]
        got = self.reduce(torch.tensor(mine, dtype=torch.float64, device=self.device)).tolist()
        return int(round(got[0])), int(round(got[1]))

    def _refit(self, total: int) -> None:
        """End the schedule (every ``TimeWarp`` it holds) at ``total`` steps from now."""
        seen = set()
        for fn in getattr(self.scheduler, "lr_lambdas", None) or []:
            if hasattr(fn, "refit") and id(fn) not in seen:
                seen.add(id(fn))
                fn.refit(self.scheduler.last_epoch, total)
        self.on_plan(total)

    # -- state and report ------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        """The checkpoint's ``budget`` (JSON): the plan, the budget used, the measured costs,
        the first step's time and the plan history, after ``epoch`` epochs."""
        return {"budget_s": self.budget_s, "used_s": round(self.used_s, 3), "epoch": int(epoch),
                "calibrated": self.calibrated, "planned_steps": self.planned_steps,
                "planned_epochs": self.planned_epochs, "steps_done": self.steps_done,
                "step_s": self.step_s, "eval_s": self.eval_s, "overhead_s": self.overhead_s,
                "startup_s": self.startup_s, "first_step_unix": self.first_step_unix,
                "history": list(self.history)}

    def report(self, run_dir: Optional[str], epochs_trained: int) -> dict[str, Any]:
        """Rank 0: write ``<run_dir>/budget.json`` (atomically; a storage URI as one object)
        and log the final line. Returns the report: ``budget_s``, ``used_s`` (first step to
        the end of the last evaluation), ``ratio`` (used / budget), ``startup_s`` (worker
        start to the first step, not counted), the epochs and steps trained and planned, the
        last measured costs and the plan ``history`` (each plan: epoch, steps, epochs,
        reason)."""
        out = {**self.state(epochs_trained), "ratio": round(self.used_s / self.budget_s, 4),
               "epochs": int(epochs_trained), "steps": self.steps_done}
        if self.rank != 0:
            return out
        if run_dir:
            write_text(run_dir, BUDGET_FILE, json.dumps(out, indent=2))
        self.log(f"budget: used {self.used_s:.1f} s of {self.budget_s:g} s "
                 f"({100 * out['ratio']:.1f}%) from the first training step to the end of the "
                 f"last evaluation: {epochs_trained} epochs, {self.steps_done} steps; start-up "
                 f"before the first step {self.startup_s or 0:.1f} s (not counted)")
        return out


def open_budget(cfg: TrainConfig, *, steps_per_epoch: int, val_images: int, scheduler, hooks,
                rank: int, device: torch.device, reduce: Reduce, log, started: float,
                start_epoch: int, state: Optional[dict]) -> Optional[BudgetRun]:
    """A :class:`BudgetRun` for ``cfg`` (None without ``optim.budget_s``) whose plans also
    reset the EMA's decay ramp (the ``total`` of ``hooks``' EMA updates)."""
    if cfg.optim.budget_s is None:
        return None
    emas = [h for h in hooks.after_step if hasattr(h, "total") and hasattr(h, "ema")]

    def follow(total: int) -> None:
        for h in emas:
            h.total = total

    return BudgetRun(cfg, steps_per_epoch=steps_per_epoch, val_images=val_images,
                     scheduler=scheduler, rank=rank, device=device, reduce=reduce, log=log,
                     started=started, start_epoch=start_epoch, state=state, on_plan=follow)


def write_reported_error(run_dir: str, exc: Exception) -> None:
    """Rank 0, instead of training: ``<run_dir>/budget.json`` = ``{"error": message, "time":
    unix}`` for the driver to raise as one message (:func:`read_reported_error`)."""
    write_text(run_dir, BUDGET_FILE, json.dumps({"error": str(exc), "time": time.time()}))


def read_reported_error(run_dir: str, since: float) -> Optional[str]:
    """The error a run's workers wrote to ``budget.json`` at or after unix time ``since``
    (:func:`write_reported_error`), else None."""
    text = read_text(run_dir, BUDGET_FILE)
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    return str(error) if error and float(doc.get("time", 0.0)) >= since else None


def val_share(num_val: int, world: int, cap_batches: Optional[int], eval_batch: int) -> int:
    """Validation images one worker evaluates per epoch (``cap_batches``: smoke runs)."""
    share = math.ceil(num_val / max(1, world))
    return share if cap_batches is None else min(share, cap_batches * eval_batch)
