"""Watching a run: log lines, progress with an estimate of the time left, TensorBoard scalars
and learning-curve pictures.

No Ray here. The Ray Train worker (:mod:`cnn_ray.train.worker`) uses these on rank 0 only:

- :func:`say` prints one line. Not through ``print``: Ray Train V2 replaces ``print`` on its
  workers (``RAY_TRAIN_ENABLE_PRINT_PATCH``, ``ray/train/v2/_internal/logging/patch_print.py``)
  with a function that writes the line to stdout *and* logs it on the root logger, whose console
  handler writes it again, so every ``print`` of a worker appeared twice in ``ray job logs``.
- :class:`EtaProgress` prints ``label: done/total (pct), rate, ETA`` at most every
  ``every_s`` seconds (time-based, so a fast GPU run does not flood the job log).
- :class:`RunWatch` writes, per epoch, the scalars to ``<run dir>/tensorboard/`` (tensorboardX,
  global step = the 1-based epoch, so a resumed run continues the same curves) and rewrites
  ``<run dir>/curves.png`` (:func:`write_learning_curves`) from ``metrics.jsonl``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from cnn_ray.io import atomic_path, is_uri, read_jsonl

TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"

# metrics key -> TensorBoard tag: losses, accuracies, lr and speed, grouped by panel.
SCALAR_TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val",
    "train_top1": "top1/train", "val_top1": "top1/val", "val_top5": "top5/val",
    "lr": "lr", "images_per_sec": "speed/images_per_sec",
    "data_wait_share": "speed/data_wait_share", "epoch_s": "time/epoch_s",
    "eval_s": "time/eval_s",
}


def say(msg: str, prefix: str = "[cnn_ray] ") -> None:
    """Write ``prefix + msg`` as one line to stdout and flush (printed once in Ray job logs,
    see the module docstring)."""
    sys.stdout.write(f"{prefix}{msg}\n")
    sys.stdout.flush()


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``; ``3725`` -> ``"1:02:05"`` (h:mm:ss above an hour)."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class EtaProgress:
    """Progress lines with the rate and the estimated time left, at most one per ``every_s``.

    ``update(done)`` with the units done so far (steps, images) prints
    ``<label>: 20/49 (41%), 3.1 steps/s, ETA 0:09[, <extra>]`` when ``every_s`` seconds have
    passed since the last line (the first line after ``every_s``); ``every_s <= 0`` prints
    nothing. ``extra(done, rate) -> str`` adds to the line (e.g. the time left in the run).
    The estimate is linear: (total - done) / rate, the rate measured from the first
    ``update`` on (so a slow first step -- start-up, a pipeline filling -- does not inflate it).
    """

    def __init__(self, label: str, total: int, *, every_s: float = 30.0, unit: str = "steps",
                 log: Callable[[str], None] = say,
                 extra: Optional[Callable[[int, float], str]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.every_s, self.unit = label, total, every_s, unit
        self.log, self.extra, self.clock = log, extra, clock
        self.start = self.last = clock()
        self.base: Optional[tuple[float, int]] = None  # (time, done) at the first update
        self.lines = 0

    def rate(self, done: int) -> float:
        """Units per second since the first :meth:`update` (since construction before it)."""
        t0, d0 = self.base if self.base is not None and done > self.base[1] else (self.start, 0)
        return (done - d0) / max(self.clock() - t0, 1e-9)

    def line(self, done: int) -> str:
        rate = self.rate(done)
        pct = 100.0 * done / self.total if self.total else 100.0
        left = (self.total - done) / rate if rate > 0 else float("inf")
        eta = format_duration(left) if left != float("inf") else "?"
        text = f"{self.label}: {done}/{self.total} ({pct:.0f}%), {rate:.3g} {self.unit}/s, ETA {eta}"
        if self.extra is not None:
            text += f", {self.extra(done, rate)}"
        return text

    def update(self, done: int) -> None:
        """Print a line when ``every_s`` seconds have passed since the previous one."""
        now = self.clock()
        if self.base is None:
            self.base = (now, done)
        if self.every_s > 0 and now - self.last >= self.every_s:
            self.last = now
            self.lines += 1
            self.log(self.line(done))


# ------------------------------------------------------------------------------ pictures
def epoch_history(records: Iterable[dict]) -> list[dict]:
    """Per-epoch records sorted by ``epoch``, the last record of an epoch winning (a run that
    crashed after logging an epoch and resumed before its checkpoint logs it again)."""
    by_epoch = {int(r["epoch"]): r for r in records if "epoch" in r}
    return [by_epoch[e] for e in sorted(by_epoch)]


def write_learning_curves(records: Iterable[dict], path: str | Path) -> Path:
    """Draw loss, top-1, learning rate and images/s per epoch into a PNG at ``path``.

    ``records``: per-epoch metric dicts (``metrics.jsonl`` lines: ``epoch`` and any of
    ``train_loss``, ``val_loss``, ``train_top1``, ``val_top1``, ``lr``, ``images_per_sec``).
    Values that are missing, not numbers or NaN are left out of their curve.
    Drawn with matplotlib's Agg backend (no display) into a new figure that is closed after,
    and written atomically (:func:`cnn_ray.io.atomic_path`). Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on workers; a no-op once another backend is in use
    from matplotlib.figure import Figure

    rows = epoch_history(records)
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 6.5), dpi=80)
    panels = [("loss", ("train_loss", "val_loss")), ("top-1", ("train_top1", "val_top1")),
              ("learning rate (end of epoch)", ("lr",)), ("images/s (training)", ("images_per_sec",))]
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1)
        for key in keys:
            pts = [(e, r[key]) for e, r in zip(epochs, rows)
                   if isinstance(r.get(key), (int, float)) and r[key] == r[key]]  # no None/NaN
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ------------------------------------------------------------------------------ TensorBoard
class TensorBoardScalars:
    """Epoch scalars in TensorBoard event files under ``directory`` (tensorboardX, which Ray
    Tune also uses).

    ``start_epoch``: epochs already done (a resumed run); the writer then purges events at
    steps > ``start_epoch`` left by the interrupted run, so the curves continue instead of
    doubling back. Scalars: :data:`SCALAR_TAGS` that are present in the metrics.
    """

    def __init__(self, directory: str | Path, start_epoch: int = 0):
        from tensorboardX import SummaryWriter

        # The file name holds the start time in whole seconds and TensorBoard reads the files
        # in name order: a nanosecond suffix keeps a restart within the same second from
        # overwriting the previous file or sorting before it.
        self.writer = SummaryWriter(str(directory), filename_suffix=f".{time.time_ns()}."
                                    f"{os.getpid()}",
                                    purge_step=start_epoch + 1 if start_epoch else None)

    def add(self, metrics: dict, step: int) -> None:
        """Write the scalars of ``metrics`` at global step ``step`` (the 1-based epoch) and flush."""
        for key, tag in SCALAR_TAGS.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class RunWatch:
    """Rank 0's per-epoch outputs in a local run dir: TensorBoard scalars and ``curves.png``.

    On a storage URI run dir nothing is written (TensorBoard and matplotlib write local files;
    ``metrics.jsonl`` there still has every figure). ``epoch(metrics)`` is called after the
    epoch's line was appended to ``metrics.jsonl``. A failure to draw is logged, never raised:
    watching must not stop training.
    """

    def __init__(self, run_dir: Optional[str], start_epoch: int = 0,
                 log: Callable[[str], None] = say):
        self.run_dir = Path(run_dir) if run_dir and not is_uri(run_dir) else None
        self.log = log
        self.scalars = (TensorBoardScalars(self.run_dir / TENSORBOARD_DIR, start_epoch)
                        if self.run_dir else None)

    def epoch(self, metrics: dict) -> None:
        if self.run_dir is None:
            return
        self.scalars.add(metrics, int(metrics["epoch"]))
        try:
            write_learning_curves(read_jsonl(self.run_dir / "metrics.jsonl"),
                                  self.run_dir / CURVES_FILE)
        except Exception as exc:  # noqa: BLE001 (a picture must not stop training)
            self.log(f"learning curves not drawn ({type(exc).__name__}: {exc})")

    def close(self) -> None:
        if self.scalars is not None:
            self.scalars.close()
