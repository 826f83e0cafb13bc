"""The resource plan of a sweep: everything decided before Ray runs anything.

:class:`SweepPlan` validates the space, draws the configurations of a random/grid search and
checks every one of them, names the sweep directory, and says what one trial holds;
:func:`fit_concurrency` says how many trials fit a cluster at once. No Ray calls here.

The sweep directory ``<storage>/<sweep name>/`` holds:

* ``train_runs/<trial id>/``: each trial's Train run (:data:`TRAIN_RUNS`);
* ``trial_starts.jsonl``: one line per start of a trial function (:data:`TRIAL_STARTS`);
* ``sweep_spec.json``: what the sweep was asked to do, checked on resume (:data:`SPEC_FILE`);
* ``asha_rungs.json``: ASHA's recorded rung values (:data:`ASHA_STATE`).
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.runs import storage_root
from cnn_ray.tune.settings import SchedulerSettings, SearcherSettings, SweepSettings
from cnn_ray.tune.space import SearchSpace, validate_variants
from cnn_ray.tune.space_parse import parse_space

TRAIN_RUNS = "train_runs"           # <sweep dir>/train_runs/<trial id>: each trial's Train run
TRIAL_STARTS = "trial_starts.jsonl"  # one line per start of a trial function
SPEC_FILE = "sweep_spec.json"        # what the sweep was asked to do (resume checks it)
ASHA_STATE = "asha_rungs.json"       # ASHA's recorded rung values (Tune does not save them)


def check_budgets(base: TrainConfig, scheduler: SchedulerSettings, space_keys) -> None:
    """``scheduler.max_t`` and the base's ``optim.epochs`` must agree when trials are stopped by
    epoch (issue 13): a learning-rate schedule is planned over ``optim.epochs``, so a
    ``max_t`` below it cuts every surviving trial off before its schedule ends (it never
    anneals), and one above it promises epochs no trial runs. ``max_t`` left out takes
    ``optim.epochs``. A space that searches ``optim.epochs`` itself is not checked here (each
    trial's own schedule; ``max_t`` caps them).

    Raises:
        ConfigError: naming both keys and their values.
    """
    if scheduler.kind == "fifo" or scheduler.time_attr != "epoch" or "optim.epochs" in space_keys:
        return
    if scheduler.max_t != base.optim.epochs:
        raise ConfigError(
            f"scheduler.max_t ({scheduler.max_t}) disagrees with base optim.epochs "
            f"({base.optim.epochs}): trials are stopped by epoch, and the learning-rate schedule "
            f"of each trial spans optim.epochs; leave scheduler.max_t out (it defaults to "
            f"optim.epochs) or set the two equal")


def check_time_budget(base: TrainConfig, scheduler: SchedulerSettings, space_keys) -> None:
    """A sweep with ``optim.budget_s`` (in the base: the same budget per trial; in the space:
    each trial its own, searched like any key) runs every trial to its budget: FIFO only.
    ASHA, median stopping and HyperBand compare trials at epochs, and each trial derives its
    own epoch count from its measured speed, so a rung would compare trials at different
    shares of their schedules (and ``scheduler.max_t`` could not match ``optim.epochs``).

    Raises:
        ConfigError: naming ``optim.budget_s`` and ``scheduler.kind``.
    """
    if scheduler.kind == "fifo":
        return
    where = ("base optim.budget_s" if base.optim.budget_s is not None
             else "optim.budget_s in the space" if "optim.budget_s" in space_keys else None)
    if where:
        raise ConfigError(
            f"{where}: every trial trains to its time budget, and its epoch count is derived "
            f"from its own speed, but scheduler.kind={scheduler.kind} stops trials at epochs: "
            "use scheduler.kind=fifo with a budget, or optim.epochs without one")


def asha_rungs(scheduler: SchedulerSettings) -> list[int]:
    """The epochs at which Tune's ASHA compares trials: ``grace_period x reduction_factor^k``
    for ``k < int(log(max_t / grace_period) / log(reduction_factor) + 1)`` (as
    ``ray.tune.schedulers.async_hyperband._Bracket`` builds its rungs), ascending."""
    import math

    g, rf, top = scheduler.grace_period, scheduler.reduction_factor, scheduler.max_t
    n = int(math.log(top / g) / math.log(rf) + 1)
    return sorted(int(g * rf ** k) for k in range(n))


def with_rung_cycles(base: TrainConfig, scheduler: SchedulerSettings, space_keys) -> TrainConfig:
    """``base`` with ``optim.anneal_epochs`` = the ASHA rungs below ``optim.epochs`` when its
    schedule is ``rung_anneal`` and they are left out (a FIFO sweep: unchanged, one cycle).
    Raises ConfigError when the space searches ``optim.epochs`` with such a schedule (the
    rungs would not fit every trial's budget)."""
    o = base.optim
    if o.schedule != "rung_anneal" or o.anneal_epochs is not None \
            or scheduler.kind not in ("asha", "asha_promotion") \
            or scheduler.time_attr != "epoch":
        return base
    if "optim.epochs" in space_keys:
        raise ConfigError("optim.schedule=rung_anneal with optim.anneal_epochs left out takes "
                          "the cycles from the ASHA rungs, which needs one optim.epochs for all "
                          "trials: do not search optim.epochs, or set optim.anneal_epochs")
    raw = base.to_dict()
    raw["optim"]["anneal_epochs"] = [e for e in asha_rungs(scheduler) if e < o.epochs] or None
    return TrainConfig.from_dict(raw, source="base (optim.anneal_epochs from the ASHA rungs)",
                                 check_paths=False)


class SweepPlan:
    """Everything decided before Ray runs anything (validated; no Ray calls)."""

    def __init__(self, base: TrainConfig, space_raw: dict, settings: SweepSettings,
                 scheduler: SchedulerSettings, searcher: SearcherSettings,
                 points: Optional[Sequence[dict]] = None):
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
        check_time_budget(base, scheduler, self.space.keys())
        check_budgets(base, scheduler, self.space.keys())
        base = with_rung_cycles(base, scheduler, self.space.keys())
        self.base = base
        if scheduler.grace_period > scheduler.max_t:
            raise ConfigError(f"scheduler.grace_period ({scheduler.grace_period}) must be <= "
                              f"scheduler.max_t ({scheduler.max_t})")
        self.points: Optional[list[dict]] = None
        self.configs: list[TrainConfig] = []  # points[i]'s validated config
        self.run_points: Optional[list[dict]] = None  # points in start order (sweep.order)
        if points is not None:
            self.points = [dict(p) for p in points]
        elif searcher.kind in ("random", "grid"):
            self.points = self.space.variants(settings.num_samples, searcher.seed,
                                              enumerate_choices=searcher.kind == "grid")
        if self.points is not None:
            if not self.points:
                raise ConfigError("sweep: no configurations to run")
            self.configs = validate_variants(base, self.points)  # before anything runs
            self.run_points = [dict(p) for p in self.points]
        elif scheduler.kind == "asha_promotion":
            raise ConfigError(f"scheduler.kind=asha_promotion draws the next configuration only "
                              f"when no paused trial can be promoted, which needs drawn "
                              f"configurations (searcher random or grid, or given points); "
                              f"searcher {searcher.kind} suggests them one at a time: use "
                              "scheduler.kind=asha")
        elif settings.order != "as_drawn":
            raise ConfigError(f"sweep.order={settings.order} orders drawn configurations "
                              f"(searcher random or grid, or given points); searcher "
                              f"{searcher.kind} suggests them one at a time: use "
                              "sweep.order=as_drawn")

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
    cap = max(plan.num_trials, plan.settings.max_concurrent_trials or 0)  # an unbounded cluster
    while fits < cap and plan.fits(fits + 1, cluster):
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

