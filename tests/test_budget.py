"""Training to a time budget, ``optim.budget_s`` (issue 26, item 3): the step planner, the
schedule's time-warp, the worker's clock and re-plans on a simulated clock, the config and
sweep rules, and tiny runs through Ray (the plan recorded, a resume keeping it, a budget too
small for one epoch as one message). No assertion on real wall times: that is
``benchmarks/budget.py``'s job."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.recipe import TimeWarp, WarmupLinearDecay, WarmupThen
from cnn_ray.train.budget import (BudgetTooSmall, Costs, Position, plan_steps, seconds_to_end,
                                  too_small)
from cnn_ray.train.budget_run import BudgetRun
from cnn_ray.train.optim import OneCycleFactor, build_lr_scheduler
from cnn_ray.testing import write_photo_tree


def _cfg(tmp_path, **optim) -> TrainConfig:
    raw = {"data": {"train": str(tmp_path)}, "model": {"name": "simple_cnn"},
           "optim": {"batch_size": 8, **optim}, "run": {"storage_path": str(tmp_path / "runs")}}
    return TrainConfig.from_dict(raw, check_paths=False)


# ------------------------------------------------------------------------------ planner
def test_plan_fits_the_budget_to_within_a_step():
    costs = Costs(step_s=0.1, eval_s=1.0, overhead_s=0.5)
    for budget in (11.0, 37.3, 100.0, 999.9):
        plan = plan_steps(budget, costs, 100)
        assert plan.epochs == math.ceil(plan.steps / 100)
        last = plan.steps - (plan.epochs - 1) * 100
        used = seconds_to_end(plan.epochs, last, costs, 100)
        assert used == pytest.approx(plan.seconds) and used <= budget + 1e-9
        # one step more does not fit, whether it extends the last epoch or starts another
        more = (seconds_to_end(plan.epochs + 1, 1, costs, 100) if last == 100
                else seconds_to_end(plan.epochs, last + 1, costs, 100))
        assert more > budget
    # 8 whole epochs (10 s of steps + 1 s evaluation; 0.5 s before each later one) and of a
    # 9th, its evaluation and 70 steps: 88 + 8 * 0.5 + 1 + 7 = 100 s
    assert plan_steps(100.0, costs, 100).steps == 870


def test_plan_grows_with_the_budget_and_counts_the_position():
    costs = Costs(step_s=0.02, eval_s=0.3, overhead_s=0.1,
                  eval_views=lambda e, n: 6.0 if e == n - 1 else 1.0)  # TTA on the last epoch
    steps = [plan_steps(b, costs, 50).steps for b in range(0, 200, 3)]
    assert steps == sorted(steps) and steps[-1] > steps[1]
    # mid-epoch: the steps done are in the total, the rest of the epoch is still ahead
    mid = plan_steps(50.0, costs, 50, Position(epoch=0, steps_in_epoch=10, steps_done=10))
    fresh = plan_steps(50.0 + 10 * 0.02, costs, 50)
    assert mid.steps == fresh.steps
    # at an epoch boundary with nothing left: stop here
    assert plan_steps(0.01, costs, 50, Position(epoch=3, steps_done=150)) == (150, 3, 0.0)


def test_cheaper_early_progressive_epochs_give_more_steps(tmp_path):
    cfg = TrainConfig.from_dict({
        "data": {"train": str(tmp_path), "image_size": 128, "store_size": 160,
                 "progressive": {"enabled": True, "start_size": 64, "end_frac": 0.75}},
        "model": {"name": "simple_cnn"}}, check_paths=False)
    side = lambda e, n: (cfg.data.crop_size_at(e, n) / 128) ** 2  # noqa: E731
    flat, grown = Costs(0.05, 0.5), Costs(0.05, 0.5, step_cost=side)
    plain, progressive = plan_steps(300.0, flat, 40), plan_steps(300.0, grown, 40)
    assert progressive.steps > 1.3 * plain.steps
    assert progressive.seconds <= 300.0
    steps = [plan_steps(b, grown, 40).steps for b in range(10, 400, 7)]
    assert steps == sorted(steps)


def test_too_small_names_the_key_the_epoch_and_the_least_budget():
    costs = Costs(step_s=0.1, eval_s=2.0)
    assert plan_steps(5.0, costs, 100).steps < 100  # not one whole epoch
    err = too_small(5.0, 12.0, costs, 100)
    assert isinstance(err, ConfigError) and isinstance(err, BudgetTooSmall)
    assert str(err).startswith("optim.budget_s=5: not even one epoch fits: an epoch takes "
                               "~12.0 s") and "optim.budget_s >= 12" in str(err)


# ------------------------------------------------------------------------------ time-warp
def _lambda(factor, steps):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@pytest.mark.parametrize("base", [OneCycleFactor(400, 0.25),
                                  WarmupLinearDecay(400, 0.2, 0.2, 0.07),
                                  WarmupThen("cosine", 400, warmup_steps=40)])
def test_warp_is_continuous_ends_at_the_base_end_and_only_moves_forward(base):
    warp = TimeWarp(base, base.total_steps)
    assert [warp(s) for s in (0, 57, 400)] == pytest.approx([base(0), base(57), base(400)])
    before = warp(120)
    warp.refit(120, 250)  # the machine slowed: 250 steps instead of 400
    assert warp(120) == pytest.approx(before)
    assert warp(250) == pytest.approx(base(400)) and warp(300) == pytest.approx(base(400))
    warp.refit(200, 330)  # and sped up again
    progress = [warp.progress(s) for s in range(200, 331)]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert warp(330) == pytest.approx(base(400))
    steps = [abs(warp(s + 1) - warp(s)) for s in range(0, 330)]
    assert max(steps) < 0.05  # no jump anywhere in the lr


def test_warp_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, budget_s=60.0, epochs=4, schedule="onecycle")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched, per_step = build_lr_scheduler(opt, cfg.optim, 10)
    assert per_step and isinstance(sched.lr_lambdas[0], TimeWarp)
    for _ in range(7):
        opt.step()
        sched.step()
    sched.lr_lambdas[0].refit(7, 23)
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    opt2 = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    fresh, _ = build_lr_scheduler(opt2, cfg.optim, 10)
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    warp, back = sched.lr_lambdas[0], fresh.lr_lambdas[0]
    assert vars(back) == vars(warp) and back.total_steps == 23
    assert [back(s) for s in range(7, 30)] == [warp(s) for s in range(7, 30)]


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_budget_schedules_match_the_torch_schedulers(tmp_path, schedule):
    def lrs(cfg):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched, _ = build_lr_scheduler(opt, cfg.optim, 10)
        out = []
        for _ in range(60):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    knobs = dict(schedule=schedule, epochs=6, warmup_epochs=1.5, step_size=2, gamma=0.5)
    assert lrs(_cfg(tmp_path, budget_s=100.0, **knobs)) == pytest.approx(
        lrs(_cfg(tmp_path, **knobs)), rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------------------ config, sweeps
def test_config_refuses_rung_anneal_and_bad_budgets(tmp_path):
    with pytest.raises(ConfigError, match="optim.budget_s derives the epoch count.*rung_anneal"):
        _cfg(tmp_path, budget_s=60.0, schedule="rung_anneal")
    with pytest.raises(ConfigError, match="optim.budget_s"):
        _cfg(tmp_path, budget_s=0)


def test_the_ray_free_trainer_refuses_a_budget(tmp_path):
    import numpy as np

    from cnn_ray.train.local import train_arrays

    arrays = (np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 0, 1]))
    with pytest.raises(ConfigError, match="optim.budget_s=5: .*runs through Ray Train"):
        train_arrays(_cfg(tmp_path, budget_s=5.0), arrays, arrays, device=torch.device("cpu"))


def test_sweep_with_a_budget_runs_fifo_only(tmp_path):
    from cnn_ray.tune.plan import SweepPlan
    from cnn_ray.tune.settings import SchedulerSettings, SearcherSettings, SweepSettings

    base, space = _cfg(tmp_path, budget_s=60.0), {"optim.lr": {"grid": [0.1, 0.2]}}
    for kind in ("asha", "median", "hyperband"):
        with pytest.raises(ConfigError, match=f"base optim.budget_s.*scheduler.kind={kind}"):
            SweepPlan(base, space, SweepSettings(num_samples=1), SchedulerSettings(kind=kind),
                      SearcherSettings())
    plan = SweepPlan(base, space, SweepSettings(num_samples=1), SchedulerSettings(kind="fifo"),
                     SearcherSettings())
    assert {c.optim.budget_s for c in plan.configs} == {60.0}  # a budget per trial
    searched = {"optim.budget_s": {"grid": [30.0, 90.0]}}
    with pytest.raises(ConfigError, match="optim.budget_s in the space"):
        SweepPlan(_cfg(tmp_path), searched, SweepSettings(num_samples=1), SchedulerSettings(),
                  SearcherSettings())
    fifo = SweepPlan(_cfg(tmp_path), searched, SweepSettings(num_samples=1),
                     SchedulerSettings(kind="fifo"), SearcherSettings())
    assert sorted(c.optim.budget_s for c in fifo.configs) == [30.0, 90.0]


# ------------------------------------------------------------------------------ the clock
class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _simulate(cfg, *, spe, step_s, eval_s=0.5, overhead_s=0.2, state=None, start_epoch=0,
              stop_after=None):
    """Drive a BudgetRun as run_worker does on a simulated clock: ``step_s(epoch)`` seconds a
    step. Returns the run, the lr after every step and the epochs trained."""
    clock, logs = _Clock(), []
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched, _ = build_lr_scheduler(opt, cfg.optim, spe)
    if state is not None:
        sched.load_state_dict(state["scheduler"])
    run = BudgetRun(cfg, steps_per_epoch=spe, val_images=64, scheduler=sched, rank=0,
                    device=torch.device("cpu"), reduce=lambda t: t, log=logs.append,
                    started=0.0, start_epoch=start_epoch,
                    state=state["budget"] if state else None, clock=clock)
    epoch, planned, lrs = start_epoch, run.planned_epochs, []
    while epoch < planned and (stop_after is None or epoch < stop_after):
        clock.t += overhead_s if epoch > start_epoch else 0.0
        cap = run.start_epoch(epoch, planned, None)
        for i in range(1, (spe if cap is None else cap) + 1):
            clock.t += step_s(epoch)
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
            run.after_step(i)
        clock.t += eval_s
        metrics = run.end_epoch(epoch, {"eval_s": eval_s, "tta_views": 1})
        assert metrics["planned_epochs"] == run.planned_epochs
        planned = run.planned_epochs
        epoch += 1
    saved = {"budget": run.state(epoch), "scheduler": sched.state_dict()}
    return run, lrs, epoch, saved, logs


def test_calibration_plans_the_run_and_a_slower_machine_shortens_the_tail(tmp_path):
    cfg = _cfg(tmp_path, budget_s=60.0, epochs=3, schedule="onecycle")
    run, lrs, epochs, _, logs = _simulate(cfg, spe=40,
                                          step_s=lambda e: 0.05 if e < 4 else 0.08)
    reasons = [h["reason"] for h in run.history]
    assert reasons[0] == "calibration" and run.history[0]["epoch"] == 1
    assert "re-check" in reasons  # the slowdown at epoch 5 shortened the plan
    first, final = run.history[0]["steps"], run.planned_steps
    assert final < first and epochs == run.planned_epochs
    assert run.steps_done == final and epochs == math.ceil(final / 40)
    assert 0.9 * 60.0 <= run.used_s <= 60.0
    assert lrs[-1] == pytest.approx(1.0 / 25e3)  # the one-cycle schedule's end, reached once
    assert max(abs(b - a) for a, b in zip(lrs, lrs[1:])) < 0.05  # no restart anywhere
    assert any(line.startswith("budget calibration (epoch 1") for line in logs)
    report = run.report(str(tmp_path / "run"), epochs)
    written = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert written["ratio"] == pytest.approx(run.used_s / 60.0, abs=1e-4)
    assert written["planned_epochs"] == written["epochs"] == epochs
    assert logs[-1].startswith("budget: used ")


def test_a_resumed_run_keeps_its_plan_and_budget_used(tmp_path):
    cfg = _cfg(tmp_path, budget_s=40.0, epochs=2, schedule="linear_decay")
    full, _, epochs, _, _ = _simulate(cfg, spe=30, step_s=lambda e: 0.04)
    half, _, done, saved, _ = _simulate(cfg, spe=30, step_s=lambda e: 0.04, stop_after=3)
    assert done == 3 and saved["budget"]["planned_epochs"] == full.planned_epochs
    resumed, _, end, _, _ = _simulate(cfg, spe=30, step_s=lambda e: 0.04, state=saved,
                                      start_epoch=3)
    assert end == epochs == resumed.planned_epochs  # the saved plan, no new calibration
    assert [h["reason"] for h in resumed.history].count("calibration") == 1
    assert "resumed" in [h["reason"] for h in resumed.history]
    assert resumed.used_s == pytest.approx(full.used_s, abs=0.25)  # the overhead of a restart


def test_a_budget_below_one_epoch_raises_after_the_calibration_steps(tmp_path):
    cfg = _cfg(tmp_path, budget_s=4.0, epochs=2, budget_calibration_steps=8)
    with pytest.raises(BudgetTooSmall) as info:
        _simulate(cfg, spe=100, step_s=lambda e: 0.1)
    msg = str(info.value)
    assert msg.startswith("optim.budget_s=4: not even one epoch fits: an epoch takes ~10.")
    assert "100 steps at 0.1 s" in msg and "smallest budget that fits is ~11 s" in msg


# ------------------------------------------------------------------------------ through Ray
def _recipe(tmp_path: Path, **optim) -> dict:
    return {"data": {"train": str(write_photo_tree(tmp_path / "photos", per_class=10)),
                     "image_size": 32, "val_fraction": 0.2, "shard_size": 100, "cache": "memory",
                     "prepared_dir": str(tmp_path / "prepared")},
            "model": {"name": "simple_cnn"},
            "optim": {"batch_size": 8, "epochs": 1, **optim},
            "precision": {"dtype": "fp32"}, "scaling": {"num_workers": 1, "cpus_per_worker": 1},
            "run": {"name": "budget", "storage_path": str(tmp_path / "runs"), "max_failures": 1}}


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_budget_run_records_its_plan_and_resumes_with_it(ray_session, tmp_path):
    from cnn_ray.train.launch import run_training

    cfg = TrainConfig.from_dict(_recipe(tmp_path, budget_s=12.0))
    marker = tmp_path / "killed"
    run_training(cfg, fault_injection={"rank": 0, "epoch": 2, "step": 1, "marker": str(marker)})
    assert marker.exists()  # killed in epoch 2: resumed from epoch 1's checkpoint
    run = tmp_path / "runs" / "budget"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"budget_s", "budget_used_s", "planned_epochs", "planned_steps"} <= set(r)
               for r in rows)
    assert rows[-1]["epoch"] == rows[-1]["planned_epochs"] > 1  # derived, not optim.epochs=1
    report = json.loads((run / "budget.json").read_text())
    assert report["budget_s"] == 12.0 and report["epochs"] == rows[-1]["epoch"]
    assert report["ratio"] == pytest.approx(report["used_s"] / 12.0, abs=1e-3)
    assert report["startup_s"] > 0 and report["steps"] == report["planned_steps"]
    reasons = [h["reason"] for h in report["history"]]
    assert reasons.count("calibration") == 1 and "resumed" in reasons


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_budget_too_small_for_one_epoch_is_one_message(ray_session, tmp_path, capsys):
    from cnn_ray.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, budget_s=0.001)))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    line = err[err.index("cnn-ray train: "):]
    assert line.startswith("cnn-ray train: optim.budget_s=0.001: not even one epoch fits")
    assert len(line.strip().splitlines()) == 1
    assert "BudgetTooSmall" not in err and "Error in training function" not in err  # no trace
    assert not list((tmp_path / "runs" / "budget").glob("checkpoint_*"))


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_benchmark_smoke_prints_the_table_and_writes_the_json(ray_session, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "budget_benchmark", Path(__file__).resolve().parents[1] / "benchmarks" / "budget.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(_recipe(tmp_path)))
    out = tmp_path / "budget.json"
    assert bench.main(["--config", str(config), "--smoke", "--budgets", "6",
                       "--storage", str(tmp_path / "runs"), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["pure_compute_images_per_sec"] > 0 and doc["machine"]
    (row,) = doc["runs"]
    assert row["budget_s"] == 6.0 and row["ratio"] == pytest.approx(row["used_s"] / 6.0, abs=1e-3)
    assert row["startup_s"] > 0 and row["epochs"] >= 1 and 0.0 <= row["val_top1"] <= 1.0
    printed = capsys.readouterr().out
    assert "| budget s | used s | used / budget | start-up s |" in printed
    assert f"| 6 | {row['used_s']:.1f} | {row['ratio']:.3f} |" in printed
    assert "[budget] machine: " in printed
    assert bench.main(["--config", str(config), "--set", "optim.no_such_key=1"]) == 2
