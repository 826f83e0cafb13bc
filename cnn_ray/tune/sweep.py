"""Run a sweep: Ray Tune trials that each run the same ``TorchTrainer`` as ``jobs/train.py``.

    from cnn_ray.tune import run_sweep, SchedulerSettings
    result = run_sweep(base_cfg, {"optim.lr": {"loguniform": [1e-3, 1.0]}}, num_samples=16,
                       scheduler=SchedulerSettings(kind="asha", max_t=8))
    result.best.config, result.best_config_path, result.best_checkpoint

How it fits together (Ray 2.60, Train V2; see ``shared/RAY_NOTES.md``):

* The data is prepared ONCE on the driver (``prepare_data(base)``) and the ``PreparedData``
  reaches every trial through ``tune.with_parameters``; trials only read the prepared shards.
* Each trial is a Tune *function* trainable (``Tuner(trainer)`` does not work with V2): it
  rebuilds the ``TrainConfig`` from the base plus its sampled values (validated, so a bad
  combination is a :class:`~cnn_ray.config.ConfigError` naming the key), then
  ``build_trainer(cfg, prepared, name=<trial id>, callbacks=[TuneReportCallback()]).fit()``.
  Each epoch's ``ray.train.report`` is one Tune result. The Train run is stored at
  ``<sweep dir>/train_runs/<trial id>``, so a restored sweep's trial finds its checkpoints.
* The trial's own function only waits on its Train run and reserves no CPU
  (:attr:`SweepSettings.trial_driver_cpus`, default 0; a token 1 MiB of memory, as Tune
  refuses an empty request); its Train workers reserve ``workers_per_trial *
  scaling.cpus_per_worker`` through their own placement group and Ray Data needs
  ``data.data_cpus`` per trial, with at least one whole CPU free (its read tasks take a full
  CPU). ``max_concurrent_trials`` is derived from the cluster's CPUs (and GPUs) unless given,
  and must fit.
* Schedulers stop trials on the ``epoch`` metric (not ``training_iteration``): a trial resumed
  after an interruption restarts Tune's iteration count but continues Train's epochs. ASHA's
  rung records are saved beside the experiment (:class:`ResumableASHA`), since Tune restores
  the searcher but not the scheduler.
* A stopped trial's actor exits and its Train controller dies with it, but the workers'
  placement group outlives them (it belongs to the job); :class:`ReleaseStoppedTrials`
  removes such orphans once a second during the sweep, and :func:`run_sweep` waits (briefly)
  until every CPU is free again before it returns.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from cnn_ray.config import ConfigError, TrainConfig, format_validation_error
from cnn_ray.tune.space import POINT_KEY, SearchSpace, parse_space, trial_config, validate_variants

# Metrics every epoch's report carries (cnn_ray.train.worker); a sweep optimises one of them.
KNOWN_METRICS = ("val_top1", "val_top5", "val_loss", "best_val_top1", "train_top1", "train_top5",
                 "train_loss")
TRAIN_RUNS = "train_runs"           # <sweep dir>/train_runs/<trial id>: each trial's Train run
TRIAL_STARTS = "trial_starts.jsonl"  # one line per start of a trial function
SPEC_FILE = "sweep_spec.json"        # what the sweep was asked to do (resume checks it)
TRIAL_DRIVER_MEMORY = 2**20          # bytes: the trial function's logical reservation
ASHA_STATE = "asha_rungs.json"       # ASHA's recorded rung values (Tune does not save them)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SweepSettings(_Strict):
    """How many trials, what to optimise, and the resources per trial."""

    name: Optional[str] = Field(None, description="Tune experiment name; default <base run.name>_sweep")
    num_samples: int = Field(8, ge=1, description="random/grid: configurations drawn (each "
                             "crossed with every grid value); optuna: trials")
    metric: str = Field("val_top1", description="the reported metric to optimise")
    mode: Literal["max", "min"] = "max"
    workers_per_trial: Optional[int] = Field(None, ge=1, description="Train workers per trial; "
                                             "default base scaling.num_workers")
    max_concurrent_trials: Optional[int] = Field(None, ge=1, description="default: as many as "
                                                 "the cluster's CPUs (and GPUs) fit")
    max_failures: int = Field(0, ge=0, description="times Tune retries an errored trial")
    trial_driver_cpus: float = Field(0.0, ge=0.0, le=1.0, description="CPU the trial's own "
                                     "function reserves (it only waits on its Train run)")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in KNOWN_METRICS:
            raise ValueError(f"not reported by the trainer; choose one of {list(KNOWN_METRICS)}")
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (not v or "/" in v or v in (".", "..")):
            raise ValueError("expected a non-empty name without '/'")
        return v


class SchedulerSettings(_Strict):
    """Trial scheduler. ``asha``: ``ASHAScheduler`` (asynchronous successive halving; Li et
    al., 2020, arXiv:1810.05934); ``fifo``: run every trial to the end; ``median``:
    ``MedianStoppingRule`` (Golovin et al., 2017, Google Vizier); ``hyperband``: synchronous
    ``HyperBandScheduler`` (Li et al., 2018), which pauses trials (a paused trial's Train run
    resumes from its checkpoint)."""

    kind: Literal["asha", "fifo", "median", "hyperband"] = "asha"
    time_attr: str = Field("epoch", description="epoch survives a resumed trial; "
                           "training_iteration restarts at 1")
    max_t: Optional[int] = Field(None, ge=1, description="epochs a trial may reach; default "
                                 "base optim.epochs")
    grace_period: int = Field(1, ge=1, description="epochs before a trial can be stopped")
    reduction_factor: float = Field(3.0, gt=1.0, description="keep the top 1/reduction_factor "
                                    "at each rung")
    brackets: int = Field(1, ge=1, description="ASHA brackets")
    min_samples_required: int = Field(3, ge=1, description="median: trials needed to compare")


class SearcherSettings(_Strict):
    """``random``: draw ``num_samples`` configurations (``grid`` keys crossed); ``grid``: also
    cross every ``choice`` key and family; ``optuna``: Optuna TPE (Bergstra et al., 2011)
    through ``OptunaSearch`` behind a ``ConcurrencyLimiter`` (extra ``cnn_ray[optuna]``).
    All seeded with ``seed``."""

    kind: Literal["random", "grid", "optuna"] = "random"
    seed: int = Field(0, ge=0)
    max_concurrent: Optional[int] = Field(None, ge=1, description="optuna: trials suggested "
                                          "before results come back; default the trial concurrency")
    n_startup_trials: Optional[int] = Field(None, ge=1, description="optuna: random trials "
                                            "before TPE takes over (Optuna's default 10)")


def settings_from(cls, value, field: str):
    """A settings object from an instance, a dict, a kind string or None (defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        value = {"kind": value}
    try:
        return cls.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, field)) from None


# ------------------------------------------------------------------------------ the plan
class SweepPlan:
    """Everything decided before Ray runs anything (validated; no Ray calls)."""

    def __init__(self, base: TrainConfig, space_raw: dict, settings: SweepSettings,
                 scheduler: SchedulerSettings, searcher: SearcherSettings,
                 points: Optional[Sequence[dict]] = None):
        from cnn_ray.train.launch import storage_root

        if settings.workers_per_trial is not None:
            raw = base.to_dict()
            raw["scaling"]["num_workers"] = settings.workers_per_trial
            base = TrainConfig.from_dict(raw, source="base (sweep.workers_per_trial)",
                                         check_paths=False)
        self.base = base
        self.settings, self.scheduler, self.searcher = settings, scheduler, searcher
        self.space: SearchSpace = parse_space(space_raw, base, searcher=searcher.kind)
        self.name = settings.name or f"{base.run.name}_sweep"
        self.storage = storage_root(base)
        self.local = "://" not in self.storage
        self.exp_dir = f"{self.storage.rstrip('/')}/{self.name}"
        self.runs_dir = f"{self.exp_dir}/{TRAIN_RUNS}"
        if scheduler.max_t is None:
            scheduler = scheduler.model_copy(update={"max_t": base.optim.epochs})
            self.scheduler = scheduler
        if scheduler.grace_period > scheduler.max_t:
            raise ConfigError(f"scheduler.grace_period ({scheduler.grace_period}) must be <= "
                              f"scheduler.max_t ({scheduler.max_t})")
        self.points: Optional[list[dict]] = None
        if points is not None:
            self.points = [dict(p) for p in points]
        elif searcher.kind in ("random", "grid"):
            self.points = self.space.variants(settings.num_samples, searcher.seed,
                                              enumerate_choices=searcher.kind == "grid")
        if self.points is not None:
            if not self.points:
                raise ConfigError("sweep: no configurations to run")
            validate_variants(base, self.points)  # every trial's config, before anything runs

    @property
    def num_trials(self) -> int:
        return len(self.points) if self.points is not None else self.settings.num_samples

    def trial_resources(self) -> dict[str, float]:
        """What one running trial holds: Train workers + its Ray Data tasks + its driver
        (no Ray Data tasks with ``data.cache: memory``: the arrays are put once by the sweep)."""
        s = self.base.scaling
        cpus = s.num_workers * s.cpus_per_worker + self.base.data.pipeline_cpus
        cpus += self.settings.trial_driver_cpus
        out = {"CPU": cpus}
        if s.use_gpu:
            out["GPU"] = float(s.num_workers)
        return out

    def fits(self, k: int, cluster: dict[str, float]) -> bool:
        """Whether ``k`` trials fit at once. Besides each trial's share, one whole CPU must stay
        free: Ray Data's file listing and Parquet read tasks reserve a full CPU each, so a
        pipeline left 0.99 CPU never starts (the trial hangs). With ``data.cache: memory``
        trials run no Ray Data at all, so neither is needed."""
        s, cpus = self.base.scaling, cluster.get("CPU", 0.0)
        workers = k * (s.num_workers * s.cpus_per_worker + self.settings.trial_driver_cpus)
        per_trial = self.base.data.pipeline_cpus
        data = max(k * per_trial, 1.0) if per_trial else 0.0
        gpus_ok = not s.use_gpu or k * s.num_workers <= cluster.get("GPU", 0.0) + 1e-9
        return workers + data <= cpus + 1e-9 and gpus_ok

    def spec(self) -> dict:
        """The semantic content of the sweep (what a resume must match)."""
        return json.loads(json.dumps({
            "base": self.base.to_dict(), "space": self.space.raw,
            "num_samples": self.settings.num_samples, "metric": self.settings.metric,
            "mode": self.settings.mode, "scheduler": self.scheduler.model_dump(),
            "searcher": self.searcher.model_dump(), "points": self.points,
        }, default=str))


def fit_concurrency(plan: SweepPlan, cluster: dict[str, float]) -> int:
    """How many trials fit the cluster at once; raises :class:`ConfigError` if none does or if
    ``sweep.max_concurrent_trials`` asks for more than fit."""
    need = plan.trial_resources()
    fits = 0
    while plan.fits(fits + 1, cluster):
        fits += 1
    s = plan.base.scaling
    if fits < 1:
        raise ConfigError(
            f"one trial needs {need} (sweep.workers_per_trial {s.num_workers} x "
            f"base.scaling.cpus_per_worker {s.cpus_per_worker} + base.data.data_cpus "
            f"{plan.base.data.data_cpus} + sweep.trial_driver_cpus "
            f"{plan.settings.trial_driver_cpus}) and one CPU left free for Ray Data's read "
            f"tasks, but the cluster has {cluster}")
    asked = plan.settings.max_concurrent_trials
    if asked is not None and asked > fits:
        raise ConfigError(
            f"sweep.max_concurrent_trials={asked}, but only {fits} trials of {need} fit the "
            f"cluster ({ {k: cluster.get(k, 0.0) for k in need} }); lower it, or lower "
            "sweep.workers_per_trial / base.scaling.cpus_per_worker")
    return min(asked or fits, plan.num_trials)


# ------------------------------------------------------------------------------ the trial
def run_trial(config: dict, *, base: dict, prepared, runs_dir: str, starts_log: Optional[str],
              memory: Optional[list] = None) -> None:
    """The Tune function trainable: one Train run for one sampled configuration.

    Records its start (``trial_starts.jsonl``: ``event`` ``start`` with the trial id, unix time
    and pid; then ``trainer_built`` once the datasets are set up), rebuilds and validates
    the config (``ConfigError`` naming the key), writes the run files and fits the trainer;
    every epoch's report reaches Tune through ``TuneReportCallback``.
    """
    import ray.tune
    started = time.time()  # before the imports: a fresh trial actor pays for them too
    from ray.tune.integration.ray_train import TuneReportCallback

    from cnn_ray.train.launch import build_trainer, run_dir, write_run_files

    trial_id = ray.tune.get_context().get_trial_id()
    if starts_log:
        _append_jsonl(starts_log, {"event": "start", "trial_id": trial_id, "time": started,
                                   "pid": os.getpid()})
    cfg = trial_config(base, config, source=f"trial {trial_id}", name=trial_id,
                       storage_path=runs_dir)
    write_run_files(cfg, run_dir(cfg), prepared)
    shared = None
    if memory and cfg.data.cache == "memory" and cfg.data.image_size == base["data"]["image_size"]:
        shared = memory[0]  # the sweep's arrays (same prepared shards, same eval size)
    trainer = build_trainer(cfg, prepared, name=trial_id, callbacks=[TuneReportCallback()],
                            memory=shared)
    if starts_log:  # datasets built (the small validation set materialised): a start-up phase
        _append_jsonl(starts_log, {"event": "trainer_built", "trial_id": trial_id,
                                   "time": time.time()})
    trainer.fit()


def trial_dirname(trial) -> str:
    """Tune trial folder = the trial id (short, and the same as its Train run's name)."""
    return trial.trial_id


def _append_jsonl(path: str, record: dict) -> None:
    from cnn_ray.train.runfiles import append_jsonl

    append_jsonl(os.path.dirname(path), os.path.basename(path), record)


# ------------------------------------------------------------------------------ Tune objects
class ResumableASHA(ASHAScheduler):
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

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_loaded"] = False  # an unpickled (restored) scheduler reads the file again
        return state

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self._state_path or not os.path.exists(self._state_path):
            return
        saved = json.loads(Path(self._state_path).read_text())
        for bracket, rungs in zip(self._brackets, saved["brackets"]):
            for (milestone, recorded), (saved_milestone, values) in zip(bracket._rungs, rungs):
                if milestone == saved_milestone:
                    recorded.update(values)

    def _save(self) -> None:
        if not self._state_path:
            return
        state = {"brackets": [[[m, dict(rec)] for m, rec in b._rungs] for b in self._brackets]}
        tmp = f"{self._state_path}.tmp"
        Path(tmp).write_text(json.dumps(state))
        os.replace(tmp, self._state_path)

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


def build_scheduler(plan: SweepPlan):
    """The Tune scheduler of ``plan.scheduler`` (FIFO for ``fifo``); ASHA keeps its rung
    records beside the experiment (local storage)."""
    return scheduler_from(plan.scheduler,
                          state_path=f"{plan.exp_dir}/{ASHA_STATE}" if plan.local else None)


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


def build_search_alg(plan: SweepPlan, concurrency: int):
    """``BasicVariantGenerator`` over the pre-drawn configurations (a grid over them, see
    :func:`param_space`), or Optuna TPE behind a ``ConcurrencyLimiter``; either way at most
    ``concurrency`` trials run at once.

    (``TuneConfig(max_concurrent_trials=...)`` is ignored for a ``BasicVariantGenerator``
    instance and clashes with a ``ConcurrencyLimiter``, so the limit lives here.)
    """
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if plan.points is not None:  # the configurations are the param_space's grid (param_space)
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


def param_space(plan: SweepPlan) -> dict:
    """Tune's ``param_space``: ``{"point": grid_search([config, ...])}`` for pre-drawn configs.

    Each trial's config is ``{"point": {dotted key: value}}``; a grid over whole
    configurations runs exactly the listed ones, in order (``points_to_evaluate`` would need
    every key in the space and would sample the keys a family leaves out).
    """
    from ray import tune

    if plan.points is None:
        return {}
    return {POINT_KEY: tune.grid_search([dict(p) for p in plan.points])}


def make_trainable(plan: SweepPlan, prepared):
    """The trial function with its shared objects bound and its driver's tiny reservation."""
    from ray import tune

    from cnn_ray.train.launch import put_in_memory

    base = plan.base.to_dict()
    # data.cache: memory -> the arrays go into the object store once, for every trial (the refs
    # travel wrapped in a list so that with_parameters hands the trials refs, not copies).
    memory = [put_in_memory(plan.base, prepared)] if plan.base.data.cache == "memory" else None
    fn = tune.with_parameters(
        run_trial, base=base, prepared=prepared, runs_dir=plan.runs_dir, memory=memory,
        starts_log=f"{plan.exp_dir}/{TRIAL_STARTS}" if plan.local else None,
    )
    # Tune refuses an all-zero request; a token of memory lets the driver reserve no CPU.
    return tune.with_resources(fn, tune.PlacementGroupFactory(
        [{"CPU": plan.settings.trial_driver_cpus, "memory": TRIAL_DRIVER_MEMORY}]))


# ------------------------------------------------------------------------------ run
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
    import ray
    from ray import tune

    from cnn_ray.train.launch import check_cluster_fits, prepare_data
    from cnn_ray.tune.results import summarize_sweep

    if settings is None:
        settings = settings_from(SweepSettings, dict(
            name=name, num_samples=num_samples, metric=metric, mode=mode,
            workers_per_trial=workers_per_trial, max_concurrent_trials=max_concurrent_trials),
            "sweep")
    plan = SweepPlan(base_config, search_space, settings,
                     settings_from(SchedulerSettings, scheduler, "scheduler"),
                     settings_from(SearcherSettings, searcher, "searcher"), points)
    restoring = _decide_resume(plan, resume)

    if not ray.is_initialized():
        ray.init()
    check_cluster_fits(plan.base)
    concurrency = fit_concurrency(plan, ray.cluster_resources())
    prepared = prepare_data(plan.base)  # once, on the driver; no-op when already prepared
    trainable = make_trainable(plan, prepared)
    if plan.local:
        Path(plan.exp_dir).mkdir(parents=True, exist_ok=True)
        (Path(plan.exp_dir) / SPEC_FILE).write_text(json.dumps(plan.spec(), indent=1))

    t0 = time.time()
    if restoring:
        print(f"[cnn_ray] resuming sweep {plan.exp_dir}", flush=True)
        tuner = tune.Tuner.restore(plan.exp_dir, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(plan),
            tune_config=tune.TuneConfig(
                metric=settings.metric, mode=settings.mode, scheduler=build_scheduler(plan),
                search_alg=build_search_alg(plan, concurrency),
                num_samples=1 if plan.points is not None else plan.num_trials,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=plan.name, storage_path=plan.storage, verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=[ReleaseStoppedTrials(), *(tune_callbacks or [])],
            ),
        )
    grid = tuner.fit()
    wall = time.time() - t0
    wait_for_release()
    unfinished, not_started = unfinished_trials(plan, grid)
    if unfinished or not_started:
        print(f"[cnn_ray] sweep interrupted: {len(unfinished)} trial(s) unfinished, "
              f"{not_started} not started; its "
              f"state is saved in {plan.exp_dir}: run the same command again (or with "
              "--resume) to continue without re-running finished trials", flush=True)
    return summarize_sweep(plan, grid, wall_seconds=wall, output_dir=output_dir,
                           concurrency=concurrency, resumed=restoring, unfinished=unfinished,
                           not_started=not_started)


def unfinished_trials(plan: SweepPlan, grid) -> tuple[list[str], int]:
    """(ids of trials that did not end, number of trials never started), read from the saved
    experiment state: after an interruption (Ctrl+C / SIGUSR1 / SIGTERM) Tune saves the
    state with the running trials still RUNNING, then marks them TERMINATED in memory."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(plan.exp_dir).trials
    except Exception:  # noqa: BLE001 (remote storage, or no state): what Tune returned
        trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
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


# ------------------------------------------------------------------------------ release
def release_orphaned_placement_groups() -> list[str]:
    """Remove this job's placement groups whose creating actor has died; returns their ids.

    Why: when a scheduler stops a trial, Tune ends the trial's actor; the trial's Train
    controller (an actor it owns) dies with it, but the placement group holding the Train
    workers' CPUs belongs to the *job* and stays reserved until the driver exits. Train's own
    ``PlacementGroupCleaner`` removes it only through the State API, which needs the dashboard
    and a single Ray instance on the machine; without them the CPUs leak and later trials
    wait forever for workers. A placement group that is not detached, was created by an actor
    of this job, and whose creator is dead can never be used again, so removing it is safe.

    Uses Ray's GCS table (``ray._private.state``; the public ``placement_group_table`` omits
    the creator). Best effort: returns ``[]`` if that table cannot be read.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        from ray._private.state import state as global_state
        from ray.core.generated import gcs_pb2

        rows = [gcs_pb2.PlacementGroupTableData.FromString(b)
                for b in global_state._connect_and_get_accessor().get_placement_group_table()]
        removed_state = gcs_pb2.PlacementGroupTableData.REMOVED
    except Exception as exc:  # noqa: BLE001 (private API: degrade, never fail a sweep)
        print(f"[cnn_ray] warning: cannot read the placement group table ({exc!r}); stopped "
              "trials may keep their workers' CPUs until the driver exits", flush=True)
        return []
    job = ray.get_runtime_context().get_job_id()
    nil = ray.ActorID.nil().binary()
    removed = []
    for info in rows:
        if (info.state == removed_state or info.is_detached or not info.creator_actor_dead
                or info.creator_actor_id in (b"", nil) or info.creator_job_id.hex() != job):
            continue
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(info.placement_group_id)))
            removed.append(info.placement_group_id.hex())
        except Exception:  # noqa: BLE001 (already removed in between)
            pass
    return removed


class ReleaseStoppedTrials(Callback):
    """Tune callback: once a second, release the Train workers of stopped trials
    (:func:`release_orphaned_placement_groups`) so the next trials can start."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self._next = 0.0

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            release_orphaned_placement_groups()


def wait_for_release(timeout: float = 30.0) -> bool:
    """Wait until every CPU is available again and no placement group is alive.

    A stopped trial's Train workers are released asynchronously (its controller dies with the
    trial actor; Train's detached ``PlacementGroupCleaner`` polls once a second). Returns
    whether everything was released within ``timeout`` seconds.
    """
    import ray

    deadline = time.time() + timeout
    while True:
        release_orphaned_placement_groups()
        if resources_released():
            return True
        if time.time() > deadline:
            print("[cnn_ray] warning: resources still reserved after the sweep: "
                  f"{ray.available_resources().get('CPU')} of {ray.cluster_resources().get('CPU')} "
                  "CPUs available", flush=True)
            return False
        time.sleep(0.5)


def resources_released() -> bool:
    """True when all CPUs are available and every placement group is removed."""
    import ray
    from ray.util import placement_group_table

    total = ray.cluster_resources().get("CPU", 0.0)
    free = ray.available_resources().get("CPU", 0.0)
    live = [pg for pg in placement_group_table().values() if pg.get("state") != "REMOVED"]
    return abs(total - free) < 1e-6 and not live
