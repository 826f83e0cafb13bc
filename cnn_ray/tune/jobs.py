"""The sweep file and the ``tune`` command (``jobs/tune.py``, ``cnn-ray tune``).

A sweep file (YAML) has five sections; unknown keys anywhere are errors naming the key::

    base: ../configs/cifar10.yaml        # a recipe (path relative to this file) or a mapping
    space:                               # dotted config keys -> distributions (cnn_ray.tune.space)
      optim.lr: {loguniform: [0.01, 1.0]}
      model:
        family:
          resnet9: {model.width_mult: {choice: [0.5, 1.0]}}
          simple_cnn: {}
    sweep:     {name: cifar10_sweep, num_samples: 16, metric: val_top1, mode: max,
                workers_per_trial: 1, max_concurrent_trials: null, max_failures: 0}
    scheduler: {kind: asha, grace_period: 1, reduction_factor: 3}   # max_t: base optim.epochs
                                         # kind: asha, asha_promotion, fifo, median, hyperband
    searcher:  {kind: random, seed: 0}

Overrides ``a.b=value`` (:func:`cnn_ray.config_io.apply_overrides`, the same parser as the
command line's) apply to the sweep file after ``base`` is read in, e.g.
``base.run.storage_path=/x``, ``sweep.num_samples=4``, ``scheduler.kind=fifo`` or
``space.optim.lr={loguniform: [0.001, 0.1]}`` (a dotted space key is matched as written, so
``space.optim.lr.loguniform=[0.001, 0.1]`` edits ``space["optim.lr"]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cnn_ray.config import ConfigError, TrainConfig, format_validation_error
from cnn_ray.config_io import apply_overrides, read_yaml
from cnn_ray.tune.settings import SchedulerSettings, SearcherSettings, SweepSettings


class SweepFile(BaseModel):
    """A whole sweep file, validated (``extra="forbid"``: typos are named errors)."""

    model_config = ConfigDict(extra="forbid")

    base: TrainConfig = Field(..., description="the configuration every trial starts from: "
                              "a recipe path (relative to the sweep file) or a mapping",
                              json_schema_extra={"doc_type": "str | mapping"})
    space: dict[str, Any] = Field(..., description="config keys -> distributions or "
                                  "constants (cnn_ray.tune.space; docs/config.md, Search "
                                  "space)", json_schema_extra={"doc_type": "mapping"})
    sweep: SweepSettings = Field(default_factory=SweepSettings, description="size, metric "
                                 "and resources per trial")
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings,
                                         description="the trial scheduler")
    searcher: SearcherSettings = Field(default_factory=SearcherSettings,
                                       description="how configurations are drawn")


def read_sweep_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sweep file and inline ``base`` when it is a path (relative to the sweep file).

    Raises:
        ConfigError: the file or the recipe is missing or not a YAML mapping.
    """
    raw = read_yaml(path)
    base = raw.get("base")
    if isinstance(base, str):
        p = Path(os.path.expanduser(base))
        if not p.is_absolute():
            p = Path(path).resolve().parent / p
        if not p.is_file():
            raise ConfigError(f"{path}: base: recipe not found: {base} (looked at {p})")
        raw["base"] = read_yaml(p)
    return raw


def load_sweep_file(path: str | os.PathLike, overrides: Sequence[str] = (), *,
                    check_paths: bool = True) -> SweepFile:
    """Sweep file + overrides -> validated :class:`SweepFile` (the space is checked later,
    against the base, by :func:`cnn_ray.tune.space_parse.parse_space`).

    Raises:
        ConfigError: naming each bad key as a dotted path (``base.optim.lr``,
            ``sweep.num_samples``, ``scheduler.kind``).
    """
    raw = apply_overrides(read_sweep_file(path), overrides)
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    if check_paths:
        spec.base.check_paths(f"{path}: base")
    return spec


def tune_main(config_path: str, overrides: Sequence[str] = (), *, resume: bool = False) -> int:
    """``cnn-ray tune --config SWEEP.yaml [--resume] [key=value ...]``.

    A sweep is restored only when asked: with ``--resume`` the saved sweep must exist (and be
    the same sweep); without it, a sweep name that exists is a :class:`ConfigError` (resume it
    or choose another name). Restoring unpickles Tune's files from the sweep's storage, so
    only resume sweeps from storage you trust. Returns 0 when the sweep finished and at least
    one trial reported, else 1 (interrupted: run it again with ``--resume`` to continue).
    Config problems raise :class:`ConfigError` (exit status 2 in the CLI).
    """
    from cnn_ray.tune.sweep import run_sweep

    spec = load_sweep_file(config_path, overrides)
    # run_sweep validates everything, then connects to RAY_ADDRESS or starts local Ray.
    result = run_sweep(spec.base, spec.space, settings=spec.sweep, scheduler=spec.scheduler,
                       searcher=spec.searcher, resume=bool(resume))
    return 0 if result.best is not None and not result.interrupted else 1
