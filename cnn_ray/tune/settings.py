"""What a sweep is asked to do: its size and metric, the trial scheduler, the searcher.

Typed settings (pydantic, ``extra="forbid"``: a typo is an error naming the key), read from a
sweep file's ``sweep``, ``scheduler`` and ``searcher`` sections (:mod:`cnn_ray.tune.jobs`) or
passed to :func:`cnn_ray.tune.run_sweep`. No Ray here.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cnn_ray.config import ConfigError, format_validation_error

# Metrics every epoch's report carries (cnn_ray.train.worker); a sweep optimises one of them.
KNOWN_METRICS = ("val_top1", "val_top5", "val_loss", "best_val_top1", "train_top1", "train_top5",
                 "train_loss")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SweepSettings(_Strict):
    """How many trials, what to optimise, and the resources per trial."""

    name: Optional[str] = Field(None, description="Tune experiment name; default <base run.name>_sweep")
    num_samples: int = Field(8, ge=1, description="random/grid: configurations drawn (each "
                             "crossed with every grid value); optuna: trials")
    metric: str = Field("val_top1", description="the reported metric to optimise: one of "
                        + ", ".join(KNOWN_METRICS))
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    workers_per_trial: Optional[int] = Field(None, ge=1, description="Train workers per trial; "
                                             "default base scaling.num_workers")
    max_concurrent_trials: Optional[int] = Field(None, ge=1, description="default: as many as "
                                                 "the cluster's CPUs (and GPUs) fit")
    max_failures: int = Field(0, ge=0, description="times Tune retries an errored trial")
    trial_driver_cpus: float = Field(0.0, ge=0.0, le=1.0, description="CPU the trial's own "
                                     "function reserves (it only waits on its Train run)")
    in_trial: bool = Field(True, description="one-worker trials on the memory cache train in "
                           "the Tune trial's own process (no Train controller or worker actor "
                           "to start; trial processes reused); false: every trial through a "
                           "TorchTrainer")
    order: Literal["as_drawn", "longest_first"] = Field(
        "as_drawn", description="random/grid: the order trials start in; longest_first: by "
        "decreasing optim.epochs / measured images/s of each network (Graham's LPT rule: the "
        "sweep does not end on one long trial with idle slots; cnn_ray.tune.order)")

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
    resumes from its checkpoint); ``asha_promotion``: ASHA as its paper runs it (trials pause at
    each rung and resume once in the rung's top ``1/reduction_factor``;
    :mod:`cnn_ray.tune.promotion`), random/grid searchers only."""

    kind: Literal["asha", "asha_promotion", "fifo", "median", "hyperband"] = Field(
        "asha", description="the scheduler (see above)")
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

    kind: Literal["random", "grid", "optuna"] = Field("random", description="the searcher "
                                                      "(see above)")
    seed: int = Field(0, ge=0, description="seed of the random/grid draws and of Optuna's "
                      "TPE sampler")
    max_concurrent: Optional[int] = Field(None, ge=1, description="optuna: trials suggested "
                                          "before results come back; default the trial concurrency")
    n_startup_trials: Optional[int] = Field(None, ge=1, description="optuna: random trials "
                                            "before TPE takes over (Optuna's default 10)")


def settings_from(cls, value, field: str):
    """A settings object of class ``cls`` from an instance, a dict, a kind string or None
    (defaults).

    Raises:
        ConfigError: naming each bad key as ``<field>.<key>``.
    """
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
