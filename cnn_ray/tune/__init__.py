"""Sweeps: Ray Tune trials over the same ``TorchTrainer`` as ``jobs/train.py``.

    from cnn_ray.tune import run_sweep
    result = run_sweep(base_cfg, {"optim.lr": {"loguniform": [1e-3, 1.0]},
                                  "model": {"family": {"resnet9": {"model.width_mult":
                                                                   {"choice": [0.5, 1.0]}},
                                                       "simple_cnn": {}}}},
                       num_samples=16, scheduler={"kind": "asha", "max_t": 8})

* :mod:`cnn_ray.tune.space`: search spaces over dotted config keys, the conditional
  architecture block, validation by key name (no Ray).
* :mod:`cnn_ray.tune.sweep`: :func:`run_sweep`, the trial function, schedulers, searchers,
  resources, resume.
* :mod:`cnn_ray.tune.results`: trial table (CSV), learning curves (PNG), best config (YAML).
* :mod:`cnn_ray.tune.jobs`: the sweep file (YAML) and the ``tune`` command.
* :mod:`cnn_ray.tune.replay`: a finished FIFO sweep's curves replayed through ASHA settings
  (``jobs/replay_sweep.py``): predicted savings, and the bound with a perfect predictor.
"""

from cnn_ray.tune.results import SweepResult, TrialSummary
from cnn_ray.tune.space import SearchSpace, parse_space, trial_config
from cnn_ray.tune.sweep import (SchedulerSettings, SearcherSettings, SweepSettings, run_sweep,
                                resources_released)

__all__ = ["run_sweep", "SweepResult", "TrialSummary", "SearchSpace", "parse_space",
           "trial_config", "SweepSettings", "SchedulerSettings", "SearcherSettings",
           "resources_released"]
