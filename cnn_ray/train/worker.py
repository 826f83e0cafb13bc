"""The per-worker training function that Ray Train runs on every worker (Ray glue).

It orchestrates and delegates: rebuild the typed config, build model/optimiser/schedule,
restore the last checkpoint, then per epoch: train on this worker's shard, evaluate on its
share of the validation set, aggregate counts over ranks, report metrics (+ a checkpoint from
rank 0), and stop early when asked. The numeric work lives in :mod:`cnn_ray.train.loop`.
"""

from __future__ import annotations

import time

IMPORT_STARTED = time.time()  # start-up breakdown in events.jsonl: this module's imports begin

import os
import resource
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

import ray.train
import ray.train.torch

from cnn_ray.config import TrainConfig
from cnn_ray.models import create_model
from cnn_ray.train.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from cnn_ray.train.loop import (
    EpochStats,
    StepSettings,
    distributed_reduce,
    evaluate,
    train_one_epoch,
)
from cnn_ray.train.optim import (build_optimizer, build_scheduler, schedule_total_steps,
                                 steps_per_epoch, stretch_schedule)
from cnn_ray.train.runfiles import append_jsonl, is_uri
from cnn_ray.train.techniques import apply_channels_last, make_grad_scaler, resolve_precision


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point for ``TorchTrainer(train_loop_per_worker=...)``.

    ``loop_config`` keys: ``config`` (``TrainConfig.to_dict()``), ``data_meta`` (class_names,
    mean, std, num_train, num_val, image_shape, bad_inputs, raw), ``run_dir`` (local path or
    storage URI for the metrics and events files, or None), optional ``memory``
    (``data.cache: memory``: ``{"train", "val"}`` object refs of the prepared arrays; no Ray
    Datasets then) and ``fault_injection`` (tests: kill this worker process once).
    """
    entered = time.time()
    cfg = TrainConfig.from_dict(loop_config["config"], source="train_loop_config", check_paths=False)
    meta = loop_config["data_meta"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.scaling.torch_threads or max(1, int(cfg.scaling.cpus_per_worker))
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.run.seed + rank)
    device = ray.train.torch.get_device()
    log = _rank0_logger(rank)

    num_classes = len(meta["class_names"])
    model = create_model(cfg.model.name, num_classes=num_classes,
                         in_channels=meta["image_shape"][2], **cfg.model.knobs())
    if cfg.model.channels_last:
        apply_channels_last(model)
    model = ray.train.torch.prepare_model(model)
    optimizer = build_optimizer(model, cfg.optim)
    micro_bs = cfg.per_worker_batch_size()
    spe = steps_per_epoch(meta["num_train"], world, micro_bs, cfg.optim.grad_accum_steps)
    if cfg.run.smoke:
        spe = min(spe, 2)
    scheduler, per_step = build_scheduler(optimizer, cfg.optim, spe)
    scaler = make_grad_scaler(device, resolve_precision(cfg.precision.dtype, device))

    start_epoch, best, stale = 0, None, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(d)
        planned = schedule_total_steps(scheduler)  # the current config's budget
        restore_training_state(state, model=model, optimizer=optimizer, scheduler=scheduler,
                               scaler=scaler)
        previous = stretch_schedule(scheduler, planned)
        if previous is not None:
            log(f"one-cycle schedule refitted to optim.epochs={cfg.optim.epochs}: "
                f"{previous} -> {planned} total steps")
        start_epoch, best = state.epoch, state.best
        stale = int(state.meta.get("metrics", {}).get("epochs_without_improvement", 0))
        log(f"resumed from checkpoint at epoch {start_epoch}")

    precision = resolve_precision(cfg.precision.dtype, device)
    log(f"precision {precision} (asked {cfg.precision.dtype}) on {device}, {threads} threads, "
        f"channels_last={cfg.model.channels_last}")
    settings = StepSettings(
        device=device, precision=precision, mean=meta["mean"], std=meta["std"],
        channels_last=cfg.model.channels_last, label_smoothing=cfg.optim.label_smoothing,
        grad_accum_steps=cfg.optim.grad_accum_steps, grad_clip_norm=cfg.optim.grad_clip_norm,
        max_bad_steps=cfg.optim.max_bad_steps, log_every=cfg.run.log_every,
    )
    fault = loop_config.get("fault_injection")
    run_dir = loop_config.get("run_dir")
    # one line per worker per (re)start of the group: where it ran, what a fault cost (on a
    # storage URI only rank 0 writes: an object there is rewritten whole, ranks would race)
    if run_dir and (rank == 0 or not is_uri(run_dir)):
        _append_jsonl(run_dir, "events.jsonl",
                      {"event": "start", "rank": rank, "resumed_from_epoch": start_epoch,
                       "world_size": world, "node_id": ray.get_runtime_context().get_node_id(),
                       # start-up breakdown (unix times): the worker process was created, this
                       # module's imports began, the function was entered (model, optimiser,
                       # checkpoint follow until "time")
                       "process_started": _process_started(), "import_started": IMPORT_STARTED,
                       "entered": entered})
    if loop_config.get("memory") is not None:  # data.cache: memory
        cached = _from_object_store(loop_config["memory"], rank, world, log)
        train_shard = val_shard = None
    else:
        cached = None
        train_shard = ray.train.get_dataset_shard("train")
        val_shard = ray.train.get_dataset_shard("val")

    for epoch in range(start_epoch, cfg.optim.epochs):
        if cached is not None:
            batches = cached[0].batches(
                micro_bs, augment=cfg.augment, seed=cfg.run.seed, epoch=epoch, rank=rank,
                shuffle=cfg.data.shuffle != "none", prefetch=max(1, cfg.data.prefetch_batches))
        else:
            batches = train_shard.iter_torch_batches(
                batch_size=micro_bs, prefetch_batches=cfg.data.prefetch_batches, drop_last=False,
                local_shuffle_buffer_size=(cfg.data.shuffle_buffer or None)
                if cfg.data.shuffle == "local" else None,
                local_shuffle_seed=cfg.run.seed * 100_003 + epoch * 1_009 + rank
                if cfg.data.shuffle == "local" and cfg.data.shuffle_buffer else None,
                pin_memory=device.type == "cuda",
            )
        batches = _with_fault(batches, fault, rank, epoch)
        max_steps = 2 if cfg.run.smoke else None
        train_stats = train_one_epoch(
            model, batches, optimizer, settings, scheduler=scheduler, scheduler_per_step=per_step,
            scaler=scaler, max_steps=max_steps, log=log,
        ).reduce(distributed_reduce)
        val_batches = cached[1].batches(cfg.optim.eval_batch_size, shuffle=False, prefetch=1) \
            if cached is not None else val_shard.iter_torch_batches(
                batch_size=cfg.optim.eval_batch_size, prefetch_batches=cfg.data.prefetch_batches)
        val_stats = evaluate(
            model, val_batches, settings, max_batches=2 if cfg.run.smoke else None,
        ).reduce(distributed_reduce)
        metrics = _epoch_metrics(epoch, train_stats, val_stats, num_classes, optimizer, world)
        metrics["bad_inputs"] = int(meta.get("bad_inputs", 0))  # records left out (listed in
        # bad_inputs.jsonl of the prepared dir and the run dir)
        if meta.get("raw") and run_dir and not is_uri(run_dir) and rank == 0:
            from cnn_ray.data.pipeline import merge_raw_bad_inputs  # use_raw: decode failures
            metrics["bad_inputs"] = merge_raw_bad_inputs(run_dir)
        if not per_step:
            scheduler.step(metrics["val_loss"])
        improved = best is None or metrics["val_top1"] > best
        best = metrics["val_top1"] if improved else best
        stale = 0 if improved else stale + 1
        metrics.update(best_val_top1=best, epochs_without_improvement=stale)
        stop = (cfg.optim.early_stopping_patience is not None
                and stale >= cfg.optim.early_stopping_patience)
        last = epoch + 1 == cfg.optim.epochs or stop
        if rank == 0:
            log(_format_metrics(metrics))
            if run_dir:
                _append_jsonl(run_dir, "metrics.jsonl", metrics)
        _report(cfg, metrics, rank, save=(epoch + 1) % cfg.run.checkpoint_every == 0 or last,
                model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, best=best,
                meta=meta)
        if stop:
            log(f"early stopping: val_top1 has not improved for {stale} epochs")
            break


def _from_object_store(refs: dict, rank: int, world: int, log):
    """``data.cache: memory``: this worker's share of the arrays the driver put (zero-copy)."""
    from cnn_ray.data.memory import InMemoryShard

    t0 = time.perf_counter()
    train = InMemoryShard.from_arrays(ray.get(refs["train"]), rank=rank, world=world, equal=True)
    val = InMemoryShard.from_arrays(ray.get(refs["val"]), rank=rank, world=world, equal=False)
    log(f"data in memory: {len(train)} train + {len(val)} val images per worker "
        f"({(train.nbytes + val.nbytes) / 1e6:.0f} MB) in {time.perf_counter() - t0:.2f}s")
    return train, val


def _epoch_metrics(epoch: int, tr: EpochStats, va: EpochStats, num_classes: int, optimizer,
                   world: int) -> dict[str, float]:
    metrics: dict[str, Any] = {"epoch": epoch + 1}
    metrics.update(tr.summary("train_", num_classes))
    metrics.update(va.summary("val_", num_classes))
    metrics.update(
        images_per_sec=tr.num_images / max(tr.seconds, 1e-9),
        data_wait_share=tr.data_wait_seconds / max(tr.seconds, 1e-9),
        epoch_seconds=tr.seconds, eval_seconds=va.seconds, val_images=va.num_images,
        train_images=tr.num_images, bad_steps=tr.bad_steps, lr=optimizer.param_groups[0]["lr"],
        world_size=world, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return metrics


def _report(cfg: TrainConfig, metrics: dict, rank: int, *, save: bool, model, optimizer, scheduler,
            scaler, best, meta) -> None:
    if not save:
        ray.train.report(metrics)
        return
    tmp = None
    checkpoint = None
    if rank == 0:
        tmp = tempfile.mkdtemp(prefix="cnn_ray_ckpt_")
        path = save_checkpoint(
            Path(tmp) / "checkpoint", model=model, epoch=metrics["epoch"], config=cfg.to_dict(),
            class_names=meta["class_names"], mean=meta["mean"], std=meta["std"],
            optimizer=optimizer, scheduler=scheduler, scaler=scaler, best=best, metrics=metrics,
        )
        checkpoint = ray.train.Checkpoint.from_directory(str(path))
    try:
        ray.train.report(metrics, checkpoint=checkpoint)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    _wait_until_committed(rank)


def _wait_until_committed(rank: int, timeout_s: float = 300.0) -> None:
    """Block every rank until the Train controller has committed the checkpoint just reported
    (``ray.train.get_all_reported_checkpoints(COMMITTED)``). The controller registers reports
    when it next polls the workers; without this barrier a worker killed within that interval
    after a report takes the checkpoint's registration with it, and the restarted group
    resumes one epoch earlier (seen in the killed-worker tests). A timeout or error is logged
    and training goes on: the checkpoint is on storage either way."""
    try:
        ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=timeout_s)
    except Exception as exc:  # noqa: BLE001 (a barrier, not a correctness requirement)
        if rank == 0:
            print(f"[cnn_ray] checkpoint commit not confirmed ({type(exc).__name__}: {exc}); "
                  "continuing", flush=True)


def _format_metrics(m: dict) -> str:
    parts = [f"epoch {m['epoch']}"]
    for k in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
        if k in m:
            parts.append(f"{k} {m[k]:.4f}")
    parts.append(f"images_per_sec {m['images_per_sec']:.0f}")
    parts.append(f"data_wait {100 * m['data_wait_share']:.1f}%")
    parts.append(f"{m['epoch_seconds']:.1f}s")
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
    def log(msg: str) -> None:
        if rank == 0:
            print(f"[cnn_ray] {msg}", flush=True)
    return log


def _with_fault(batches, fault: Optional[dict], rank: int, epoch: int):
    """Test hook: SIGKILL this worker once at (epoch, step) if ``fault`` says so."""
    if not fault or fault.get("rank", 1) != rank or fault.get("epoch", 1) != epoch:
        yield from batches
        return
    marker = Path(fault["marker"])
    for i, batch in enumerate(batches):
        if i == fault.get("step", 1) and not marker.exists():
            marker.write_text(f"killed rank {rank} at epoch {epoch} step {i}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        yield batch
