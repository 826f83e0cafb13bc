"""Watching a run (cnn_ray.watch): lines printed once, progress with ETA, TensorBoard event
files read back by tensorboard's own loader, learning-curve PNGs. No Ray."""

from __future__ import annotations

import builtins
import json

import pytest

from cnn_ray.watch import (EtaProgress, RunWatch, TensorBoardScalars, epoch_history,
                           format_duration, say, write_learning_curves)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(epoch: int, top1: float) -> dict:
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "val_loss": 2.1 / epoch,
            "train_top1": top1 - 0.05, "val_top1": top1, "val_top5": 0.9, "lr": 0.1 / epoch,
            "images_per_sec": 1000.0 + epoch, "data_wait_share": 0.01, "epoch_s": 3.0}


def _scalars(directory, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]


def test_say_writes_once_where_print_is_teed(monkeypatch, capsys):
    """Ray Train V2 replaces print on workers with one that writes the line and logs it again
    (each epoch line twice in the job log); say must not go through print."""
    original = builtins.print

    def teeing_print(*args, **kwargs):  # what Ray's patched print amounts to on a worker
        original(*args, **kwargs)
        original(*args, **kwargs)

    monkeypatch.setattr(builtins, "print", teeing_print)
    say("epoch 1 | val_top1 0.5000")
    out = capsys.readouterr().out
    assert out.count("epoch 1 | val_top1 0.5000") == 1
    assert out == "[cnn_ray] epoch 1 | val_top1 0.5000\n"


def test_eta_progress_is_time_based_and_estimates_time_left():
    now = [0.0]
    lines: list[str] = []
    bar = EtaProgress("epoch 1/2 step", 100, every_s=10.0, log=lines.append,
                      clock=lambda: now[0], extra=lambda done, rate: f"{100 - done} to go")
    for step in range(1, 101):  # 1 step/s: one line per 10 steps, never more
        now[0] = float(step)
        bar.update(step)
    assert len(lines) == 10
    assert lines[1] == "epoch 1/2 step: 20/100 (20%), 1 steps/s, ETA 1:20, 80 to go"
    assert format_duration(3725) == "1:02:05" and format_duration(59.6) == "1:00"
    slow_start = EtaProgress("e", 10, every_s=1.0, log=lines.append, clock=lambda: now[0])
    now[0] += 500.0  # the first step waited 500 s for data; then 1 step/s
    slow_start.update(1)
    now[0] += 4.0
    slow_start.update(5)
    assert lines[-1] == "e: 5/10 (50%), 1 steps/s, ETA 0:05"
    quiet = EtaProgress("x", 10, every_s=0, log=lines.append, clock=lambda: now[0])
    now[0] = 1e6
    quiet.update(5)
    assert len(lines) == 12  # every_s=0: off


def test_tensorboard_scalars_readable_and_resume_continues_curve(tmp_path):
    tb = tmp_path / "tensorboard"
    first = TensorBoardScalars(tb)
    for epoch in (1, 2, 3):  # epoch 3 logged, then the run died before its checkpoint
        first.add(_metrics(epoch, 0.1 * epoch), epoch)
    first.close()
    resumed = TensorBoardScalars(tb, start_epoch=2)  # resumes after the epoch-2 checkpoint
    for epoch in (3, 4):
        resumed.add(_metrics(epoch, 0.5 + 0.1 * epoch), epoch)
    resumed.close()
    assert _scalars(tb, "top1/val") == [(1, 0.1), (2, 0.2), (3, 0.8), (4, 0.9)]
    assert [s for s, _ in _scalars(tb, "loss/train")] == [1, 2, 3, 4]
    assert _scalars(tb, "speed/images_per_sec")[-1] == (4, 1004.0)


def test_learning_curves_png_and_history(tmp_path):
    records = [_metrics(1, 0.3), _metrics(2, 0.4), _metrics(2, 0.45), {"event": "no epoch"}]
    assert [r["val_top1"] for r in epoch_history(records)] == [0.3, 0.45]  # last of epoch 2 wins
    path = write_learning_curves(records, tmp_path / "curves.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left


def test_run_watch_writes_png_and_scalars_each_epoch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    watch = RunWatch(str(run), log=lambda m: None)
    sizes = []
    for epoch in (1, 2):
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_metrics(epoch, 0.2 * epoch)) + "\n")
        watch.epoch(_metrics(epoch, 0.2 * epoch))
        assert (run / "curves.png").read_bytes().startswith(PNG_MAGIC)
        sizes.append((run / "curves.png").stat().st_mtime_ns)
    watch.close()
    assert sizes[1] >= sizes[0]
    assert [s for s, _ in _scalars(run / "tensorboard", "top1/val")] == [1, 2]


def test_run_watch_on_a_uri_writes_nothing(tmp_path):
    watch = RunWatch("s3://bucket/run", log=lambda m: None)
    watch.epoch(_metrics(1, 0.5))  # no error, nothing local
    watch.close()
    assert watch.run_dir is None


def test_learning_curves_leave_out_values_that_are_not_numbers(tmp_path):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(args[1])))
        return original(self, *args, **kwargs)

    rows = [_metrics(1, 0.5), {"epoch": 2, "val_top1": "n/a", "train_top1": float("nan")},
            _metrics(3, 0.7)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.axes.Axes, "plot", spy)
        write_learning_curves(rows, tmp_path / "c.png")
    assert dict(drawn)["val_top1"] == [0.5, 0.7]
    assert dict(drawn)["train_top1"] == pytest.approx([0.45, 0.65])
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_MAGIC)
