"""sweep.order (cnn_ray.tune.order): the start order of a sweep's pre-drawn configurations."""

from __future__ import annotations

import pytest

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.tune.order import (longest_first, measured_rate, order_points, speed_key,
                                trial_costs)
from cnn_ray.tune.settings import SweepSettings, settings_from
from cnn_ray.tune.space import validate_variants


def _base(tmp_path, epochs: int = 4) -> TrainConfig:
    return TrainConfig.from_dict({
        "data": {"train": str(tmp_path), "image_size": 32},
        "model": {"name": "simple_cnn"},
        "optim": {"batch_size": 16, "epochs": epochs},
        "scaling": {"num_workers": 1, "torch_threads": 1},
    }, check_paths=False)


POINTS = [{"model.name": "simple_cnn", "optim.lr": 0.1},
          {"model.name": "resnet9", "optim.lr": 0.1},
          {"model.name": "simple_cnn", "optim.lr": 0.2},
          {"model.name": "resnet9", "optim.lr": 0.3, "optim.epochs": 2}]
RATES = {"simple_cnn": 1000.0, "resnet9": 100.0}  # images/s


def test_costs_measure_each_network_once_and_scale_with_epochs(tmp_path):
    configs = validate_variants(_base(tmp_path), POINTS)
    calls = []

    def rate(cfg):
        calls.append(cfg.model.name)
        return RATES[cfg.model.name]

    costs = trial_costs(configs, rate)
    assert costs == pytest.approx([4 / 1000, 4 / 100, 4 / 1000, 2 / 100])
    assert sorted(calls) == ["resnet9", "simple_cnn"]  # lr and epochs do not change the speed
    assert speed_key(configs[0]) == speed_key(configs[2]) != speed_key(configs[1])
    with pytest.raises(ValueError, match="simple_cnn"):
        trial_costs(configs, lambda cfg: 0.0)


def test_longest_first_is_stable_and_as_drawn_unchanged(tmp_path):
    assert longest_first(["a", "b", "c", "d"], [1.0, 3.0, 1.0, 2.0]) == [1, 3, 0, 2]
    configs = validate_variants(_base(tmp_path), POINTS)
    logs = []
    ordered = order_points(POINTS, configs, "longest_first", lambda c: RATES[c.model.name],
                           log=logs.append)
    assert ordered == [POINTS[1], POINTS[3], POINTS[0], POINTS[2]]
    assert "2 network set-up(s)" in logs[0]
    assert order_points(POINTS, configs, "as_drawn") == POINTS
    with pytest.raises(ValueError, match="sweep.order"):
        order_points(POINTS, configs, "shortest_first")


def test_measured_rate_times_the_network_and_restores_threads(tmp_path):
    import torch

    before = torch.get_num_threads()
    cfg = validate_variants(_base(tmp_path), [{"scaling.torch_threads": 1}])[0]
    r = measured_rate(10, steps=1, warmup=0)(cfg)
    assert r > 0 and torch.get_num_threads() == before


def test_order_setting_is_validated():
    assert SweepSettings().order == "as_drawn"
    assert settings_from(SweepSettings, {"order": "longest_first"}, "sweep").order == "longest_first"
    with pytest.raises(ConfigError, match="sweep: order: .*'longest_first'.*cheapest"):
        settings_from(SweepSettings, {"order": "cheapest"}, "sweep")


def test_order_needs_drawn_configurations(tmp_path):
    """sweep.order=longest_first with Optuna (configs suggested one at a time) is a named error,
    not a setting that silently does nothing."""
    from cnn_ray.tune.plan import SweepPlan
    from cnn_ray.tune.settings import SchedulerSettings, SearcherSettings

    space = {"optim.lr": {"loguniform": [0.01, 0.1]}}
    with pytest.raises(ConfigError, match="sweep.order=longest_first.*optuna"):
        SweepPlan(_base(tmp_path), space, SweepSettings(order="longest_first"),
                  SchedulerSettings(kind="fifo"), SearcherSettings(kind="optuna"))
    plan = SweepPlan(_base(tmp_path), space, SweepSettings(num_samples=3, order="longest_first"),
                     SchedulerSettings(kind="fifo"), SearcherSettings(kind="random"))
    assert plan.run_points == plan.points and len(plan.configs) == 3
