"""Sweeps: Ray Tune trials over the same ``TorchTrainer`` as ``jobs/train.py``.

    from cnn_ray.tune import run_sweep
    result = run_sweep(base_cfg, {"optim.lr": {"loguniform": [1e-3, 1.0]},
                                  "model": {"family": {"resnet9": {"model.width_mult":
                                                                   {"choice": [0.5, 1.0]}},
                                                       "simple_cnn": {}}}},
                       num_samples=16, scheduler={"kind": "asha", "max_t": 8})

* :mod:`cnn_ray.tune.space`: search spaces over dotted config keys, the conditional
  architecture block; :mod:`cnn_ray.tune.space_parse`: their validation by key name (no Ray).
* :mod:`cnn_ray.tune.settings`: what a sweep is asked to do (:class:`SweepSettings`,
  :class:`SchedulerSettings`, :class:`SearcherSettings`; no Ray).
* :mod:`cnn_ray.tune.plan`: the resource plan, decided before Ray runs (:class:`SweepPlan`,
  :func:`~cnn_ray.tune.plan.fit_concurrency`; the sweep directory's file names).
* :mod:`cnn_ray.tune.trial`: the trial function (one ``TorchTrainer`` per trial).
* :mod:`cnn_ray.tune.schedulers`: Tune's scheduler (a resumable ASHA) and search algorithm.
* :mod:`cnn_ray.tune.sweep`: :func:`run_sweep` and the resume decision.
* :mod:`cnn_ray.tune.release`: releasing the Train workers of stopped trials.
* :mod:`cnn_ray.tune.results`: trial table (CSV), learning curves (PNG), best config (YAML).
* :mod:`cnn_ray.tune.jobs`: the sweep file (YAML) and the ``tune`` command.
* :mod:`cnn_ray.tune.replay`: a finished FIFO sweep's curves replayed through ASHA settings
  (``jobs/replay_sweep.py``): predicted savings, and the bound with a perfect predictor.
"""

from typing import Any

# The exports are imported on first use (PEP 562), so the Ray-free modules of this package
# (space, space_parse, settings, replay's loader) can be imported without loading Ray.
_EXPORTS = {
    "run_sweep": "cnn_ray.tune.sweep", "SweepResult": "cnn_ray.tune.results",
    "TrialSummary": "cnn_ray.tune.results", "SearchSpace": "cnn_ray.tune.space",
    "trial_config": "cnn_ray.tune.space", "parse_space": "cnn_ray.tune.space_parse",
    "SweepSettings": "cnn_ray.tune.settings", "SchedulerSettings": "cnn_ray.tune.settings",
    "SearcherSettings": "cnn_ray.tune.settings", "resources_released": "cnn_ray.tune.release",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cnn_ray.tune' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
