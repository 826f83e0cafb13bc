"""Promotion-based ASHA (cnn_ray.tune.promotion) against a fake Tune controller: no Ray started
(the module imports ray.tune, so it is imported inside the tests)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

# Tune's decision and status strings (TrialScheduler.CONTINUE, Trial.PAUSED, ...)
CONTINUE, PAUSE, STOP = "CONTINUE", "PAUSE", "STOP"
Trial = SimpleNamespace(PENDING="PENDING", RUNNING="RUNNING", PAUSED="PAUSED",
                        TERMINATED="TERMINATED")


def promotion_rungs(*args):
    from cnn_ray.tune.promotion import promotion_rungs as rungs

    return rungs(*args)


class FakeTrial:
    def __init__(self, trial_id: str):
        self.trial_id, self.status, self.is_saving = trial_id, Trial.PENDING, False


class FakeController:
    def __init__(self):
        self.trials: list[FakeTrial] = []

    def get_trials(self):
        return list(self.trials)

    def stop_trial(self, trial):
        trial.status = Trial.TERMINATED

    def _mark_trial_to_checkpoint(self, trial):  # Tune's, called by compat.stop_paused_trial
        trial.saved = True


def _sched(total: int, *, rf: float = 4, max_t: int = 8, concurrency: int = 2, state=None,
           mode: str = "max"):
    from cnn_ray.tune.promotion import PromotionASHA

    s = PromotionASHA(max_t=max_t, grace_period=1, reduction_factor=rf, max_concurrent=concurrency,
                      total_trials=total, state_path=state)
    s.set_search_properties("val_top1", mode)
    return s


def _report(s, ctl, trial, epoch, value):
    trial.status = Trial.RUNNING
    action = s.on_trial_result(ctl, trial, {"epoch": epoch, "val_top1": value})
    trial.status = {PAUSE: Trial.PAUSED, STOP: Trial.TERMINATED}.get(action, Trial.RUNNING)
    return action


def test_rungs_are_asha_milestones_below_the_budget():
    assert promotion_rungs(8, 1, 4) == [1, 4]
    assert promotion_rungs(16, 1, 4) == [1, 4]        # 16 is the budget, not a rung
    assert promotion_rungs(27, 1, 3) == [1, 3, 9]
    assert promotion_rungs(8, 2, 2) == [2, 4]
    with pytest.raises(ValueError, match="reduction_factor > 1"):
        promotion_rungs(8, 1, 1)
    with pytest.raises(ValueError, match="max_t >= grace_period"):
        promotion_rungs(2, 4, 2)


def test_trials_pause_until_they_rank_in_the_top_quarter_then_resume():
    ctl, s = FakeController(), _sched(8)
    trials = [FakeTrial(f"t{i}") for i in range(5)]
    ctl.trials += trials
    # three results at rung 1: floor(3 / 4) = 0 promotions allowed -> all pause
    assert [_report(s, ctl, t, 1, v) for t, v in zip(trials, (0.1, 0.4, 0.2))] == [PAUSE] * 3
    assert s.admits_new_trial(["t0", "t1", "t2"])       # paused trials hold no slot
    # the 4th result allows one promotion; the best (t1, paused) gets it, not the reporter
    assert _report(s, ctl, trials[3], 1, 0.3) == PAUSE
    assert s.next_promotion() == "t1"
    assert not s.admits_new_trial([])                    # the free slot goes to the promotion
    chosen = s.choose_trial_to_run(ctl)
    assert chosen is trials[1] and s.promoted[1] == ["t1"] and "t1" not in s.paused
    chosen.status = Trial.PENDING
    assert s.next_promotion() is None and s.admits_new_trial(["t1"])
    # the promoted trial trains on through epochs 2-3 and pauses again at rung 4 (alone there)
    assert _report(s, ctl, trials[1], 2, 0.5) == CONTINUE
    assert _report(s, ctl, trials[1], 3, 0.55) == CONTINUE
    assert _report(s, ctl, trials[1], 4, 0.6) == PAUSE and s.paused["t1"] == 4
    # a 5th result at rung 1 that beats everything: still one promotion (floor(5/4)) -> taken
    assert _report(s, ctl, trials[4], 1, 0.9) == PAUSE
    assert s.next_promotion() is None


def test_a_trial_ranking_in_the_top_share_when_it_reports_continues_at_once():
    ctl, s = FakeController(), _sched(8, rf=2)
    a, b = FakeTrial("a"), FakeTrial("b")
    ctl.trials += [a, b]
    assert _report(s, ctl, a, 1, 0.2) == PAUSE           # floor(1/2) = 0
    assert _report(s, ctl, b, 1, 0.7) == CONTINUE        # floor(2/2) = 1 and b is the best
    assert s.promoted[1] == ["b"] and s.next_promotion() is None
    assert _report(s, ctl, b, 8, 0.8) == STOP            # the budget


def test_decisions_and_statuses_are_tunes():
    from ray.tune.experiment import Trial as TuneTrial
    from ray.tune.schedulers import TrialScheduler

    assert (CONTINUE, PAUSE, STOP) == (TrialScheduler.CONTINUE, TrialScheduler.PAUSE,
                                       TrialScheduler.STOP)
    assert vars(Trial) == {k: getattr(TuneTrial, k) for k in vars(Trial)}


def test_min_mode_promotes_the_lowest():
    ctl, s = FakeController(), _sched(4, rf=2, mode="min")
    a, b = FakeTrial("a"), FakeTrial("b")
    ctl.trials += [a, b]
    assert _report(s, ctl, a, 1, 0.3) == PAUSE
    assert _report(s, ctl, b, 1, 0.9) == PAUSE           # higher loss: a (paused) is promoted
    assert s.next_promotion() == "a"


def test_too_few_trials_still_bring_the_best_to_the_budget_then_the_rest_stop():
    """3 trials, eta 4: floor(3 / 4) = 0 promotions at epoch 1. Once nothing can run, the best
    paused trial of the highest rung that promoted nobody goes on (epoch 1, then alone at
    epoch 4), reaches max_t, and the other paused trials are stopped with their state saved."""
    ctl, s = FakeController(), _sched(3)
    trials = [FakeTrial(f"t{i}") for i in range(3)]
    ctl.trials += trials
    for t, v in zip(trials, (0.1, 0.3, 0.2)):
        _report(s, ctl, t, 1, v)
    assert all(t.status == Trial.PAUSED for t in trials)
    trials[0].is_saving = True                           # a pause still being saved: wait
    assert s.choose_trial_to_run(ctl) is None and trials[1].status == Trial.PAUSED
    trials[0].is_saving = False
    assert s.choose_trial_to_run(ctl) is trials[1] and s.promoted[1] == ["t1"]
    assert _report(s, ctl, trials[1], 4, 0.5) == PAUSE   # alone at epoch 4
    assert s.choose_trial_to_run(ctl) is trials[1] and s.promoted[4] == ["t1"]
    assert _report(s, ctl, trials[1], 8, 0.6) == STOP
    assert s.choose_trial_to_run(ctl) is None
    assert [t.status for t in trials] == [Trial.TERMINATED] * 3
    assert trials[0].saved and trials[2].saved


def test_rungs_survive_a_restore(tmp_path):
    state = str(tmp_path / "asha_rungs.json")
    ctl, s = FakeController(), _sched(8, state=state)
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    ctl.trials += trials
    for t, v in zip(trials, (0.1, 0.4, 0.2, 0.3)):
        _report(s, ctl, t, 1, v)
    s.choose_trial_to_run(ctl)                           # t1 promoted
    restored = _sched(8, state=state)
    restored.on_trial_add(ctl, trials[0])
    assert restored.recorded[1] == s.recorded[1] and restored.promoted[1] == ["t1"]
    assert restored.paused == {"t0": 1, "t2": 1, "t3": 1}
    # a restarted trial that was paused without its promotion is judged again at its next result
    assert _report(restored, ctl, trials[3], 2, 0.35) == PAUSE


def _simulate(values: dict[str, list[float]], *, rf: float, max_t: int, concurrency: int):
    """An event simulation of Tune with PromotionASHA and its gated generator: every epoch
    takes one time unit; returns (epochs trained, the trials that reached max_t)."""
    ctl = FakeController()
    s = _sched(len(values), rf=rf, max_t=max_t, concurrency=concurrency)
    ids = list(values)
    epoch_of, live, running, trained, finished = {}, set(), {}, 0, []
    for _ in range(10_000):
        # the searcher draws while the scheduler admits; Tune starts what choose returns
        while len(ctl.trials) < len(ids) and s.admits_new_trial(live):
            t = FakeTrial(ids[len(ctl.trials)])
            ctl.trials.append(t)
            live.add(t.trial_id)
            epoch_of[t.trial_id] = 0
        while len(running) < concurrency:
            t = s.choose_trial_to_run(ctl)
            if t is None:
                break
            t.status = Trial.RUNNING
            running[t.trial_id] = t
        if not running:
            break
        for tid, t in list(running.items()):
            epoch_of[tid] += 1
            trained += 1
            action = _report(s, ctl, t, epoch_of[tid], values[tid][epoch_of[tid] - 1])
            if action != CONTINUE:
                del running[tid]
                if action == STOP:
                    live.discard(tid)
                    finished.append(tid)
                    s.on_trial_complete(ctl, t, {})
    assert all(t.status == Trial.TERMINATED for t in ctl.trials)
    return trained, finished


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sweep_never_trains_more_than_synchronous_halving(seed):
    rng = random.Random(seed)
    values = {f"t{i:02d}": sorted(rng.random() for _ in range(8)) for i in range(32)}
    trained, finished = _simulate(values, rf=4, max_t=8, concurrency=2)
    assert trained == 32 + 8 * 3 + 2 * 4                 # Tune's stopping ASHA trained 93 here
    assert len(finished) == 2
    # 16 trials, eta 3, rungs 1, 3, 9 of 18: 16 -> 5 -> 1 -> floor(1/3) = 0, yet one reaches 18
    values = {f"t{i:02d}": sorted(rng.random() for _ in range(18)) for i in range(16)}
    trained, finished = _simulate(values, rf=3, max_t=18, concurrency=2)
    assert len(finished) == 1 and trained == 16 + 5 * 2 + 1 * 6 + 1 * 9


def test_promotion_needs_drawn_configurations(tmp_path):
    """asha_promotion with Optuna (configs suggested one at a time, no gate) is a named error;
    with a random searcher the plan keeps the scheduler and derives max_t and the rung cycles."""
    from cnn_ray.config import ConfigError, TrainConfig
    from cnn_ray.tune.plan import SweepPlan
    from cnn_ray.tune.settings import SchedulerSettings, SearcherSettings, SweepSettings

    base = TrainConfig.from_dict({
        "data": {"train": str(tmp_path), "val": str(tmp_path)}, "model": {"name": "simple_cnn"},
        "optim": {"epochs": 8, "schedule": "rung_anneal"},
        "run": {"storage_path": str(tmp_path / "runs")}}, check_paths=False)
    space = {"optim.lr": {"loguniform": [0.01, 0.1]}}
    promo = SchedulerSettings(kind="asha_promotion", grace_period=1, reduction_factor=4)
    with pytest.raises(ConfigError, match="asha_promotion.*searcher optuna"):
        SweepPlan(base, space, SweepSettings(), promo, SearcherSettings(kind="optuna"))
    plan = SweepPlan(base, space, SweepSettings(num_samples=3), promo, SearcherSettings())
    assert plan.scheduler.max_t == 8 and plan.base.optim.anneal_epochs == [1, 4]
