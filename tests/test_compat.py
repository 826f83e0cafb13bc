"""cnn_ray.compat: every private Ray / torch API cnn_ray relies on is still there.

After a Ray or torch upgrade this file is the first to fail, naming the wrapper whose private
API went missing. The wrappers are also run on real objects where that is cheap (no Ray
instance); the two that need a running Ray are marked ``ray``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cnn_ray import compat


def test_every_private_api_is_present():
    missing = compat.check()
    assert missing == [], (
        "the installed Ray/torch lack private APIs cnn_ray.compat wraps (update the wrapper and "
        "the version range in pyproject.toml):\n  " + "\n  ".join(missing))


def test_check_names_a_missing_api(monkeypatch):
    """A check that fails is reported by its wrapper's name, with the reason."""
    def gone():
        raise AttributeError("no attribute '_rungs'")

    monkeypatch.setattr(compat, "_checks", lambda: {"asha_rungs": gone, "fine": lambda: None})
    assert compat.check() == ["asha_rungs: AttributeError: no attribute '_rungs'"]


class _Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def _asha():
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", metric="val_loss", mode="min", max_t=3,
                         grace_period=1, reduction_factor=2)


def test_asha_rungs_round_trip():
    """Values recorded by one ASHA, written into a fresh one through the wrapper, decide the
    fresh one's next result (what ResumableASHA does after a restore)."""
    first = _asha()
    for trial_id, loss in [("a", 2.0), ("b", 1.0)]:
        first.on_trial_add(None, _Trial(trial_id))
        action = first.on_trial_result(None, _Trial(trial_id), {"epoch": 1, "val_loss": loss})
        assert action == "CONTINUE"
    rungs = compat.asha_rungs(first)
    recorded = {m: dict(rec) for m, rec in rungs[0]}
    assert recorded[1] == {"a": -2.0, "b": -1.0}  # signed for mode=min

    fresh = _asha()
    for (milestone, rec), (_, saved) in zip(compat.asha_rungs(fresh)[0], rungs[0]):
        rec.update(saved)  # the scheduler's own dicts
    fresh.on_trial_add(None, _Trial("c"))
    assert fresh.on_trial_result(None, _Trial("c"), {"epoch": 1, "val_loss": 3.0}) == "STOP"


def test_experiment_trials():
    trials = [SimpleNamespace(trial_id="t1")]
    assert compat.experiment_trials(SimpleNamespace(_experiment_analysis=SimpleNamespace(
        trials=trials))) == trials
    assert compat.experiment_trials(SimpleNamespace()) == []


def test_set_scheduler_last_lr():
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    for group in opt.param_groups:
        group["lr"] = 0.0123  # set by hand, e.g. a restored warm-up
    compat.set_scheduler_last_lr(sched)
    assert sched.get_last_lr() == [0.0123]


def test_data_wrappers_without_a_running_ray():
    import ray.data
    import ray.train
    from ray.data import ExecutionOptions

    assert compat.data_execution_index(ray.data.DataContext.get_current()) >= 0
    assert compat.data_execution_index(SimpleNamespace()) == 0
    options = ExecutionOptions(preserve_order=True)
    resolved = compat.resolve_execution_options(
        ray.train.DataConfig(execution_options={"train": options}), "train")
    assert isinstance(resolved, ExecutionOptions) and resolved.preserve_order
    assert resolved is not options  # a copy: callers may change it


@pytest.mark.ray
def test_ray_core_wrappers(ray_session):
    import os

    from ray.util.placement_group import placement_group, remove_placement_group

    assert os.path.isdir(compat.session_dir())
    assert compat.cluster_max_resources() is None  # local Ray: no autoscaler config, static
    pg = placement_group([{"CPU": 0.01}])
    ray_session.get(pg.ready(), timeout=60)
    try:
        rows, removed = compat.placement_group_rows()
        mine = [r for r in rows if r.placement_group_id == pg.id.binary()]
        assert len(mine) == 1 and mine[0].state != removed and not mine[0].is_detached
    finally:
        remove_placement_group(pg)
