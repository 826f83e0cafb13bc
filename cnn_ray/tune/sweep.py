"""Run a sweep: Ray Tune trials that each run the same ``TorchTrainer`` as ``jobs/train.py``.

    from cnn_ray.tune import run_sweep, SchedulerSettings
    result = run_sweep(base_cfg, {"optim.lr": {"loguniform": [1e-3, 1.0]}}, num_samples=16,
                       scheduler=SchedulerSettings(kind="asha", max_t=8))
    result.best.config, result.best_config_path, result.best_checkpoint

How it fits together (Ray 2.60, Train V2; see ``shared/RAY_NOTES.md``), module by module:

* :mod:`cnn_ray.tune.settings`: what the sweep is asked to do (size, metric, scheduler,
  searcher); :mod:`cnn_ray.tune.plan`: everything decided before Ray runs (the sampled
  configurations, each validated; the sweep directory; the trial concurrency).
* The data is prepared ONCE on the driver (``prepare_data(base)``) and the ``PreparedData``
  reaches every trial through ``tune.with_parameters``; trials only read the prepared shards.
* :mod:`cnn_ray.tune.trial`: each trial is a Tune function trainable that rebuilds its
  ``TrainConfig`` and fits one ``TorchTrainer``, stored at ``<sweep dir>/train_runs/<trial id>``.
  The trial's own function only waits on its Train run and reserves no CPU
  (:attr:`SweepSettings.trial_driver_cpus`, default 0; a token 1 MiB of memory, as Tune
  refuses an empty request); its Train workers reserve ``workers_per_trial *
  scaling.cpus_per_worker`` through their own placement group and Ray Data needs
  ``data.data_cpus`` per trial, with at least one whole CPU free (its read tasks take a full
  CPU). ``max_concurrent_trials`` is derived from the cluster's CPUs (and GPUs) unless given,
  and must fit.
* :mod:`cnn_ray.tune.schedulers`: schedulers stop trials on the ``epoch`` metric; ASHA's rung
  records are saved beside the experiment (:class:`ResumableASHA`), since Tune restores the
  searcher but not the scheduler.
* :mod:`cnn_ray.tune.release`: a stopped trial's Train workers keep their placement group;
  :class:`ReleaseStoppedTrials` removes such orphans during the sweep, and :func:`run_sweep`
  waits (briefly) until every CPU is free again before it returns.
* Here: :func:`run_sweep` and the resume decision (a saved sweep of the same name is restored
  only when it is the same sweep).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from cnn_ray import compat, io
from cnn_ray.compat import experiment_trials
from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.tune.plan import SPEC_FILE, SweepPlan, fit_concurrency
from cnn_ray.tune.release import ReleaseStoppedTrials, wait_for_release
from cnn_ray.tune.schedulers import build_search_alg, build_tune_scheduler
from cnn_ray.tune.settings import SchedulerSettings, SearcherSettings, SweepSettings, settings_from
from cnn_ray.tune.trial import make_trainable, param_space, trial_dirname


def run_sweep(
    base_config: TrainConfig,
    search_space: dict,
    *,
    name: Optional[str] = None,
    num_samples: int = 8,
    metric: str = "val_top1",
    mode: str = "max",
    workers_per_trial: Optional[int] = None,
    max_concurrent_trials: Optional[int] = None,
    scheduler: Union[SchedulerSettings, dict, str, None] = "asha",
    searcher: Union[SearcherSettings, dict, str, None] = "random",
    settings: Optional[SweepSettings] = None,
    points: Optional[Sequence[dict]] = None,
    order: str = "as_drawn",
    resume: Optional[bool] = None,
    output_dir: Optional[str] = None,
    verbose: int = 1,
    tune_callbacks: Optional[list] = None,
):
    """Run (or resume) a sweep over ``search_space`` on top of ``base_config``.

    Args:
        base_config: the recipe every trial starts from (``run.storage_path`` holds the sweep at
            ``<storage_path>/<name>``).
        search_space: dotted keys -> distributions, see :mod:`cnn_ray.tune.space`.
        name, num_samples, metric, mode, workers_per_trial, max_concurrent_trials: see
            :class:`SweepSettings` (``settings`` replaces them all when given).
        scheduler: :class:`SchedulerSettings`, a dict, or a kind (``asha``, ``fifo``, ...).
        searcher: :class:`SearcherSettings`, a dict, or a kind (``random``, ``grid``, ``optuna``).
        points: run exactly these flat ``{dotted key: value}`` configurations (e.g. the same
            list under two schedulers); replaces the searcher's sampling.
        order: the start order of drawn or given configurations (:attr:`SweepSettings.order`):
            ``as_drawn`` or ``longest_first`` (:mod:`cnn_ray.tune.order`).
        resume: None: restore the saved sweep of the same name if there is one (it must be
            the same sweep); True: it must exist; False: it must not.
        output_dir: where the table, curves and best config go; default the sweep directory.
        tune_callbacks: extra ``ray.tune.Callback`` objects.

    Returns:
        :class:`~cnn_ray.tune.results.SweepResult`.

    Raises:
        ConfigError: a bad space, setting, sampled configuration, or resources that do not fit,
            named by key, before any trial runs.
    """
    from cnn_ray.tune.results import summarize_sweep

    if settings is None:
        settings = settings_from(SweepSettings, dict(
            name=name, num_samples=num_samples, metric=metric, mode=mode,
            workers_per_trial=workers_per_trial, max_concurrent_trials=max_concurrent_trials,
            order=order), "sweep")
    plan = SweepPlan(base_config, search_space, settings,
                     settings_from(SchedulerSettings, scheduler, "scheduler"),
                     settings_from(SearcherSettings, searcher, "searcher"), points)
    restoring = _decide_resume(plan, resume)
    concurrency, trainable = _start(plan, restoring=restoring)
    t0 = time.time()
    grid = _tuner(plan, trainable, concurrency, restoring=restoring, verbose=verbose,
                  tune_callbacks=tune_callbacks).fit()
    wall = time.time() - t0
    wait_for_release()
    unfinished, not_started = unfinished_trials(plan, grid)
    _warn_if_interrupted(plan, unfinished, not_started)
    return summarize_sweep(plan, grid, wall_s=wall, output_dir=output_dir,
                           concurrency=concurrency, resumed=restoring, unfinished=unfinished,
                           not_started=not_started)


def _start(plan: SweepPlan, *, restoring: bool = False) -> tuple[int, Any]:
    """Connect to (or start) Ray, check the base recipe fits, decide the concurrency, prepare
    the data once on the driver, order a new sweep's trials (``sweep.order``), build the trial
    function and record the sweep's spec (the points as drawn: a resumed sweep keeps the order
    Tune saved). Returns ``(concurrency, trainable)``."""
    import ray

    from cnn_ray.data.prepare import prepare_data
    from cnn_ray.train.launch import check_cluster_fits
    from cnn_ray.tune.order import measured_rate, order_points

    if not ray.is_initialized():
        ray.init()
    check_cluster_fits(plan.base)  # on an autoscaling cluster: waits for one trial's nodes
    # Concurrency follows what the cluster can grow to (the autoscaler starts nodes for the
    # trials' pending placement groups), else what it has.
    concurrency = fit_concurrency(plan, compat.cluster_max_resources() or ray.cluster_resources())
    prepared = prepare_data(plan.base)  # once, on the driver; no-op when already prepared
    if plan.points is not None and not restoring and plan.settings.order != "as_drawn":
        plan.run_points = order_points(plan.points, plan.configs, plan.settings.order,
                                       measured_rate(prepared.num_classes))
    trainable = make_trainable(plan, prepared)
    if plan.local:
        io.atomic_write_text(Path(plan.exp_dir) / SPEC_FILE, json.dumps(plan.spec(), indent=1))
    return concurrency, trainable


def _warn_if_interrupted(plan: SweepPlan, unfinished: list[str], not_started: int) -> None:
    if unfinished or not_started:
        print(f"[cnn_ray] sweep interrupted: {len(unfinished)} trial(s) unfinished, "
              f"{not_started} not started; its "
              f"state is saved in {plan.exp_dir}: run the same command with --resume "
              "(run_sweep(..., resume=True)) to continue without re-running finished trials",
              flush=True)


def _tuner(plan: SweepPlan, trainable, concurrency: int, *, restoring: bool, verbose: int,
           tune_callbacks: Optional[list]):
    """The ``ray.tune.Tuner`` of ``plan``: restored from ``plan.exp_dir`` (unfinished and
    errored trials resume) or new, with the scheduler, searcher and release callback."""
    from ray import tune

    from cnn_ray.train.launch import trains_in_trial

    if restoring:
        print(f"[cnn_ray] resuming sweep {plan.exp_dir}", flush=True)
        return tune.Tuner.restore(plan.exp_dir, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    settings = plan.settings
    scheduler = build_tune_scheduler(plan, concurrency)
    return tune.Tuner(
        trainable,
        param_space=param_space(plan),
        tune_config=tune.TuneConfig(
            metric=settings.metric, mode=settings.mode, scheduler=scheduler,
            search_alg=build_search_alg(plan, concurrency, scheduler),
            num_samples=1 if plan.points is not None else plan.num_trials,
            trial_dirname_creator=trial_dirname,
            # in-trial training: the next trial reuses a finished one's process (torch and
            # cnn_ray already imported) -- safe, each trial rebuilds its model, seeds and data
            reuse_actors=settings.in_trial and trains_in_trial(plan.base),
        ),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=plan.storage, verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            callbacks=[ReleaseStoppedTrials(), *(tune_callbacks or [])],
        ),
    )


def unfinished_trials(plan: SweepPlan, grid) -> tuple[list[str], int]:
    """(ids of trials that did not end, number of trials never started), read from the saved
    experiment state: after an interruption (Ctrl+C / SIGUSR1 / SIGTERM) Tune saves the
    state with the running trials still RUNNING, then marks them TERMINATED in memory."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(plan.exp_dir).trials
    except Exception:  # noqa: BLE001 (remote storage, or no state): what Tune returned
        trials = experiment_trials(grid)
    unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]
    return unfinished, max(0, plan.num_trials - len(trials))


def _decide_resume(plan: SweepPlan, resume: Optional[bool]) -> bool:
    """Whether to restore ``plan.exp_dir``; raises :class:`ConfigError` on a mismatch."""
    from ray.tune import Tuner

    exists = Tuner.can_restore(plan.exp_dir)
    if resume is True and not exists:
        raise ConfigError(f"--resume: no saved sweep at {plan.exp_dir} (sweep.name "
                          f"{plan.name!r}, base.run.storage_path {plan.base.run.storage_path!r})")
    if resume is False and exists:
        raise ConfigError(f"sweep.name: a sweep named {plan.name!r} already exists at "
                          f"{plan.exp_dir}; choose another name or resume it")
    if exists and plan.local:
        saved_path = Path(plan.exp_dir) / SPEC_FILE
        if saved_path.exists():
            saved, now = json.loads(saved_path.read_text()), plan.spec()
            changed = _diff_keys(saved, now)
            if changed:
                raise ConfigError(
                    f"sweep.name: {plan.exp_dir} holds a different sweep (changed: "
                    f"{', '.join(changed[:8])}); choose another sweep.name to start a new one, "
                    "or restore the settings it was started with")
    return exists


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "<all>"]

