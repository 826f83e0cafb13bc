"""Replay a finished sweep's learning curves through a scheduler: what would ASHA have cost?

A FIFO sweep records every trial's metric and duration for every epoch (Tune's per-trial
``result.json``). Feeding those records, in the order and with the concurrency the sweep ran
them, to Ray Tune's own ``ASHAScheduler`` (the very object that
:func:`cnn_ray.tune.schedulers.build_tune_scheduler` makes, not a re-implementation) tells,
without training anything, which trials ASHA would have stopped and when, the epochs it would have trained, the best metric it would have kept, and its
wall time, for any ``grace_period`` / ``reduction_factor``:

    python jobs/replay_sweep.py ~/cnn_ray_runs/benchmark_sweep/<stamp>/sweep_fifo

Two reference points come with each setting:

* ``oracle``: the same scheduler fed each trial's *final* metric at every epoch (a perfect
  predictor). It bounds what early stopping can save at this trial count and concurrency:
  asynchronous SHA (Li et al., 2020, arXiv:1810.05934) promotes a trial as soon as it beats the
  top 1/``reduction_factor`` of the trials recorded *so far* at a rung, so the first trials
  to arrive are promoted with few peers to compare against.
* the rank correlation (Spearman) of the metric after each epoch with the final one: how well
  an early epoch predicts the end (ASHA's premise). One-cycle/warm-up schedules that span the
  whole budget make early epochs poor predictors.

Wall time is modelled as the recorded per-epoch durations (``time_this_iter_s``; the first
includes the trial's start-up) packed into ``concurrency`` slots, the next trial starting when
one ends. It is a model: gaps between trials are not counted, and per-epoch durations are those
measured under the recorded sweep's load.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence

from cnn_ray.config import ConfigError
from cnn_ray.io import iter_jsonl


@dataclass
class TrialRecord:
    """One trial's recorded run: ``metric[k]`` and ``epoch_s[k]`` (seconds) for epoch ``k + 1``."""

    trial_id: str
    metric: list[float]
    epoch_s: list[float]
    config: dict = field(default_factory=dict)


@dataclass
class ReplayOutcome:
    """What a scheduler would have done with the recorded trials.

    ``wall_s``: modelled sweep wall time (s); ``epochs``: epochs trained over all trials;
    ``best``: the best metric value among the epochs that ran; ``best_trial``: its trial id;
    ``stopped_at``: trial id -> the last epoch it ran."""

    wall_s: float
    epochs: int
    best: float
    best_trial: str
    stopped_at: dict[str, int]


def load_records(sweep_dir: str, metric: str = "val_top1",
                 time_attr: str = "epoch") -> list[TrialRecord]:
    """The trials of the Tune experiment at ``sweep_dir``, in trial-id order (the order a
    pre-drawn sweep starts them), from each trial folder's ``result.json``.

    Raises:
        ConfigError: the sweep's ``sweep_spec.json`` says it ran a scheduler other than FIFO
            (its stopped trials' curves are cut short, so what ASHA would do with them is
            unknown); no trial folders; or a trial's results lack ``metric`` / ``time_attr`` or
            skip an epoch (the message names the file).
    """
    from cnn_ray.tune.plan import SPEC_FILE

    root = Path(sweep_dir).expanduser()
    spec = root / SPEC_FILE
    if spec.exists():
        kind = json.loads(spec.read_text()).get("scheduler", {}).get("kind")
        if kind not in (None, "fifo"):
            raise ConfigError(f"replay: {spec} says this sweep ran scheduler {kind!r}; replay "
                              "needs one where every trial ran to its end (scheduler fifo)")
    files = sorted(root.glob("*/result.json"))
    if not files:
        raise ConfigError(f"replay: no trial results (<trial>/result.json) under {root}; "
                          "expected the folder of a finished sweep (e.g. .../sweep_fifo)")
    out = []
    for f in files:
        rows = [r for r in iter_jsonl(f) if metric in r]
        if not rows:
            raise ConfigError(f"replay: {f} has no {metric!r} results")
        if any(time_attr not in r for r in rows):
            raise ConfigError(f"replay: {f}: a result lacks {time_attr!r}")
        by_epoch = {int(r[time_attr]): r for r in rows}  # a resumed trial may repeat an epoch
        epochs = sorted(by_epoch)
        if epochs != list(range(1, len(epochs) + 1)):
            raise ConfigError(f"replay: {f}: epochs {epochs} are not 1..{len(epochs)}")
        out.append(TrialRecord(
            trial_id=str(rows[0].get("trial_id", f.parent.name)),
            metric=[float(by_epoch[e][metric]) for e in epochs],
            epoch_s=[float(by_epoch[e].get("time_this_iter_s", 0.0)) for e in epochs],
            config=rows[0].get("config", {})))
    return out


def replay(records: Sequence[TrialRecord], scheduler, *, mode: str = "max", concurrency: int = 1,
           max_t: Optional[int] = None, oracle: bool = False,
           metric_name: str = "val_top1", time_attr: str = "epoch") -> ReplayOutcome:
    """Run ``records`` through ``scheduler`` (:class:`~cnn_ray.tune.settings.SchedulerSettings`,
    kind ``asha``, ``asha_promotion`` or ``fifo``) with ``concurrency`` trials at once, in the
    given order.

    Each epoch's result goes to the Tune scheduler's ``on_trial_result`` at the modelled time
    it would have arrived (a heap of slot end times); a ``STOP`` (or the epoch budget
    ``max_t``, default ``scheduler.max_t`` or the longest record) ends the trial and starts the
    next; a record shorter than the budget ends on its own there (the recipe's own early
    stopping). ``oracle``: feed each trial's final value at every epoch.

    Raises:
        ConfigError: a scheduler kind that cannot be replayed (``median`` reads Tune's live
            trial list, ``hyperband`` pauses trials), ``concurrency`` < 1, or no records.
    """
    from ray.tune.schedulers import TrialScheduler

    if scheduler.kind == "asha_promotion":
        return _replay_promotion(records, scheduler, mode=mode, concurrency=concurrency,
                                 max_t=max_t, oracle=oracle, metric_name=metric_name,
                                 time_attr=time_attr)
    sched, budget = _tune_scheduler(records, scheduler, mode=mode, concurrency=concurrency,
                                    max_t=max_t, metric_name=metric_name, time_attr=time_attr)
    sign = 1.0 if mode == "max" else -1.0

    queue = list(range(len(records)))  # record indices, in start order
    running: list[tuple[float, int, int]] = []  # (time the epoch ends, record index, epoch)
    trials = [SimpleNamespace(trial_id=r.trial_id) for r in records]
    stopped_at: dict[str, int] = {}
    epochs, best, best_trial, now = 0, None, "", 0.0

    def start(i: int, at: float) -> None:
        sched.on_trial_add(None, trials[i])
        heapq.heappush(running, (at + records[i].epoch_s[0], i, 1))

    for _ in range(min(concurrency, len(queue))):
        start(queue.pop(0), 0.0)
    while running:
        now, i, epoch = heapq.heappop(running)
        rec = records[i]
        epochs += 1
        value = rec.metric[epoch - 1]
        if best is None or sign * value > sign * best:
            best, best_trial = value, rec.trial_id
        seen = rec.metric[-1] if oracle else value
        result = {time_attr: epoch, "training_iteration": epoch, metric_name: seen}
        action = sched.on_trial_result(None, trials[i], result)
        if action == TrialScheduler.STOP or epoch >= min(budget, len(rec.metric)):
            sched.on_trial_complete(None, trials[i], result)
            stopped_at[rec.trial_id] = epoch
            if queue:
                start(queue.pop(0), now)
            continue
        heapq.heappush(running, (now + rec.epoch_s[epoch], i, epoch + 1))
    return ReplayOutcome(wall_s=now, epochs=epochs, best=best, best_trial=best_trial,
                         stopped_at=stopped_at)


class _ReplayController:
    """The part of Tune's controller :class:`~cnn_ray.tune.promotion.PromotionASHA` calls."""

    def __init__(self):
        self.trials: list = []

    def get_trials(self) -> list:
        return list(self.trials)

    def stop_trial(self, trial) -> None:
        trial.status = "TERMINATED"

    def _mark_trial_to_checkpoint(self, trial) -> None:
        pass


def _replay_promotion(records: Sequence[TrialRecord], scheduler, *, mode: str, concurrency: int,
                      max_t: Optional[int], oracle: bool, metric_name: str,
                      time_attr: str) -> ReplayOutcome:
    """:func:`replay` for ``asha_promotion``: the very :class:`PromotionASHA` of a sweep, with its
    gate (a new record starts only when no promotion waits), fed by a slot-time simulation. A
    paused trial frees its slot; a promoted one resumes at its next recorded epoch (its resume
    start-up, seconds in a real sweep, is not modelled)."""
    from cnn_ray.tune.promotion import PromotionASHA

    if concurrency < 1:
        raise ConfigError(f"replay: concurrency must be >= 1, got {concurrency}")
    if not records:
        raise ConfigError("replay: no trials to replay")
    budget = max_t or scheduler.max_t or max(len(r.metric) for r in records)
    sched = PromotionASHA(time_attr=time_attr, max_t=budget, grace_period=scheduler.grace_period,
                          reduction_factor=scheduler.reduction_factor,
                          max_concurrent=concurrency, total_trials=len(records))
    sched.set_search_properties(metric_name, mode)
    sign = 1.0 if mode == "max" else -1.0
    ctl = _ReplayController()
    index: dict[str, int] = {}
    done_epochs: dict[str, int] = {}
    live: set[str] = set()
    running: list[tuple[float, int, int]] = []
    epochs, best, best_trial, now = 0, None, "", 0.0

    def fill(at: float) -> None:
        while len(running) < concurrency:
            while len(ctl.trials) < len(records) and sched.admits_new_trial(live):
                rec = records[len(ctl.trials)]
                ctl.trials.append(SimpleNamespace(trial_id=rec.trial_id, status="PENDING",
                                                  is_saving=False))
                index[rec.trial_id], done_epochs[rec.trial_id] = len(ctl.trials) - 1, 0
                live.add(rec.trial_id)
            trial = sched.choose_trial_to_run(ctl)
            if trial is None:
                return
            trial.status = "RUNNING"
            i = index[trial.trial_id]
            nxt = done_epochs[trial.trial_id] + 1
            heapq.heappush(running, (at + records[i].epoch_s[nxt - 1], i, nxt))

    fill(0.0)
    while running:
        now, i, epoch = heapq.heappop(running)
        rec, trial = records[i], ctl.trials[i]
        epochs += 1
        done_epochs[rec.trial_id] = epoch
        value = rec.metric[epoch - 1]
        if best is None or sign * value > sign * best:
            best, best_trial = value, rec.trial_id
        seen = rec.metric[-1] if oracle else value
        action = sched.on_trial_result(ctl, trial, {time_attr: epoch, metric_name: seen})
        if action == "STOP" or epoch >= min(budget, len(rec.metric)):
            trial.status = "TERMINATED"
            sched.on_trial_complete(ctl, trial, {})
            live.discard(rec.trial_id)
        elif action == "PAUSE":
            trial.status = "PAUSED"
        else:
            heapq.heappush(running, (now + rec.epoch_s[epoch], i, epoch + 1))
            continue
        fill(now)
    stopped_at = {rec.trial_id: done_epochs[rec.trial_id] for rec in records
                  if rec.trial_id in done_epochs}
    return ReplayOutcome(wall_s=now, epochs=epochs, best=best, best_trial=best_trial,
                         stopped_at=stopped_at)


def _tune_scheduler(records: Sequence[TrialRecord], scheduler, *, mode: str, concurrency: int,
                    max_t: Optional[int], metric_name: str, time_attr: str):
    """Check :func:`replay`'s arguments and build the Tune scheduler it feeds.

    Returns:
        ``(Tune TrialScheduler with metric and mode set, epoch budget)``; the budget is
        ``max_t``, else ``scheduler.max_t``, else the longest record (also ASHA's ``max_t`` when
        the settings leave it unset).

    Raises:
        ConfigError: as :func:`replay`.
    """
    from cnn_ray.tune.schedulers import scheduler_from

    if scheduler.kind not in ("asha", "fifo"):
        raise ConfigError(f"replay: scheduler.kind={scheduler.kind!r} cannot be replayed; "
                          "expected 'asha', 'asha_promotion' or 'fifo'")
    if concurrency < 1:
        raise ConfigError(f"replay: concurrency must be >= 1, got {concurrency}")
    if not records:
        raise ConfigError("replay: no trials to replay")
    budget = max_t or scheduler.max_t or max(len(r.metric) for r in records)
    if scheduler.kind == "asha" and scheduler.max_t is None:
        scheduler = scheduler.model_copy(update={"max_t": budget})
    sched = scheduler_from(scheduler, time_attr=time_attr)
    sched.set_search_properties(metric_name, mode)
    return sched, budget


def rank_correlation(records: Sequence[TrialRecord]) -> list[Optional[float]]:
    """Spearman correlation, over trials, of the metric after epoch ``k`` with the final
    metric, for ``k = 1 .. shortest record`` (Pearson's r of the pandas ranks, ties averaged:
    Spearman's definition); None where it is undefined (fewer than 3 trials, or a constant
    column)."""
    import pandas as pd

    n = min(len(r.metric) for r in records)
    final = pd.Series([r.metric[-1] for r in records]).rank()
    out = []
    for k in range(n):
        col = pd.Series([r.metric[k] for r in records]).rank()
        rho = col.corr(final) if len(records) >= 3 else float("nan")
        out.append(None if rho != rho else round(float(rho), 3))
    return out
