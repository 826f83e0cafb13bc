"""Tune's scheduler and search algorithm for a sweep, and an ASHA whose rungs survive a resume.

* :func:`build_tune_scheduler` / :func:`scheduler_from`: ``asha`` (:class:`ResumableASHA`),
  ``asha_promotion`` (:class:`cnn_ray.tune.promotion.PromotionASHA`), ``fifo``, ``median`` or
  ``hyperband`` from :class:`~cnn_ray.tune.settings.SchedulerSettings`.
  Schedulers stop trials on the ``epoch`` metric (not ``training_iteration``): a trial resumed
  after an interruption restarts Tune's iteration count but continues Train's epochs.
* :func:`build_search_alg`: the pre-drawn configurations (random/grid), or Optuna TPE.
"""

from __future__ import annotations

from typing import Optional

from ray.tune.schedulers import ASHAScheduler

from cnn_ray.compat import asha_rungs
from cnn_ray.config import ConfigError
from cnn_ray.tune.plan import ASHA_STATE, SweepPlan
from cnn_ray.tune.promotion import StateFileMixin
from cnn_ray.tune.settings import SchedulerSettings


class ResumableASHA(StateFileMixin, ASHAScheduler):
    """``ASHAScheduler`` whose rung records survive a restored sweep.

    Tune saves the searcher's state with the experiment but not the scheduler's: a restored
    ASHA would start with empty rungs, so the first trial to reach each rung after a resume
    always continues and the finished trials no longer count. This subclass writes every rung's
    recorded values (``{trial id: value}``, already signed for the mode) to ``state_path``
    after each result and reads them back on its first call after a restore.
    """

    def __init__(self, *args, state_path: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._state_path = state_path
        self._loaded = False

    def _load(self) -> None:
        saved = self._saved_state()
        if saved is None:
            return
        for bracket, rungs in zip(asha_rungs(self), saved["brackets"]):
            for (milestone, recorded), (saved_milestone, values) in zip(bracket, rungs):
                if milestone == saved_milestone:
                    recorded.update(values)  # the scheduler's own dict (asha_rungs)

    def _save(self) -> None:
        self._write_state({"brackets": [[[m, dict(rec)] for m, rec in b]
                                        for b in asha_rungs(self)]})

    def on_trial_add(self, tune_controller, trial) -> None:
        self._load()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._load()
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._load()
        super().on_trial_complete(tune_controller, trial, result)
        self._save()


def build_tune_scheduler(plan: SweepPlan, concurrency: int = 1):
    """The Tune scheduler of ``plan.scheduler`` (FIFO for ``fifo``); ASHA keeps its rung
    records beside the experiment (local storage). ``concurrency``: trials at once (what
    ``asha_promotion`` admits)."""
    state_path = f"{plan.exp_dir}/{ASHA_STATE}" if plan.local else None
    if plan.scheduler.kind == "asha_promotion":
        from cnn_ray.tune.promotion import PromotionASHA

        s = plan.scheduler
        return PromotionASHA(time_attr=s.time_attr, max_t=s.max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor, max_concurrent=concurrency,
                             total_trials=plan.num_trials, state_path=state_path)
    return scheduler_from(plan.scheduler, state_path=state_path)


def scheduler_from(s: SchedulerSettings, *, time_attr: Optional[str] = None,
                   state_path: Optional[str] = None):
    """A Tune scheduler from settings (``time_attr`` overrides ``s.time_attr``). Built without
    ``metric``/``mode``: ``TuneConfig`` passes them (Tune refuses both); a replay calls
    ``set_search_properties``. ``max_t`` must be set for ``asha``/``hyperband``."""
    from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler, MedianStoppingRule

    attr = time_attr or s.time_attr
    if s.kind == "fifo":
        return FIFOScheduler()
    if s.kind == "asha":
        return ResumableASHA(time_attr=attr, max_t=s.max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor, brackets=s.brackets,
                             state_path=state_path)
    if s.kind == "median":
        return MedianStoppingRule(time_attr=attr, grace_period=s.grace_period,
                                  min_samples_required=s.min_samples_required)
    return HyperBandScheduler(time_attr=attr, max_t=s.max_t, reduction_factor=s.reduction_factor)


def build_search_alg(plan: SweepPlan, concurrency: int, scheduler=None):
    """``BasicVariantGenerator`` over the pre-drawn configurations (a grid over them, see
    :func:`cnn_ray.tune.trial.param_space`), or Optuna TPE behind a ``ConcurrencyLimiter``; either way at most
    ``concurrency`` trials run at once.

    (``TuneConfig(max_concurrent_trials=...)`` is ignored for a ``BasicVariantGenerator``
    instance and clashes with a ``ConcurrencyLimiter``, so the limit lives here.) With a
    :class:`~cnn_ray.tune.promotion.PromotionASHA` ``scheduler`` the generator asks it before
    drawing (:class:`~cnn_ray.tune.promotion.GatedVariantGenerator`): paused trials hold no slot.
    """
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from cnn_ray.tune.promotion import GatedVariantGenerator, PromotionASHA

    if plan.points is not None and isinstance(scheduler, PromotionASHA):
        return GatedVariantGenerator(scheduler)
    if plan.points is not None:  # the configurations are the param_space's grid
        return BasicVariantGenerator(max_concurrent=concurrency)
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError("searcher.kind=optuna needs Optuna: pip install 'cnn_ray[optuna]'") from None
    kw = {"seed": plan.searcher.seed}
    if plan.searcher.n_startup_trials is not None:
        kw["n_startup_trials"] = plan.searcher.n_startup_trials
    searcher = OptunaSearch(space=plan.space.optuna_define_by_run(), metric=plan.settings.metric,
                            mode=plan.settings.mode, sampler=optuna.samplers.TPESampler(**kw))
    limit = min(plan.searcher.max_concurrent or concurrency, concurrency)
    return ConcurrencyLimiter(searcher, max_concurrent=limit)

