"""ASHA by promotion: trials pause at a rung and resume only once they rank in its top share.

Card: promotion-based ASHA
--------------------------
What: successive halving without synchronisation. Each trial trains to the first rung
(``grace_period`` epochs) and pauses there; a paused trial is resumed (promoted to the next rung)
only when it ranks among the top ``floor(n / reduction_factor)`` of the ``n`` trials recorded at
its rung and fewer than that many have been promoted from the rung. A free slot goes first to a
promotion (highest rung first, best value first), else to a new configuration; when every
configuration has started and nothing runs or can be promoted, the best paused trial of the
highest rung that promoted nobody is promoted (a sweep with fewer than ``eta**k`` trials still
brings one trial to the budget), then the paused trials are stopped.
Why: Tune's ``ASHAScheduler`` is the *stopping* variant: a trial reaching a rung continues
unless it is below the rung's cutoff among the trials recorded *so far*, so the first trials
at every rung meet no peers and run on (measured, 2 slots, 32 configurations, rungs 1 and 4 of
8: 93 epochs where synchronous SHA trains 32 + 8 x 3 + 2 x 4 = 64). Promotion never promotes
more than synchronous SHA would from the results it has, so the sweep trains at most SHA's
budget, and slots never wait for a rung to fill (a new configuration starts instead).
Values that work: ``grace_period=1``, ``reduction_factor=4`` for an 8-epoch budget with 32
configurations (``benchmarks/benchmark_sweep.py``: 64 epochs, 0.59-0.60 of FIFO's time over 16 of
them, same best; docs/results.md "Sweep: ASHA vs FIFO").
Cost: a promoted trial restarts from its last checkpoint (its process is reused: 0.03 s median
start-up measured).
A promotion can still go to a trial that later falls out of the top share (decided with fewer
results); it is never taken back.
Source: Li et al., "A System for Massively Parallel Hyperparameter Tuning" (MLSys 2020,
arXiv:1810.05934), Algorithm 2 (ASHA's ``get_job``: promote from the top ``1/eta`` of a rung,
else grow the bottom rung). The cap at ``floor(n / eta)`` promotions per rung is ours.

:class:`PromotionASHA` is the Tune scheduler; :class:`GatedVariantGenerator` is the searcher it
needs: Tune starts every PENDING trial it holds, so new configurations are drawn only while no
promotion waits and fewer than ``max_concurrent`` trials run (a paused trial holds no slot;
``BasicVariantGenerator(max_concurrent=...)`` counts paused trials as live and would deadlock).
Rung records, promotions and pauses are written to ``state_path`` after every change and read
back after a restored sweep (Tune saves neither); a trial that a restore restarted without its
promotion is judged again at its next result.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import BasicVariantGenerator

from cnn_ray import io
from cnn_ray.compat import stop_paused_trial


class StateFileMixin:
    """A Tune scheduler's own state in a JSON file beside the experiment (Tune saves none of
    it): :meth:`_saved_state` reads it back once after construction or unpickling (a restored
    sweep), :meth:`_write_state` replaces it atomically. ``_state_path`` None: nothing kept."""

    _state_path: Optional[str] = None
    _loaded = False

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_loaded"] = False  # an unpickled (restored) scheduler reads the file again
        return state

    def _saved_state(self) -> Optional[dict]:
        if self._loaded:
            return None
        self._loaded = True
        if not self._state_path or not os.path.exists(self._state_path):
            return None
        return json.loads(Path(self._state_path).read_text())

    def _write_state(self, state: dict) -> None:
        if self._state_path:
            io.atomic_write_json(self._state_path, state)


def promotion_rungs(max_t: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which trials pause to be ranked: ``grace_period * reduction_factor**k``
    below ``max_t`` (ints, ascending; the same milestones as Tune's ASHA, without ``max_t``).

    Raises:
        ValueError: ``grace_period < 1``, ``reduction_factor <= 1`` or ``max_t < grace_period``.
    """
    if grace_period < 1 or reduction_factor <= 1 or max_t < grace_period:
        raise ValueError(f"expected grace_period >= 1, reduction_factor > 1 and max_t >= "
                         f"grace_period; got {grace_period}, {reduction_factor}, {max_t}")
    n = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return sorted({int(grace_period * reduction_factor ** k) for k in range(n)} - {max_t})


class PromotionASHA(StateFileMixin, TrialScheduler):
    """Promotion-based ASHA (module card) as a Tune ``TrialScheduler``.

    Args:
        time_attr: the result key that counts the budget (``epoch``).
        max_t: the budget; a trial reporting ``time_attr >= max_t`` is stopped.
        grace_period: the first rung.
        reduction_factor: ``eta``: the top ``floor(n / eta)`` of a rung's ``n`` results may be
            promoted.
        max_concurrent: trials training at once (new configurations wait beyond it).
        total_trials: configurations the sweep draws (paused trials are stopped once all of
            them have started and nothing can run any more).
        state_path: a JSON file for the rung records (None: not kept).

    Raises:
        ValueError: from :func:`promotion_rungs`, or ``max_concurrent`` / ``total_trials`` < 1.
    """

    def __init__(self, *, time_attr: str = "epoch", max_t: int, grace_period: int = 1,
                 reduction_factor: float = 4.0, max_concurrent: int = 1, total_trials: int,
                 state_path: Optional[str] = None):
        super().__init__()
        if max_concurrent < 1 or total_trials < 1:
            raise ValueError(f"expected max_concurrent >= 1 and total_trials >= 1, got "
                             f"{max_concurrent}, {total_trials}")
        self._time_attr, self._max_t, self._rf = time_attr, int(max_t), float(reduction_factor)
        self.rungs = promotion_rungs(int(max_t), grace_period, reduction_factor)
        self.max_concurrent, self.total_trials = max_concurrent, total_trials
        self._mode = "max"
        self.recorded: dict[int, dict[str, float]] = {r: {} for r in self.rungs}  # signed values
        self.promoted: dict[int, list[str]] = {r: [] for r in self.rungs}
        self.paused: dict[str, int] = {}      # trial id -> the rung it waits at
        self._state_path = state_path
        self._loaded = False

    # --------------------------------------------------------------------------- state
    def set_search_properties(self, metric: Optional[str], mode: Optional[str], **spec) -> bool:
        if mode:
            self._mode = mode
        return super().set_search_properties(metric, mode, **spec)

    def _load(self) -> None:
        saved = self._saved_state()
        if saved is None:
            return
        for r in self.rungs:
            self.recorded[r].update(saved["recorded"].get(str(r), {}))
            self.promoted[r] = list(saved["promoted"].get(str(r), []))
        self.paused.update(saved.get("paused", {}))

    def _save(self) -> None:
        self._write_state({
            "rungs": self.rungs, "reduction_factor": self._rf,
            "recorded": {str(r): v for r, v in self.recorded.items()},
            "promoted": {str(r): v for r, v in self.promoted.items()},
            "paused": self.paused})

    # --------------------------------------------------------------------------- the rule
    def _top(self, rung: int) -> list[str]:
        """The trial ids that may hold a promotion from ``rung``: its best ``floor(n / eta)``
        (ties: first recorded first)."""
        rec = self.recorded[rung]
        k = int(len(rec) // self._rf)
        order = sorted(rec, key=lambda tid: -rec[tid])  # stable: insertion order on ties
        return order[:k]

    def promotable(self, trial_id: str, rung: int) -> bool:
        """Whether ``trial_id``, recorded at ``rung``, may be promoted now."""
        top = self._top(rung)
        return (trial_id not in self.promoted[rung] and len(self.promoted[rung]) < len(top)
                and trial_id in top)

    def next_promotion(self) -> Optional[str]:
        """The paused trial to resume next (highest rung first, then best value), or None."""
        for rung in reversed(self.rungs):
            for tid in self._top(rung):
                if self.paused.get(tid) == rung and self.promotable(tid, rung):
                    return tid
        return None

    def _signed(self, result: dict) -> Optional[float]:
        value = result.get(self._metric)
        if value is None:
            return None
        return float(value) if self._mode == "max" else -float(value)

    # --------------------------------------------------------------------------- Tune hooks
    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._load()

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._load()
        t = result.get(self._time_attr)
        value = self._signed(result)
        if t is None or value is None:
            return TrialScheduler.CONTINUE
        if t >= self._max_t:
            return TrialScheduler.STOP
        reached = [r for r in self.rungs if r <= t]
        if not reached:
            return TrialScheduler.CONTINUE
        rung, tid = reached[-1], trial.trial_id
        if tid in self.promoted[rung]:
            return TrialScheduler.CONTINUE
        self.recorded[rung].setdefault(tid, value)
        if self.promotable(tid, rung):
            self.promoted[rung].append(tid)
            self.paused.pop(tid, None)
            action = TrialScheduler.CONTINUE
        else:
            self.paused[tid] = rung
            action = TrialScheduler.PAUSE
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._forget(trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._forget(trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._forget(trial)

    def _forget(self, trial: Trial) -> None:
        self._load()
        if self.paused.pop(trial.trial_id, None) is not None:
            self._save()

    def choose_trial_to_run(self, tune_controller) -> Optional[Trial]:
        """A promotion if one waits, else a PENDING trial; once every configuration has
        started and nothing runs, is pending or can be promoted, the paused trials are stopped
        (they could only be promoted by results that will never come)."""
        self._load()
        trials = tune_controller.get_trials()
        by_id = {t.trial_id: t for t in trials}
        tid = self.next_promotion()
        if tid is not None and tid in by_id:
            trial = by_id[tid]
            if trial.status == Trial.PAUSED and not trial.is_saving:
                rung = self.paused.pop(tid)
                self.promoted[rung].append(tid)
                self._save()
                return trial
            return None  # its pause is still being saved: the slot waits for it
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        busy = any(t.status in (Trial.RUNNING, Trial.PENDING) or t.is_saving for t in trials)
        if len(trials) >= self.total_trials and not busy:
            last = self._last_chance(by_id)
            if last is not None:
                return last
            for trial in trials:
                if trial.status == Trial.PAUSED:
                    stop_paused_trial(tune_controller, trial)
        return None

    def _last_chance(self, by_id: dict) -> Optional[Trial]:
        """Once no result can come any more: the best paused trial of the highest rung that
        promoted nobody (too few trials for ``floor(n / eta) >= 1`` there), so that at least
        one trial reaches ``max_t``; None when every such rung promoted one."""
        for rung in reversed(self.rungs):
            waiting = [tid for tid, r in self.paused.items() if r == rung
                       and tid in by_id and by_id[tid].status == Trial.PAUSED]
            if not self.promoted[rung] and waiting:
                tid = max(waiting, key=lambda t: self.recorded[rung][t])
                self.paused.pop(tid)
                self.promoted[rung].append(tid)
                self._save()
                return by_id[tid]
            if self.promoted[rung]:
                return None
        return None

    # --------------------------------------------------------------------------- the gate
    def admits_new_trial(self, live_trial_ids) -> bool:
        """Whether the searcher may draw a new configuration now: no promotion waits and fewer
        than ``max_concurrent`` of its live trials are not paused."""
        if self.next_promotion() is not None:
            return False
        active = [tid for tid in live_trial_ids if tid not in self.paused]
        return len(active) < self.max_concurrent

    def debug_string(self) -> str:
        per = ", ".join(f"epoch {r}: {len(self.recorded[r])} ranked, {len(self.promoted[r])} "
                        f"promoted" for r in self.rungs)
        return f"PromotionASHA ({per}; {len(self.paused)} paused)"


class GatedVariantGenerator(BasicVariantGenerator):
    """``BasicVariantGenerator`` that draws the next configuration only when its
    :class:`PromotionASHA` admits one (:meth:`PromotionASHA.admits_new_trial`)."""

    def __init__(self, scheduler: PromotionASHA, **kwargs):
        super().__init__(max_concurrent=0, **kwargs)
        self._scheduler = scheduler

    def get_state(self):
        state = super().get_state()
        if state:
            state.pop("_scheduler", None)  # a restored searcher keeps the scheduler it was built with
        return state

    def next_trial(self):
        if not self.is_finished() and not self._scheduler.admits_new_trial(self._live_trials):
            return None
        return super().next_trial()
