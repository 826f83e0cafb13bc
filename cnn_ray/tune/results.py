"""What a sweep leaves behind: the trial table, learning curves, and the best config.

After a sweep, in the output directory (default: the sweep directory
``<run.storage_path>/<sweep name>/``):

* ``trials.csv``: one row per trial: ``trial_id``, ``status`` (``completed``, ``stopped_early``,
  ``error``, or ``unfinished`` in an interrupted sweep), every sampled key, ``best_<metric>`` and ``best_epoch``, ``epochs`` run,
  ``wall_s`` (trial start to last report, seconds), ``startup_s`` (trial start to the first
  epoch's training loop, seconds; the first batch's data wait counts as training) and the
  trial's best available ``checkpoint``. The same table is printed.
* ``learning_curves.png``: the metric and the training loss per epoch for every trial; early
  stopped trials are dashed and end in an ``x``, the best trial is drawn thick.
* ``best_config.yaml``: the best trial's full ``TrainConfig`` with a fresh ``run.name``
  (``<sweep name>_best``), the base ``run.storage_path`` and absolute data paths:
  ``python jobs/train.py --config best_config.yaml`` re-trains it as is.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from cnn_ray.io import iter_jsonl, read_jsonl
from cnn_ray.tune.space import canonical_config, format_value, trial_config

STATUS_COMPLETED, STATUS_STOPPED, STATUS_ERROR = "completed", "stopped_early", "error"
STATUS_UNFINISHED = "unfinished"  # the sweep was interrupted before this trial ended


@dataclass
class TrialSummary:
    """One trial of a sweep. ``curve``: ``[(epoch, metric value), ...]`` as Tune saw it;
    ``loss_curve``: ``[(epoch, train_loss), ...]``."""

    trial_id: str
    status: str
    config: dict[str, Any]
    best: Optional[float]
    best_epoch: Optional[int]
    epochs: int
    max_epochs: int
    wall_s: Optional[float]
    startup_s: Optional[float]
    checkpoint: Optional[str]
    curve: list[tuple[int, float]] = field(default_factory=list)
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    error: Optional[str] = None


@dataclass
class SweepResult:
    """The outcome of :func:`cnn_ray.tune.run_sweep`.

    ``best`` is the trial with the best value of ``metric`` at any epoch (None if no trial
    reported); ``best_checkpoint`` its best kept checkpoint; ``wall_s`` the time spent in
    ``Tuner.fit`` (seconds).
    """

    name: str
    path: str
    output_dir: str
    metric: str
    mode: str
    trials: list[TrialSummary]
    best: Optional[TrialSummary]
    best_config_path: Optional[str]
    best_checkpoint: Optional[str]
    table_path: Optional[str]
    curves_path: Optional[str]
    wall_s: float
    concurrency: int
    resumed: bool = False
    unfinished: list[str] = field(default_factory=list)
    not_started: int = 0
    result_grid: Any = None

    @property
    def interrupted(self) -> bool:
        """True when some trials did not finish or never started (the sweep was interrupted;
        run it again to resume)."""
        return bool(self.unfinished) or self.not_started > 0

    def table(self) -> str:
        """The trial table as aligned text."""
        rows = _rows(self.trials, self.metric, with_checkpoint=False)
        if not rows:
            return "(no trials)"
        cols = list(rows[0])
        width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
        line = lambda r: "  ".join(str(r[c]).ljust(width[c]) for c in cols)  # noqa: E731
        return "\n".join([line({c: c for c in cols})] + [line(r) for r in rows])

    def summary(self) -> dict:
        """JSON-safe headline figures."""
        counts = {s: sum(t.status == s for t in self.trials)
                  for s in (STATUS_COMPLETED, STATUS_STOPPED, STATUS_ERROR, STATUS_UNFINISHED)}
        return {
            "sweep": self.name, "path": self.path, "trials": len(self.trials), **counts,
            "epochs_total": sum(t.epochs for t in self.trials),
            "wall_s": round(self.wall_s, 2), "concurrency": self.concurrency,
            "not_started": self.not_started, "resumed": self.resumed,
            "metric": self.metric, "mode": self.mode,
            f"best_{self.metric}": self.best.best if self.best else None,
            "best_trial": self.best.trial_id if self.best else None,
            "best_config": self.best.config if self.best else None,
            "best_config_path": self.best_config_path, "best_checkpoint": self.best_checkpoint,
            "table": self.table_path, "curves": self.curves_path,
        }


# ------------------------------------------------------------------------------ summarise
def summarize_sweep(plan, grid, *, wall_s: float, output_dir: Optional[str] = None,
                    concurrency: int = 1, resumed: bool = False,
                    unfinished: Optional[list[str]] = None, not_started: int = 0) -> SweepResult:
    """Turn a Tune ``ResultGrid`` into a :class:`SweepResult`, write the files, print the table."""
    out_dir = Path(output_dir or (plan.exp_dir if plan.local else f"sweep_results/{plan.name}"))
    out_dir.mkdir(parents=True, exist_ok=True)
    starts = read_trial_starts(Path(plan.exp_dir) / "trial_starts.jsonl") if plan.local else {}
    trials = [summarize_trial(plan, r, starts, set(unfinished or [])) for r in grid]
    trials.sort(key=lambda t: t.trial_id)
    best = pick_best(trials, plan.settings.mode)
    result = SweepResult(
        name=plan.name, path=plan.exp_dir, output_dir=str(out_dir), metric=plan.settings.metric,
        mode=plan.settings.mode, trials=trials, best=best, best_config_path=None,
        best_checkpoint=best.checkpoint if best else None, table_path=None, curves_path=None,
        wall_s=wall_s, concurrency=concurrency, resumed=resumed,
        unfinished=list(unfinished or []), not_started=not_started, result_grid=grid,
    )
    result.table_path = write_table(trials, plan.settings.metric, out_dir / "trials.csv")
    result.curves_path = plot_curves(result, out_dir / "learning_curves.png")
    if best is not None:
        result.best_config_path = write_best_config(plan, best, out_dir / "best_config.yaml")
    print(result.table(), flush=True)
    print(json.dumps(result.summary(), indent=2, default=str), flush=True)
    return result


def summarize_trial(plan, result, starts: dict[str, list[float]],
                    unfinished: set[str] = frozenset()) -> TrialSummary:
    """One Tune ``Result`` -> :class:`TrialSummary` (curve, best, status, timings)."""
    metric, mode = plan.settings.metric, plan.settings.mode
    config = canonical_config(result.config or {})
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
    by_epoch = trial_history(plan, trial_id, result)
    curve = [(e, float(r[metric])) for e, r in by_epoch.items() if _finite(r.get(metric))]
    loss = [(e, float(r["train_loss"])) for e, r in by_epoch.items() if _finite(r.get("train_loss"))]
    max_epochs = _trial_epochs(plan, config)
    best_epoch, best = None, None
    for e, v in curve:
        if best is None or (v > best if mode == "max" else v < best):
            best_epoch, best = e, v
    epochs = max(by_epoch) if by_epoch else 0
    if result.error is not None:
        status = STATUS_ERROR
    elif trial_id in unfinished:
        status = STATUS_UNFINISHED
    else:
        status = STATUS_COMPLETED if epochs >= max_epochs else STATUS_STOPPED
    last_tune = (result.metrics or {})
    return TrialSummary(
        trial_id=trial_id, status=status, config=config, best=best, best_epoch=best_epoch,
        epochs=epochs, max_epochs=max_epochs,
        wall_s=float(last_tune["time_total_s"]) if _finite(last_tune.get("time_total_s")) else None,
        startup_s=_startup_s(plan, trial_id, starts), checkpoint=_kept_checkpoint(
            plan, trial_id, [by_epoch[best_epoch]] if best_epoch else [], list(by_epoch.values())),
        curve=curve, loss_curve=loss,
        error=None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:500],
    )


def trial_history(plan, trial_id: str, result) -> dict[int, dict]:
    """``{epoch: metrics}`` of one trial, in epoch order.

    Merges what Tune saw (``Result.metrics_dataframe``, which carries ``checkpoint_path``) with
    the Train run's own ``metrics.jsonl`` (local storage): the latter also holds epochs that
    finished after Tune stopped listening (a trial stopped or interrupted mid-epoch, or a
    resumed trial whose Train run had already finished).
    """
    df = result.metrics_dataframe
    rows = df.to_dict("records") if df is not None and len(df) else []
    if plan.local:
        rows += read_jsonl(Path(plan.runs_dir) / trial_id / "metrics.jsonl")
    by_epoch: dict[int, dict] = {}
    for r in rows:
        if _finite(r.get("epoch")):
            e = int(r["epoch"])
            by_epoch[e] = {**by_epoch.get(e, {}), **{k: v for k, v in r.items() if v is not None}}
    return dict(sorted(by_epoch.items()))


def pick_best(trials: list[TrialSummary], mode: str) -> Optional[TrialSummary]:
    scored = [t for t in trials if t.best is not None]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda t: t.best)


def _trial_epochs(plan, config: dict) -> int:
    """The epochs a trial would reach if never stopped: its optim.epochs, capped by max_t."""
    epochs = int(config.get("optim.epochs", plan.base.optim.epochs))
    if plan.scheduler.kind != "fifo" and plan.scheduler.time_attr == "epoch":
        epochs = min(epochs, int(plan.scheduler.max_t))
    return epochs


def _kept_checkpoint(plan, trial_id: str, preferred: list[dict], rows: list[dict]) -> Optional[str]:
    """The best epoch's checkpoint if still kept, else the latest kept one (``run.keep_checkpoints``
    keeps the most recent), else the newest checkpoint folder of the trial's Train run."""
    def usable(r: dict) -> Optional[str]:
        path = r.get("checkpoint_path")
        ok = isinstance(path, str) and path and ("://" in path or os.path.isdir(path))
        return path if ok else None

    for r in preferred:
        if usable(r):
            return usable(r)
    # the newest checkpoint folder of the run (a report Tune never saw -- a driver interrupted
    # right after it -- still left its checkpoint there), else the latest one Tune recorded
    run = Path(plan.runs_dir) / trial_id
    found = sorted(p for p in run.glob("checkpoint_*") if ".tmp-" not in p.name
                   and ".old-" not in p.name) if plan.local and run.is_dir() else []
    if found:
        return str(found[-1])
    for r in rows[::-1]:
        if usable(r):
            return usable(r)
    return None


def read_trial_starts(path: Path, event: str = "start") -> dict[str, list[float]]:
    """``trial_starts.jsonl``: trial id -> unix times of its ``event`` lines (``start``: each
    start of the trial function; ``trainer_built``: its trainer was built), in file order."""
    out: dict[str, list[float]] = {}
    for rec in iter_jsonl(path):
        if rec.get("event", "start") == event:
            out.setdefault(rec["trial_id"], []).append(float(rec["time"]))
    return out


def _startup_s(plan, trial_id: str, starts: dict[str, list[float]]) -> Optional[float]:
    """Trial function start -> first epoch's training loop, from the trial-start log and the
    Train run's ``metrics.jsonl`` (report time - epoch_s - eval_s)."""
    if trial_id not in starts or not plan.local:
        return None
    rows = list(iter_jsonl(Path(plan.runs_dir) / trial_id / "metrics.jsonl"))
    # the latest start that trained an epoch: a trial restarted after its last epoch (its
    # completion missed by an interrupted driver) resumes with nothing left to train
    for start in reversed(starts[trial_id]):
        for m in rows:
            if m["time"] >= start:
                loop_start = m["time"] - m.get("epoch_s", 0.0) - m.get("eval_s", 0.0)
                return round(loop_start - start, 2)
    return None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------ files
def _rows(trials: list[TrialSummary], metric: str, *, with_checkpoint: bool) -> list[dict]:
    keys: list[str] = []
    for t in trials:
        keys += [k for k in t.config if k not in keys]
    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial_id": t.trial_id, "status": t.status}
        row.update({k: format_value(t.config[k]) if k in t.config else "" for k in keys})
        row[f"best_{metric}"] = "" if t.best is None else f"{t.best:.4f}"
        row["best_epoch"] = t.best_epoch or ""
        row["epochs"] = t.epochs
        row["wall_s"] = "" if t.wall_s is None else f"{t.wall_s:.1f}"
        row["startup_s"] = "" if t.startup_s is None else f"{t.startup_s:.1f}"
        if with_checkpoint:
            row["checkpoint"] = t.checkpoint or ""
        rows.append(row)
    return rows


def write_table(trials: list[TrialSummary], metric: str, path: Path) -> str:
    """Write ``trials.csv`` (full-precision values) and return its path."""
    rows = _rows(trials, metric, with_checkpoint=True)
    for row, t in zip(rows, trials):  # the CSV keeps full precision
        row.update({k: v for k, v in t.config.items()})
        if t.best is not None:
            row[f"best_{metric}"] = t.best
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    path.write_text(buf.getvalue())
    return str(path)


def plot_curves(result: SweepResult, path: Path) -> Optional[str]:
    """``learning_curves.png``: metric and train loss per epoch; stopped trials dashed + x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [t for t in result.trials if t.curve]
    if not drawn:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    cmap = plt.get_cmap("tab20")
    for i, t in enumerate(drawn):
        color = cmap(i % 20)
        stopped = t.status != STATUS_COMPLETED
        style = dict(color=color, linestyle="--" if stopped else "-",
                     linewidth=3.0 if t is result.best else 1.3, alpha=0.9)
        label = f"{t.trial_id[-5:]} {_short(t.config)}" + (" (stopped)" if stopped else "")
        for ax, curve in ((axes[0], t.curve), (axes[1], t.loss_curve)):
            if not curve:
                continue
            xs, ys = zip(*curve)
            ax.plot(xs, ys, marker="o", markersize=3, label=label if ax is axes[0] else None,
                    **style)
            if stopped:
                ax.plot(xs[-1], ys[-1], marker="x", markersize=9, color=color, linestyle="none")
    axes[0].set_ylabel(result.metric)
    axes[1].set_ylabel("train_loss")
    max_epoch = max(t.max_epochs for t in drawn)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_xlim(0.8, max_epoch + 0.2)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{result.name}: {len(drawn)} trials (dashed + x = stopped early; "
                      "thick = best)", fontsize=10)
    axes[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _short(config: dict) -> str:
    parts = []
    for k, v in config.items():
        parts.append(f"{k.split('.')[-1]}={format_value(v)}")
    text = " ".join(parts)
    return text if len(text) <= 60 else text[:57] + "..."


def write_best_config(plan, best: TrialSummary, path: Path) -> str:
    """Write the best trial's full training config as a recipe ``jobs/train.py`` runs as is."""
    cfg = trial_config(plan.base, best.config, source=f"best trial {best.trial_id}",
                       name=f"{plan.name}_best", storage_path=_absolute(plan.base.run.storage_path))
    raw = cfg.to_dict()
    for key in ("train", "val", "prepared_dir"):
        if raw["data"].get(key):
            raw["data"][key] = _absolute(raw["data"][key])
    header = (f"# Best configuration of sweep {plan.name!r}: trial {best.trial_id}, "
              f"{plan.settings.metric} = {best.best:.4f} at epoch {best.best_epoch}.\n"
              f"# Sampled: {json.dumps(best.config, default=str)}\n"
              f"# Re-train: python jobs/train.py --config {path}\n")
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def _absolute(p: str) -> str:
    if "://" in p or p.startswith("~") or os.path.isabs(p):
        return p
    return os.path.abspath(p)
