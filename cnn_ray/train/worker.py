"""The per-worker training function that Ray Train runs on every worker (Ray glue).

It orchestrates and delegates: rebuild the typed config, build model/optimiser/schedule,
restore the last checkpoint, then per epoch: train on this worker's shard, evaluate on its
share of the validation set, aggregate counts over ranks, report metrics (+ a checkpoint from
rank 0), and stop early when asked. The numeric work lives in :mod:`cnn_ray.train.loop`, the
sessions (Ray Train or a Tune trial) in :mod:`cnn_ray.train.sessions`, the batches in
:mod:`cnn_ray.train.feeds`, a time budget's plan in :mod:`cnn_ray.train.budget_run`.
"""

from __future__ import annotations

import time

IMPORT_STARTED = time.time()  # start-up breakdown in events.jsonl: this module's imports begin

import dataclasses
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import ray.train
import ray.train.torch

from cnn_ray.config import TrainConfig
from cnn_ray.data.preprocess import EvalTransform
from cnn_ray.io import append_jsonl, is_uri
from cnn_ray.recipe.apply import build_step_hooks, eval_model, tta_predictor
from cnn_ray.recipe.tta import tta_views
from cnn_ray.train.budget import BudgetTooSmall
from cnn_ray.train.budget_run import open_budget, val_share, write_reported_error
from cnn_ray.train.checkpoint import load_checkpoint, save_checkpoint
from cnn_ray.train.finetune import record_pretrained
from cnn_ray.train import parts as parts_lib
from cnn_ray.train.inputs import DataSummary, WorkerInputs
from cnn_ray.train.loop import (
    EpochStats,
    TrainProgress,
    distributed_reduce,
    evaluate,
    train_one_epoch,
)
from cnn_ray.train.parts import TrainParts
from cnn_ray.train.feeds import _MemoryFeed, _StreamFeed, _with_fault, open_feed  # noqa: F401
from cnn_ray.train.sessions import (RUN_CHECKPOINT_PREFIX, RayTrainSession,  # noqa: F401
                                    Session, TuneTrialSession, latest_run_checkpoint,
                                    run_checkpoints)
from cnn_ray.watch import EtaProgress, RunWatch, format_duration, say


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point for ``TorchTrainer(train_loop_per_worker=...)``: :func:`run_worker` with
    :class:`RayTrainSession`."""
    run_worker(loop_config, RayTrainSession())


def train_in_tune_trial(loop_config: dict[str, Any]) -> None:
    """One-worker training in the calling Tune trial's process: :func:`run_worker` with
    :class:`TuneTrialSession` (what :func:`cnn_ray.tune.trial.run_trial` calls for one-worker
    trials on the memory cache)."""
    inputs = WorkerInputs.from_dict(loop_config)
    run_worker(loop_config, TuneTrialSession(inputs.run_dir, inputs.config.run.keep_checkpoints))


def run_worker(loop_config: dict[str, Any], session: Session) -> None:
    """The training of one worker, whatever runs it (``session``: :class:`RayTrainSession` or
    :class:`TuneTrialSession`).

    ``loop_config`` is :meth:`WorkerInputs.to_dict` (the config, the data summary, the run dir
    for the metrics and events files, the object refs of ``data.cache: memory``, the whitening
    filters and the test hook ``fault_injection``); it is rebuilt and validated here. The
    recipe's switches are applied by :mod:`cnn_ray.recipe.apply`: the model in
    :func:`build_parts`, the step hooks (MixUp, EMA), the epoch-start freeze of the whitening
    bias, and the evaluation of the EMA weights with test-time augmentation.
    """
    entered = time.time()
    inputs = WorkerInputs.from_dict(loop_config)
    cfg = inputs.config
    rank, world = session.rank, session.world
    log = _rank0_logger(rank)
    parts = build_parts(cfg, inputs.data, rank, world, precision=inputs.precision,
                        stem_weights=inputs.stem_weights, session=session)
    progress = restore(parts, cfg, log, session=session)
    if rank == 0:
        record_pretrained(parts.finetune.report, inputs.run_dir, log,
                          resumed_from_epoch=progress.start_epoch)
    log(f"precision {parts.settings.precision} (asked {cfg.precision.dtype}) on {parts.device}, "
        f"{parts.threads} threads, channels_last={cfg.model.channels_last}")
    _record_start(inputs, rank, world, progress.start_epoch, entered)
    feed = open_feed(inputs, rank, world, parts.device, log, session=session)
    smoke = cfg.run.steps_cap()  # steps and validation batches per epoch (None: all)
    hooks = build_step_hooks(cfg, parts.model, parts.ema, inputs.data.num_classes,
                             seed=cfg.run.seed + rank,
                             start_step=progress.start_epoch * parts.steps_per_epoch,
                             steps_per_epoch=parts.steps_per_epoch)
    budget = open_budget(  # optim.budget_s: the plan sets planned_epochs (None: no budget)
        cfg, steps_per_epoch=parts.steps_per_epoch, scheduler=parts.scheduler, hooks=hooks,
        val_images=val_share(inputs.data.num_val, world, smoke, cfg.optim.eval_batch_size),
        rank=rank, device=parts.device, reduce=distributed_reduce, log=log, started=entered,
        start_epoch=progress.start_epoch, state=progress.budget)
    if budget is not None:
        hooks = dataclasses.replace(hooks, after_step=[*hooks.after_step, budget.after_step])
    planned_epochs = budget.planned_epochs if budget else cfg.optim.epochs

    watch = RunWatch(inputs.run_dir, progress.start_epoch, log) if rank == 0 else None
    epoch = progress.start_epoch
    try:
        while epoch < planned_epochs:
            begin_epoch(parts, cfg, epoch, world, log, session=session)
            steps = budget.start_epoch(epoch, planned_epochs, smoke) if budget else smoke
            metrics = run_epoch(
                parts, feed, inputs, epoch, rank, world,
                hooks=_with_progress(hooks, cfg, parts, epoch, rank, log, planned_epochs),
                max_steps=smoke, train_steps=steps, log=log,
                epochs=(lambda: budget.planned_epochs) if budget else (lambda: planned_epochs))
            if budget is not None:  # re-plan from the budget left
                metrics.update(budget.end_epoch(epoch, metrics))
                planned_epochs = budget.planned_epochs
            if not parts.per_step:
                parts.scheduler.step(metrics["val_loss"])
            metrics.update(progress.update(metrics["val_top1"]))
            stop = progress.should_stop(cfg.optim.early_stopping_patience)
            if rank == 0:
                log(_format_metrics(metrics, size=cfg.data.progressive.enabled))
                if inputs.run_dir:
                    _append_jsonl(inputs.run_dir, "metrics.jsonl", metrics)
            last = epoch + 1 >= planned_epochs or stop
            _report(inputs, metrics, rank, parts, best=progress.best,
                    save=(epoch + 1) % cfg.run.checkpoint_every == 0 or last, session=session,
                    budget=budget.state(epoch + 1) if budget else None)
            if watch is not None:
                # after the checkpoint is committed: plotting and TensorBoard (~1 s) must not
                # widen the window in which a fault loses the epoch (benchmarks/faults.py
                # node_removed)
                watch.epoch(metrics)
            epoch += 1
            if stop:
                log(f"early stopping: val_top1 has not improved for {progress.stale} epochs")
                break
    except BudgetTooSmall as exc:
        if watch is not None:
            watch.close()
        if isinstance(session, TuneTrialSession):
            raise
        # Ray Train: rank 0 writes the message to budget.json and every rank ends; the driver
        # raises it as one ConfigError (launch.run_training), no worker traceback in its log
        if rank == 0 and inputs.run_dir:
            write_reported_error(inputs.run_dir, exc)
        return
    if budget is not None:
        budget.report(inputs.run_dir, epoch)
    if watch is not None:
        watch.close()


def run_epoch(parts: "TrainParts", feed, inputs: WorkerInputs, epoch: int, rank: int, world: int,
              *, hooks, max_steps: Optional[int], log, train_steps: Optional[int] = None,
              epochs: Optional[Callable[[], int]] = None) -> dict[str, Any]:
    """Train one epoch (0-based ``epoch``) on this worker's batches with the recipe's step
    ``hooks``, evaluate its share of the validation set (the EMA weights when kept, with
    test-time augmentation on the epochs ``eval.tta_epochs`` says) and return the epoch's
    metrics summed over ranks (``tta_views``: forward passes per validation image;
    ``train_image_size``: the side trained, ``data.crop_size_at(epoch, epochs())``, else the
    stored side). ``max_steps``: smoke runs' steps and validation batches per epoch (None:
    all); ``train_steps``: the training steps' cap (default ``max_steps``; a budget's last
    epoch); ``epochs()``: the run's planned epochs (a budget plans during the first epoch, so
    the epoch's crop side is read before training and the TTA choice after it; default
    ``optim.epochs``)."""
    cfg = inputs.config
    planned = epochs or (lambda: cfg.optim.epochs)
    train_steps = max_steps if train_steps is None else train_steps
    size = cfg.data.crop_size_at(epoch, planned())
    batches = _with_fault(feed.train_batches(epoch, size), inputs.fault, rank, epoch + 1)
    train_stats = train_one_epoch(
        parts.model, batches, parts.optimizer, parts.settings, scheduler=parts.scheduler,
        scheduler_per_step=parts.per_step, scaler=parts.scaler, max_steps=train_steps, log=log,
        hooks=hooks,
    ).reduce(distributed_reduce, parts.device)
    tta = cfg.eval.tta_at(epoch, planned())
    val_stats = evaluate(eval_model(parts.model, parts.ema), feed.val_batches(), parts.settings,
                         max_batches=max_steps,
                         predict=tta_predictor(tta)).reduce(distributed_reduce, parts.device)
    metrics = _epoch_metrics(epoch, train_stats, val_stats, inputs.data.num_classes,
                             parts.optimizer, world)
    metrics.update(bad_inputs=_bad_inputs(inputs, rank), tta_views=tta_views(tta),
                   train_image_size=int(size or inputs.data.image_shape[0]))
    return metrics


def _with_progress(hooks, cfg: TrainConfig, parts: TrainParts, epoch: int, rank: int, log,
                   epochs: Optional[int] = None):
    """``hooks`` plus, on rank 0, an after-step hook that prints the epoch's progress with the
    time left in the epoch and in the run's training steps every ``run.progress_every_s``
    seconds (:class:`~cnn_ray.watch.EtaProgress`; evaluation time is not in the estimate).
    ``epochs``: the run's planned epochs (default ``optim.epochs``)."""
    if rank != 0 or not cfg.run.progress_every_s:
        return hooks
    spe, epochs = parts.steps_per_epoch, epochs or cfg.optim.epochs

    def run_left(done: int, rate: float) -> str:
        steps_left = (epochs - epoch - 1) * spe + max(0, spe - done)
        return f"run ETA {format_duration(steps_left / rate) if rate > 0 else '?'} (training)"

    bar = EtaProgress(f"epoch {epoch + 1}/{epochs} step", spe, every_s=cfg.run.progress_every_s,
                      log=log, extra=run_left)
    return dataclasses.replace(hooks, after_step=[*hooks.after_step, bar.update])


# ------------------------------------------------------------------------------ build, restore
def build_parts(cfg: TrainConfig, data: DataSummary, rank: int, world: int, *,
                precision: Optional[str] = None, stem_weights=None, session: Session) -> TrainParts:
    """:func:`cnn_ray.train.parts.build_parts` on the session's device with its wrapping
    (Ray Train: its device, ``prepare_model``, DDP only when world > 1)."""
    return parts_lib.build_parts(cfg, data, rank, world, device=session.device(cfg),
                                 wrap=session.wrap, precision=precision,
                                 stem_weights=stem_weights)


def restore(parts: TrainParts, cfg: TrainConfig, log, *, session: Session) -> TrainProgress:
    """Load the session's latest checkpoint (if any) into ``parts``
    (:func:`cnn_ray.train.parts.restore_parts`: over the ``model.pretrained`` weights; a
    one-cycle schedule refitted to the current ``optim.epochs``). Returns where training
    stands (epochs done, best ``val_top1``, epochs without improvement)."""
    checkpoint = session.get_checkpoint()
    if checkpoint is None:
        return TrainProgress()
    with checkpoint.as_directory() as d:
        state = load_checkpoint(d)
    return parts_lib.restore_parts(parts, cfg, state, log)


def begin_epoch(parts: TrainParts, cfg: TrainConfig, epoch: int, world: int, log, *,
                session: Session) -> None:
    """:func:`cnn_ray.train.parts.begin_epoch` with the session's wrapping (Ray Train: DDP)."""
    parts_lib.begin_epoch(parts, cfg, epoch, world, log,
                          wrap=session.wrap)


def _record_start(inputs: WorkerInputs, rank: int, world: int, start_epoch: int,
                  entered: float) -> None:
    """One ``events.jsonl`` line per worker per (re)start of the group: where it ran, what a
    fault cost (on a storage URI only rank 0 writes: an object there is rewritten whole, ranks
    would race). Start-up breakdown (unix times): the worker process was created, this module's
    imports began, the function was entered (model, optimiser, checkpoint follow until
    ``time``)."""
    run_dir = inputs.run_dir
    if not run_dir or (rank != 0 and is_uri(run_dir)):
        return
    _append_jsonl(run_dir, "events.jsonl",
                  {"event": "start", "rank": rank, "resumed_from_epoch": start_epoch,
                   "world_size": world, "node_id": ray.get_runtime_context().get_node_id(),
                   "pid": os.getpid(),
                   "process_started": _process_started(), "import_started": IMPORT_STARTED,
                   "entered": entered})


# ------------------------------------------------------------------------------ metrics, report
def _bad_inputs(inputs: WorkerInputs, rank: int) -> int:
    """Records left out (listed in ``bad_inputs.jsonl`` of the prepared dir and the run dir);
    with ``data.use_raw`` rank 0 first merges this run's decoding failures into the run dir's
    list (local run dirs only) and counts that."""
    if inputs.data.raw and inputs.run_dir and not is_uri(inputs.run_dir) and rank == 0:
        from cnn_ray.data.pipeline import merge_raw_bad_inputs

        return merge_raw_bad_inputs(inputs.run_dir)
    return int(inputs.data.bad_inputs)


def _epoch_metrics(epoch: int, tr: EpochStats, va: EpochStats, num_classes: int, optimizer,
                   world: int) -> dict[str, float]:
    metrics: dict[str, Any] = {"epoch": epoch + 1}
    metrics.update(tr.summary("train_", num_classes))
    metrics.update(va.summary("val_", num_classes))
    metrics.update(
        images_per_sec=tr.num_images / max(tr.wall_s, 1e-9),
        data_wait_share=tr.data_wait_s / max(tr.wall_s, 1e-9),
        epoch_s=tr.wall_s, eval_s=va.wall_s, val_images=va.num_images,
        train_images=tr.num_images, bad_steps=tr.bad_steps, lr=optimizer.param_groups[0]["lr"],
        world_size=world, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return metrics


def _report(inputs: WorkerInputs, metrics: dict, rank: int, parts: TrainParts, *,
            best: Optional[float], save: bool, session: Session,
            budget: Optional[dict] = None) -> None:
    """Report this epoch's metrics to the session (``ray.train.report``, or Tune's in a trial);
    with ``save``, rank 0 attaches a checkpoint (model, optimiser, schedule, scaler, config,
    class names, normalisation) and every rank waits until it is committed
    (``session.after_checkpoint``; Ray Train: :func:`_wait_until_committed`). The checkpoint
    holds the raw weights and, with ``optim.ema``, the averaged ones (``ema.pt``), and the
    ``budget`` plan (:meth:`cnn_ray.train.budget_run.BudgetRun.state`) in its meta."""
    if not save:
        session.report(metrics, None)
        return
    tmp = None
    checkpoint: Optional[str] = None
    if rank == 0:
        data = inputs.data
        tmp = tempfile.mkdtemp(prefix="cnn_ray_ckpt_")
        path = save_checkpoint(
            Path(tmp) / "checkpoint", model=parts.model, epoch=metrics["epoch"],
            config=inputs.config.to_dict(), class_names=list(data.class_names),
            mean=list(data.mean), std=list(data.std), optimizer=parts.optimizer,
            scheduler=parts.scheduler, scaler=parts.scaler, best=best, metrics=metrics,
            ema=parts.ema, bands=data.bands,
            eval_transform=EvalTransform.of(inputs.config).to_dict(), budget=budget,
        )
        checkpoint = str(path)
    try:
        session.report(metrics, checkpoint)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    session.after_checkpoint()


def _format_metrics(m: dict, *, size: bool = False) -> str:
    """The rank-0 line of an epoch; ``size``: with its training side (``data.progressive``)."""
    parts = [f"epoch {m['epoch']}"] + ([f"size {m['train_image_size']}px"] if size else [])
    for k in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
        if k in m:
            parts.append(f"{k} {m[k]:.4f}")
    parts.append(f"images_per_sec {m['images_per_sec']:.0f}")
    parts.append(f"data_wait {100 * m['data_wait_share']:.1f}%")
    parts.append(f"{m['epoch_s']:.1f}s")
    return " | ".join(parts)


def _process_started() -> Optional[float]:
    """This process's creation time (unix seconds, psutil; a Ray dependency), or None."""
    try:
        import psutil

        return psutil.Process(os.getpid()).create_time()
    except Exception:  # noqa: BLE001 (diagnostics only)
        return None


def _append_jsonl(run_dir: str, name: str, record: dict) -> None:
    append_jsonl(run_dir, name, {"time": time.time(), **record})


def _rank0_logger(rank: int):
    """``log(msg)``: one ``[cnn_ray]`` line on rank 0 (:func:`cnn_ray.watch.say`: once in the
    job log, where ``print`` on a Train worker appears twice), nothing on other ranks."""
    def log(msg: str) -> None:
        if rank == 0:
            say(msg)
    return log
