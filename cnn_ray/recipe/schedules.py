"""Learning-rate factors for ``torch.optim.lr_scheduler.LambdaLR``, stepped once per optimiser
step: airbench's warm-up then linear decay, with an optional stop; and warm-up, stable, decay
(:class:`WarmupStableDecay`) for sweeps that stop trials early; :class:`TimeWarp` re-fits any of
them to a new length mid-run (``optim.budget_s``).

Card
----
What: the rate rises linearly from ``start`` x to 1x over the first ``warmup_frac`` of the
steps, then falls linearly to ``end`` x at the last step (a triangle). ``stop_step`` sets the
factor to 0 from that step on: the whitening bias trains for the first epochs only, through its
group's learning rate rather than ``requires_grad`` (which must not change under DDP).
Values that work: airbench94 ``start=0.2, warmup_frac=0.23, end=0.07`` over 9.9 epochs, the
whitening bias stopped after 3 epochs; airbench94_muon: no warm-up, linear decay to 0
(``start=1, warmup_frac=0, end=0``).
Source: Smith & Topin, "Super-Convergence" (2018); David Page's ResNet-9 (2018);
Keller Jordan, airbench ``triangle``. A callable class holding only numbers (not a lambda), so
``LambdaLR.state_dict()`` saves it and ``torch.load(weights_only=True)`` reads it back.
"""

from __future__ import annotations

import math
from typing import Optional

_WARPABLE: dict[str, type] = {}  # factor classes a TimeWarp may drive, by class name


def warpable(cls: type) -> type:
    """Class decorator: allow :class:`TimeWarp` to drive (and a checkpoint to name) factor
    class ``cls``; its instances must hold numbers (and lists of numbers) only."""
    _WARPABLE[cls.__name__] = cls
    return cls


@warpable
class WarmupLinearDecay:
    """Factor at optimiser step ``t``: ``start -> 1`` linearly for ``t <= warmup_frac * T``,
    then ``1 -> end`` linearly until ``t = T``; ``end`` after ``T`` (no error past the end);
    0 from ``stop_step`` on, if given.

    Args:
        total_steps: ``T`` >= 1, the optimiser steps of the whole run.
        warmup_frac: fraction of ``T`` at the peak, in [0, 1) (airbench: 0.23).
        start: factor at step 0 (airbench: 0.2).
        end: factor at step ``T`` (airbench: 0.07).
        stop_step: from this step on the factor is 0 (the whitening-bias group: 3 epochs of
            steps in airbench); None: never.
    Raises:
        ValueError: values out of range.
    """

    def __init__(self, total_steps: int, warmup_frac: float = 0.23, start: float = 0.2,
                 end: float = 0.07, stop_step: Optional[int] = None):
        if total_steps < 1 or not 0.0 <= warmup_frac < 1.0 or start < 0 or end < 0:
            raise ValueError(f"need total_steps >= 1, 0 <= warmup_frac < 1, start/end >= 0; got "
                             f"{total_steps}, {warmup_frac}, {start}, {end}")
        self.total_steps = int(total_steps)
        self.peak = int(warmup_frac * self.total_steps)
        self.start, self.end = float(start), float(end)
        self.stop_step = None if stop_step is None else int(stop_step)

    def __call__(self, step: int) -> float:
        if self.stop_step is not None and step >= self.stop_step:
            return 0.0
        if step < self.peak:
            return self.start + (1.0 - self.start) * step / self.peak
        frac = min(1.0, (step - self.peak) / max(1, self.total_steps - self.peak))
        return 1.0 + (self.end - 1.0) * frac


@warpable
class WarmupStableDecay:
    """Warm-up, stable, decay (a trapezoid): the factor rises ``start -> 1`` over the first
    ``warmup_frac`` of the ``T`` steps, stays at 1, and falls linearly ``1 -> end`` over the
    last ``decay_frac`` of them; ``end`` after ``T``.

    Card -- What: most of the run at the peak rate, the annealing only at the end. Why here: a
    sweep that stops trials early (ASHA) compares them at early epochs; under a one-cycle or
    triangle schedule those epochs sit at different points of each trial's decay, and early
    ranks can invert the final ones. In the stable phase every trial is compared at its own
    peak rate, and the decay (where most of the final gain comes from) is the same short tail
    for all. Values that work: ``decay_frac`` 0.1-0.3, ``warmup_frac`` 0.05-0.25.
    Source: Zhai et al., "Scaling Vision Transformers" (2022, reciprocal-sqrt with cooldown);
    Hu et al., "MiniCPM" (2024, WSD); Hägele et al., "Scaling Laws and Compute-Optimal
    Training Beyond Fixed Training Durations" (2024). A callable holding numbers only.

    Args:
        total_steps: ``T`` >= 1. warmup_frac: in [0, 1). decay_frac: in (0, 1],
            ``warmup_frac + decay_frac <= 1``. start, end: factors at step 0 and ``T`` (>= 0).
    Raises:
        ValueError: values out of range.
    """

    def __init__(self, total_steps: int, warmup_frac: float = 0.1, decay_frac: float = 0.2,
                 start: float = 0.2, end: float = 0.07):
        if (total_steps < 1 or not 0.0 <= warmup_frac < 1.0 or not 0.0 < decay_frac <= 1.0
                or warmup_frac + decay_frac > 1.0 + 1e-9 or start < 0 or end < 0):
            raise ValueError(
                f"need total_steps >= 1, 0 <= warmup_frac < 1, 0 < decay_frac <= 1, "
                f"warmup_frac + decay_frac <= 1, start/end >= 0; got {total_steps}, "
                f"{warmup_frac}, {decay_frac}, {start}, {end}")
        self.total_steps = int(total_steps)
        self.peak = int(warmup_frac * self.total_steps)
        self.decay_frac = float(decay_frac)
        self.start, self.end = float(start), float(end)

    def __call__(self, step: int) -> float:
        if step < self.peak:
            return self.start + (1.0 - self.start) * step / self.peak
        # the decay starts decay_frac before the (possibly stretched) end of the run
        decay_start = max(self.peak, self.total_steps - int(round(self.decay_frac *
                                                                   self.total_steps)))
        if step < decay_start:
            return 1.0
        frac = min(1.0, (step - decay_start) / max(1, self.total_steps - decay_start))
        return 1.0 + (self.end - 1.0) * frac


@warpable
class RungAnnealed:
    """Warm restarts whose cycles end where successive halving compares trials: the factor
    rises ``start -> 1`` over the first ``warmup_frac`` of each cycle and falls linearly
    ``1 -> end`` to the cycle's last step; the next cycle starts again. Cycles end at
    ``cycle_ends`` (steps, increasing, each < ``total_steps``) and at ``total_steps``; ``end``
    after it.

    Card -- What: an annealed snapshot at every rung. Why here: ASHA (Li et al., "A System for
    Massively Parallel Hyperparameter Tuning", MLSys 2020) keeps the trials whose validation
    top-1 at epoch ``grace_period x reduction_factor^k`` is in the top ``1/reduction_factor``;
    under a one-cycle or warm-up/stable/decay schedule those epochs catch each trial at its
    peak rate, where a high rate looks worst and ranks invert after the final decay (measured
    here: rank correlation of epoch-1 top-1 with the final one -0.47 under one-cycle, -0.33
    under wsd; ``benchmarks/benchmark_sweep.py``). Annealing to the end of every rung compares
    trials as their final epoch will. Values that work: rung epochs from the sweep's ASHA
    (``optim.anneal_epochs``, derived by the sweep), ``warmup_frac`` 0.1-0.25, ``end``
    0.05-0.1. Source: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts" (ICLR 2017) for restarts, and Huang et al., "Snapshot Ensembles" (ICLR 2017) for
    a good model at the end of every cycle; aligning the cycles to ASHA's rungs is the
    suggestion of cnn_ray's issue 13. A callable holding numbers only.

    Args:
        total_steps: ``T`` >= 1. cycle_ends: steps where a cycle ends, strictly increasing, in
            ``[1, T)``. warmup_frac: in [0, 1). start, end: factors (>= 0).
    Raises:
        ValueError: values out of range.
    """

    def __init__(self, total_steps: int, cycle_ends, warmup_frac: float = 0.1,
                 start: float = 0.2, end: float = 0.07):
        ends = [int(e) for e in cycle_ends]
        if (total_steps < 1 or any(b <= a for a, b in zip(ends, ends[1:]))
                or any(not 1 <= e < total_steps for e in ends) or not 0.0 <= warmup_frac < 1.0
                or start < 0 or end < 0):
            raise ValueError(f"need total_steps >= 1, cycle_ends strictly increasing in "
                             f"[1, total_steps), 0 <= warmup_frac < 1, start/end >= 0; got "
                             f"{total_steps}, {ends}, {warmup_frac}, {start}, {end}")
        self.total_steps = int(total_steps)
        self.cycle_ends = ends
        self.warmup_frac = float(warmup_frac)
        self.start, self.end = float(start), float(end)

    def __call__(self, step: int) -> float:
        if step >= self.total_steps:
            return self.end
        bounds = [0, *self.cycle_ends, self.total_steps]
        k = max(i for i in range(len(bounds) - 1) if bounds[i] <= step)
        a, b = bounds[k], bounds[k + 1]
        peak = a + int(self.warmup_frac * (b - a))
        if step < peak:
            return self.start + (1.0 - self.start) * (step - a) / (peak - a)
        return 1.0 + (self.end - 1.0) * (step - peak) / max(1, b - peak)


@warpable
class WarmupThen:
    """``cosine``, ``step`` and ``constant`` (after a linear warm-up) as one factor of the step,
    the values of the torch schedulers that :func:`cnn_ray.train.optim.build_lr_scheduler`
    chains for them (``LinearLR(start_factor=1e-3)`` over ``warmup_steps``, then
    ``CosineAnnealingLR(T_max=total - warmup, eta_min=0)``, ``StepLR(step_steps, gamma)`` or
    a constant), written as a closed form because those schedulers advance recursively and
    cannot be evaluated at an arbitrary step, which :class:`TimeWarp` needs (a run trained to
    ``optim.budget_s``). Source: Loshchilov & Hutter, "SGDR" (2017) for the cosine; He et al.
    (2016) for the step decay; Goyal et al. (2017) for the warm-up.

    Args:
        main: ``"cosine"``, ``"step"`` or ``"constant"``. total_steps: ``T`` >= 1.
        warmup_steps: >= 0. step_steps: steps between decays (``step``), >= 1.
        gamma: the step decay's factor, in (0, 1].
    Raises:
        ValueError: values out of range.
    """

    def __init__(self, main: str, total_steps: int, warmup_steps: int = 0, step_steps: int = 1,
                 gamma: float = 0.1):
        if main not in ("cosine", "step", "constant") or total_steps < 1 or warmup_steps < 0 \
                or step_steps < 1 or not 0.0 < gamma <= 1.0:
            raise ValueError(f"need main in cosine/step/constant, total_steps >= 1, "
                             f"warmup_steps >= 0, step_steps >= 1, 0 < gamma <= 1; got {main!r}, "
                             f"{total_steps}, {warmup_steps}, {step_steps}, {gamma}")
        self.main, self.total_steps = main, int(total_steps)
        self.warmup, self.step_steps, self.gamma = int(warmup_steps), int(step_steps), float(gamma)

    def __call__(self, step: float) -> float:
        if step < self.warmup:
            return 1e-3 + (1.0 - 1e-3) * step / self.warmup
        t = step - self.warmup
        if self.main == "cosine":
            span = max(1, self.total_steps - self.warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(t, span) / span))
        if self.main == "step":
            return self.gamma ** int(t // self.step_steps)
        return 1.0


class TimeWarp:
    """One learning-rate schedule re-fitted to a new length without a restart (a run trained to
    ``optim.budget_s``, :mod:`cnn_ray.train.budget_run`): a ``LambdaLR`` factor that evaluates
    a base factor (``T_b`` steps long) at the step ``progress(step) * T_b``.

    Progress is ``step / T`` until the first :meth:`refit`; a refit at step ``s0`` to a new
    total ``T'`` maps ``progress(step) = p0 + (1 - p0) (step - s0) / (T' - s0)`` with ``p0`` the
    progress reached at ``s0``: the rate is continuous at ``s0`` (same progress), it reaches
    the base schedule's end value at ``T'`` (progress 1; clamped after), and progress only
    grows with the step. The warm-up, peak and decay keep their shares of the remaining run.

    Holds numbers only (the base factor as its class name and ``vars``), so
    ``LambdaLR.state_dict()`` saves the warp with the scheduler and
    ``torch.load(weights_only=True)`` reads it back; a checkpoint can name only
    :func:`warpable` classes. Source: the budgeted-training view of a schedule as a function
    of training progress (Li, Yumer & Ramanan, "Budgeted Training: Rethinking Deep Neural
    Network Training Under Resource Constraints", ICLR 2020); the re-fit is cnn_ray's
    (issue 26).

    Args:
        base: an instance of a :func:`warpable` factor class.
        total_steps: ``T`` = ``T_b`` >= 1, the base factor's length.
    Raises:
        ValueError: ``base`` is not of a warpable class, or ``total_steps < 1``.
    """

    def __init__(self, base, total_steps: int):
        kind = type(base).__name__
        if _WARPABLE.get(kind) is not type(base) or total_steps < 1:
            raise ValueError(f"TimeWarp drives the factors {sorted(_WARPABLE)} over >= 1 steps; "
                             f"got {kind} over {total_steps}")
        self.kind, self.base = kind, dict(vars(base))
        self.base_total = self.total_steps = int(total_steps)
        self.start, self.start_progress = 0, 0.0

    def progress(self, step: float) -> float:
        """The share of the base schedule reached at optimiser ``step`` (in [0, 1] from the
        last refit on)."""
        if self.total_steps <= self.start:
            return self.start_progress
        frac = (step - self.start) / (self.total_steps - self.start)
        return min(1.0, self.start_progress + (1.0 - self.start_progress) * frac)

    def refit(self, step: int, total_steps: int) -> None:
        """From ``step`` on, end the schedule at ``total_steps`` (a total at or below ``step``:
        no step is left, the progress stays where it is)."""
        p0 = self.progress(step)
        self.start, self.start_progress = int(step), p0
        self.total_steps = max(int(step), int(total_steps))

    def __call__(self, step: int) -> float:
        cls = _WARPABLE[self.kind]
        fn = cls.__new__(cls)
        fn.__dict__.update(self.base)
        return fn(self.progress(step) * self.base_total)
