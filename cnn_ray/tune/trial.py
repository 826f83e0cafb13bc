"""One sweep trial: the Tune function trainable that trains one sampled configuration.

Each trial is a Tune *function* trainable (``Tuner(trainer)`` does not work with Train V2): it
rebuilds the ``TrainConfig`` from the base plus its sampled values (validated, so a bad
combination is a :class:`~cnn_ray.config.ConfigError` naming the key), then trains it one of
two ways:

- **in the trial's own process** (``sweep.in_trial``, one worker, ``data.cache: memory``:
  :func:`cnn_ray.train.launch.trains_in_trial`): the Ray Train worker's training function runs
  right here with a Tune session (:func:`cnn_ray.train.worker.train_in_tune_trial`): same
  config, data (the sweep's arrays in the object store), model, loop and checkpoint contents;
  each epoch is one ``ray.tune.report``, and checkpoints are written into the trial's run dir
  as a Train run's are (a restarted trial resumes from them). No Train controller or worker
  actor is started, and Tune reuses the trial processes (torch stays imported);
- otherwise ``build_trainer(cfg, prepared, name=<trial id>,
  callbacks=[TuneReportCallback()]).fit()``: each epoch's ``ray.train.report`` is one Tune
  result.

Either way the run files (config, metrics.jsonl, events.jsonl) and the checkpoints are in
``<sweep dir>/train_runs/<trial id>``, so a restored sweep's trial finds its checkpoints.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from cnn_ray import io
from cnn_ray.tune.plan import TRIAL_STARTS, SweepPlan
from cnn_ray.tune.space import POINT_KEY, trial_config

TRIAL_DRIVER_MEMORY = 2**20          # bytes: the trial function's logical reservation


def _same_arrays(cfg, base: dict) -> bool:
    """Whether a trial of ``cfg`` can train on the sweep's memory-cache arrays of ``base``: the
    same stored side and validation transform (the validation rows are stored transformed)."""
    from cnn_ray.config import TrainConfig
    from cnn_ray.data.preprocess import EvalTransform

    return EvalTransform.of(cfg) == EvalTransform.of(TrainConfig.from_dict(base, check_paths=False))


def run_trial(config: dict, *, base: dict, prepared, runs_dir: str, starts_log: Optional[str],
              memory: Optional[list] = None, in_trial: bool = True) -> None:
    """The Tune function trainable: one training run for one sampled configuration.

    Records its start (``trial_starts.jsonl``: ``event`` ``start`` with the trial id, unix time
    and pid; then ``trainer_built`` once the data is set up), rebuilds and validates the config
    (``ConfigError`` naming the key), writes the run files and trains: in this process when
    ``in_trial`` and :func:`~cnn_ray.train.launch.trains_in_trial` allow it, else through a
    ``TorchTrainer`` whose reports reach Tune through ``TuneReportCallback``.
    """
    import ray.tune
    started = time.time()  # before the imports: a fresh trial actor pays for them too

    from cnn_ray.runs import run_dir
    from cnn_ray.train.launch import (build_trainer, raise_reported_error, trains_in_trial,
                                      worker_inputs, write_run_files)

    trial_id = ray.tune.get_context().get_trial_id()
    if starts_log:
        _append_jsonl(starts_log, {"event": "start", "trial_id": trial_id, "time": started,
                                   "pid": os.getpid()})
    cfg = trial_config(base, config, source=f"trial {trial_id}", name=trial_id,
                       storage_path=runs_dir)
    write_run_files(cfg, run_dir(cfg), prepared)
    shared = None
    if memory and cfg.data.cache == "memory" and _same_arrays(cfg, base):
        shared = memory[0]  # the sweep's arrays (same prepared shards, same eval transform)
    if in_trial and trains_in_trial(cfg):
        from cnn_ray.train.worker import train_in_tune_trial

        inputs, _, _ = worker_inputs(cfg, prepared, name=trial_id, memory=shared)
        _built(starts_log, trial_id)
        train_in_tune_trial(inputs.to_dict())
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = build_trainer(cfg, prepared, name=trial_id, callbacks=[TuneReportCallback()],
                            memory=shared)
    _built(starts_log, trial_id)
    fitted = time.time()
    trainer.fit()
    raise_reported_error(run_dir(cfg), fitted)  # e.g. optim.budget_s too small: the trial errors


def _built(starts_log: Optional[str], trial_id: str) -> None:
    """Start-up phase mark: the trial's data is set up (the trainer, or the in-trial inputs)."""
    if starts_log:
        _append_jsonl(starts_log, {"event": "trainer_built", "trial_id": trial_id,
                                   "time": time.time()})


def trial_dirname(trial) -> str:
    """Tune trial folder = the trial id (short, and the same as its Train run's name)."""
    return trial.trial_id


def _append_jsonl(path: str, record: dict) -> None:
    """Add ``record`` as one JSON line to the file ``path`` (a local path or a storage URI)."""
    io.append_jsonl(os.path.dirname(path), os.path.basename(path), record)


def param_space(plan: SweepPlan) -> dict:
    """Tune's ``param_space``: ``{"point": grid_search([config, ...])}`` for pre-drawn configs.

    Each trial's config is ``{"point": {dotted key: value}}``; a grid over whole
    configurations runs exactly the listed ones, in order (``points_to_evaluate`` would need
    every key in the space and would sample the keys a family leaves out): the start order
    ``plan.run_points`` (``sweep.order``).
    """
    from ray import tune

    if plan.points is None:
        return {}
    return {POINT_KEY: tune.grid_search([dict(p) for p in plan.run_points])}


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
        in_trial=plan.settings.in_trial,
    )
    return tune.with_resources(fn, lambda config: trial_bundle(plan, config))


def trial_bundle(plan: SweepPlan, config: dict):
    """The placement group of one trial's own process: the worker's CPUs (and GPU) when it
    trains in the trial (:func:`~cnn_ray.train.launch.trains_in_trial`), else the driver's
    ``sweep.trial_driver_cpus`` -- the ``TorchTrainer`` reserves its workers itself. Tune
    refuses an all-zero request; a token of memory lets a driver reserve no CPU."""
    from ray import tune

    from cnn_ray.train.launch import trains_in_trial

    bundle = {"CPU": plan.settings.trial_driver_cpus, "memory": TRIAL_DRIVER_MEMORY}
    cfg = trial_config(plan.base.to_dict(), config, source="trial resources") if config \
        else plan.base
    if plan.settings.in_trial and trains_in_trial(cfg):
        bundle["CPU"] = cfg.scaling.cpus_per_worker
        if cfg.scaling.use_gpu:
            bundle["GPU"] = 1
    return tune.PlacementGroupFactory([bundle])
