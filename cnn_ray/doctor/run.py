"""``cnn-ray doctor`` / ``jobs/doctor.py``: a short, bounded profile of a recipe and its verdict
(Ray glue).

What it runs, in this (the driver's) process: the recipe's prepare step (reused when up to
date), its training data path (``data.cache: memory``: the prepared arrays augmented in the
training process, as a Train worker does; ``none``: the recipe's Ray Data pipeline on the
current cluster, limited to the CPUs a Train run leaves it), the worker's own parts (model with
the recipe's switches, optimiser, schedule, EMA) for ``warmup + steps`` steps split into their
phases (:func:`cnn_ray.doctor.profile.profile_steps`), a few evaluation batches, and the pure
compute limit (:func:`cnn_ray.benchmark.synthetic_images_per_sec`) of the recipe and of each
kernel change the hardware supports; with more than one worker, the gradient all-reduce over
actors placed as the run's workers (:mod:`cnn_ray.doctor.allreduce`).
:func:`cnn_ray.doctor.verdict.diagnose` turns the figures into the verdict. Not measured here:
Ray Train's worker start-up.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Optional

import numpy as np
import torch

from cnn_ray.benchmark import hardware_summary, object_store_spilled_bytes, synthetic_images_per_sec
from cnn_ray.config import TrainConfig
from cnn_ray.config_io import apply_overrides
from cnn_ray.doctor.profile import hardware_support, profile_steps
from cnn_ray.doctor.verdict import Measurements, diagnose
from cnn_ray.io import atomic_write_json
from cnn_ray.recipe.apply import build_step_hooks, eval_model, tta_predictor
from cnn_ray.train.data_modes import training_data
from cnn_ray.train.loop import evaluate
from cnn_ray.train.parts import build_parts
from cnn_ray.watch import say

EVAL_BATCHES = 3
SYNTHETIC_STEPS = 8  # median of 8 steps: 4 let one slow step move the pure-compute limit by 20%+
# At least this many images in every timed window: the 2-core box's speed drifts by 20-40% over
# seconds (one process alone: 700-1,270 images/s step to step), so the 20 steps of batch 8
# (0.4 s) measured whichever phase they fell into.
MIN_TIMED_IMAGES = 2048


def timed_steps(steps: int, batch_size: int, min_images: int = MIN_TIMED_IMAGES) -> int:
    """``steps``, raised so that the timed steps see at least ``min_images`` images."""
    return max(int(steps), -(-int(min_images) // max(1, int(batch_size))))


def _device(cfg: TrainConfig) -> torch.device:
    return torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")


def _variant(cfg: TrainConfig, override: str) -> TrainConfig:
    return TrainConfig.from_dict(apply_overrides(cfg.to_dict(), [override]), check_paths=False)


def candidate_overrides(cfg: TrainConfig, precision: str, hw: dict) -> list[str]:
    """Kernel and batch changes worth measuring on this hardware: bf16 where it is native and
    not in use, channels_last when off, and a batch 8x larger when the per-worker batch is at
    most 128 images."""
    out = []
    native_bf16 = hw.get("cuda_native_bf16") if "cuda_capability" in hw else hw.get("cpu_native_bf16")
    if precision != "bf16" and native_bf16:
        out.append("precision.dtype=bf16")
    if not cfg.model.channels_last:
        out.append("model.channels_last=true")
    if cfg.per_worker_batch_size() <= 128:
        out.append(f"optim.batch_size={8 * cfg.optim.batch_size}")
    return out


def _memory_batches(cfg: TrainConfig, data, device: torch.device):
    """(train, val) batch iterables of ``data.cache: memory``: the prepared arrays, augmented in
    this process (:class:`~cnn_ray.data.memory.InMemoryShard`, on a GPU the device path)."""
    from cnn_ray.data.memory import InMemoryShard, read_prepared_arrays, shard_for_device

    p = data.prepared
    resize, crop = cfg.eval_sizes()
    # the training side (data.progressive: the ramp's end size, that of "epoch" epochs)
    end = cfg.data.crop_size_at(cfg.optim.epochs, cfg.optim.epochs)
    always = cfg.data.progressive.enabled
    train = shard_for_device(InMemoryShard.from_arrays(read_prepared_arrays(p.train_files, p.image_shape)),
                             device, cfg.augment, out_size=end, always_resize=always)
    val = shard_for_device(InMemoryShard.from_arrays(read_prepared_arrays(
        p.val_files, p.image_shape, image_size=crop, resize_size=resize)), device)
    tr = train.batches(cfg.per_worker_batch_size(), augment=cfg.augment, seed=cfg.run.seed,
                       shuffle=cfg.data.shuffle != "none",
                       prefetch=max(1, cfg.data.prefetch_batches), out_size=end,
                       always_resize=always)
    return tr, val.batches(cfg.optim.eval_batch_size, shuffle=False, prefetch=1), None


def _streaming_batches(cfg: TrainConfig, data, device: torch.device):
    """(train, val, train Dataset) of ``data.cache: none``: the recipe's Ray Datasets, with
    the CPUs a Train run would leave Ray Data (the cluster's, less the workers' reservation)."""
    import ray
    from ray.data import ExecutionResources

    ds = data.datasets(cfg, None)
    spare = ray.cluster_resources().get("CPU", 1.0) - cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    for d in ds.values():
        d.context.execution_options.resource_limits = ExecutionResources(
            cpu=max(cfg.data.pipeline_cpus, spare))
    local = cfg.data.shuffle == "local" and cfg.data.shuffle_buffer
    tr = ds["train"].iter_torch_batches(
        batch_size=cfg.per_worker_batch_size(), prefetch_batches=cfg.data.prefetch_batches,
        local_shuffle_buffer_size=cfg.data.shuffle_buffer if local else None,
        local_shuffle_seed=cfg.run.seed if local else None, pin_memory=device.type == "cuda")
    val = ds["val"].iter_torch_batches(batch_size=cfg.optim.eval_batch_size,
                                       prefetch_batches=cfg.data.prefetch_batches)
    return tr, val, ds["train"]


def measure(cfg: TrainConfig, *, steps: int = 20, warmup: int = 3,
            trace_dir: Optional[str] = None, log=say,
            min_images: int = MIN_TIMED_IMAGES) -> tuple[Measurements, dict]:
    """Profile ``cfg`` (see the module docstring); returns the :class:`Measurements` and the
    extra figures for the JSON (``ray_data_stats``, ``first_step_s``, ``prepare_s``, ...).
    Every timed window (the training steps, each pure-compute figure) runs at least ``steps``
    (:data:`SYNTHETIC_STEPS` for pure compute) steps and ``min_images`` images."""
    from cnn_ray.data.prepare import prepare_data
    from cnn_ray.train.launch import resolve_group_precision

    t0 = time.perf_counter()
    prepared = prepare_data(cfg, progress=False)
    prepare_s = time.perf_counter() - t0
    data = training_data(cfg, prepared)
    summary, device = data.summary, _device(cfg)
    precision = resolve_group_precision(cfg)
    t0 = time.perf_counter()
    parts = build_parts(cfg, summary, 0, 1, device=device, precision=precision,
                        stem_weights=data.stem_weights(cfg))
    build_s = time.perf_counter() - t0
    hooks = build_step_hooks(cfg, parts.model, parts.ema, summary.num_classes, seed=cfg.run.seed,
                             steps_per_epoch=parts.steps_per_epoch)
    feed = _memory_batches if cfg.data.cache == "memory" else _streaming_batches
    train_batches, val_batches, stream = feed(cfg, data, device)
    timed = timed_steps(steps, cfg.per_worker_batch_size(), min_images)
    log(f"doctor: {warmup} + {timed} training steps of {cfg.model.name}, batch "
        f"{cfg.per_worker_batch_size()}, {precision}, channels_last={cfg.model.channels_last}, "
        f"data.cache={cfg.data.cache} on {device}")
    prof = profile_steps(parts, train_batches, steps=timed, warmup=warmup, hooks=hooks,
                         trace_dir=trace_dir)
    ev = evaluate(eval_model(parts.model, parts.ema), val_batches, parts.settings,
                  max_batches=EVAL_BATCHES, predict=tta_predictor(cfg.eval.tta_at(0, cfg.optim.epochs)))
    hw = hardware_support(device)
    if stream is not None:
        _wait_for_idle_tasks()
    log("doctor: pure compute limit and candidate changes on synthetic data")
    compute = synthetic_images_per_sec(
        cfg, summary.num_classes, steps=timed_steps(SYNTHETIC_STEPS, cfg.per_worker_batch_size(), min_images),
        warmup=2, precision=precision)
    candidates = {}
    for override in candidate_overrides(cfg, precision, hw):
        v = _variant(cfg, override)
        candidates[override] = synthetic_images_per_sec(
            v, summary.num_classes, steps=timed_steps(SYNTHETIC_STEPS, v.per_worker_batch_size(), min_images),
            warmup=2,
            precision=v.precision.dtype if override.startswith("precision.") else precision)
    loop_candidates = {}
    batch = next((o for o in candidates if o.startswith("optim.batch_size=")), None)
    if batch and cfg.data.cache == "memory":
        log(f"doctor: the training loop at {batch}")
        try:
            loop_candidates[batch] = _loop_images_per_sec(
                _variant(cfg, batch), data, summary, device, precision, steps=steps,
                warmup=warmup, min_images=min_images)
        except ValueError as exc:  # too little data for the larger batch: estimate it instead
            log(f"doctor: {batch} not measured in the loop ({exc})")
    allreduce_s, allreduce_note = None, "one worker: no gradient exchange"
    if cfg.scaling.num_workers > 1:
        from cnn_ray.doctor.allreduce import measure_allreduce

        log(f"doctor: gradient all-reduce over {cfg.scaling.num_workers} ranks")
        numel = sum(p.numel() for p in parts.model.parameters() if p.requires_grad)
        allreduce_s, allreduce_note = measure_allreduce(
            numel, num_workers=cfg.scaling.num_workers, cpus_per_worker=cfg.scaling.cpus_per_worker,
            use_gpu=device.type == "cuda", strategy=cfg.scaling.placement_strategy)
    step_s = cfg.per_worker_batch_size() / prof["images_per_sec"]
    m = Measurements(
        batch_size=cfg.per_worker_batch_size(), images_per_sec=prof["images_per_sec"],
        phases={**prof["phases"], "allreduce": allreduce_s}, compute_images_per_sec=compute,
        candidates=candidates, loop_candidates=loop_candidates, precision=precision,
        channels_last=cfg.model.channels_last,
        cache=cfg.data.cache, use_raw=cfg.data.use_raw, data_cpus=cfg.data.data_cpus,
        prefetch_batches=cfg.data.prefetch_batches, cache_max_mb=cfg.data.cache_max_mb,
        dataset_mb=(summary.num_train + summary.num_val) * int(np.prod(summary.image_shape)) / 1e6,
        num_workers=cfg.scaling.num_workers, decoupled=cfg.optim.decoupled,
        epochs=cfg.optim.epochs, num_train=summary.num_train, num_val=summary.num_val,
        eval_images_per_sec=ev.num_images / max(ev.wall_s, 1e-9) if ev.num_images else None,
        startup_s=prepare_s + build_s + max(0.0, (prof["first_step_s"] or 0.0) - step_s),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        memory_total_mb=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20,
        spilled_bytes=max(0, object_store_spilled_bytes()), hardware=hw,
        **_gpu_memory(device))
    extra = {"prepare_s": prepare_s, "build_s": build_s, "first_step_s": prof["first_step_s"],
             "timed_steps": prof["steps"], "ray_data_stats": _stats(stream),
             "allreduce_note": allreduce_note}
    return m, extra


def _loop_images_per_sec(cfg: TrainConfig, data, summary, device, precision: str, *,
                         steps: int, warmup: int, min_images: int) -> float:
    """Images/s of the training loop itself (model, optimiser, step hooks, the memory cache's
    batches) for ``cfg``: how a larger batch is measured where pure compute alone misleads
    (the loop's own costs per step and per image)."""
    parts = build_parts(cfg, summary, 0, 1, device=device, precision=precision,
                        stem_weights=data.stem_weights(cfg))
    hooks = build_step_hooks(cfg, parts.model, parts.ema, summary.num_classes,
                             seed=cfg.run.seed, steps_per_epoch=parts.steps_per_epoch)
    train_batches, _, _ = _memory_batches(cfg, data, device)
    prof = profile_steps(parts, train_batches, hooks=hooks, warmup=warmup,
                         steps=timed_steps(steps, cfg.per_worker_batch_size(), min_images))
    return prof["images_per_sec"]


def _wait_for_idle_tasks(timeout_s: float = 15.0, poll_s: float = 0.1) -> float:
    """Wait until no Ray task holds CPUs (up to ``timeout_s``); returns the seconds waited.

    The streamed passes were closed, but decode/augment tasks already running finish on their
    own and share the cores the pure-compute measurement needs (two runs of the same recipe
    measured 729 and 1,562 images/s before this wait; the box's own drift is part of that)."""
    import ray

    t0 = time.perf_counter()
    total = ray.cluster_resources().get("CPU", 0.0)
    while time.perf_counter() - t0 < timeout_s:
        if ray.available_resources().get("CPU", 0.0) >= total - 1e-6:
            break
        time.sleep(poll_s)
    return time.perf_counter() - t0


def _gpu_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "gpu_total_mb": torch.cuda.get_device_properties(device).total_memory / 2**20}


def _stats(ds) -> Optional[str]:
    """Ray Data's per-operator summary of the streamed training pass (first 4000 characters)."""
    if ds is None:
        return None
    try:
        return ds.stats()[:4000]
    except Exception as exc:  # noqa: BLE001 (diagnostics only)
        return f"unavailable ({type(exc).__name__})"


def doctor_main(cfg: TrainConfig, *, steps: int = 20, warmup: int = 3,
                min_images: int = MIN_TIMED_IMAGES,
                json_path: Optional[str] = None, trace_dir: Optional[str] = None) -> int:
    """CLI entry: measure, print the split, the verdict and the suggestions; write the JSON
    (``measurements``, ``diagnosis``, ``extra``, ``hardware``, ``doctor_s``) when asked."""
    started = time.perf_counter()
    say(f"doctor: hardware: {hardware_summary()}")
    m, extra = measure(cfg, steps=steps, warmup=warmup, trace_dir=trace_dir,
                       min_images=min_images)
    d = diagnose(m)
    say(f"doctor: {m.images_per_sec:.0f} images/s training, pure compute "
        f"{m.compute_images_per_sec:.0f}; per step: " + ", ".join(
            f"{k} {1000 * v:.1f} ms ({100 * m.share(k):.0f}%)"
            for k, v in m.phases.items() if v is not None))
    if m.phases.get("allreduce") is not None or cfg.scaling.num_workers > 1:
        say(f"doctor: gradient all-reduce: " + (f"{1000 * m.phases['allreduce']:.1f} ms per step "
            if m.phases.get("allreduce") is not None else "") + f"({extra['allreduce_note']})")
    for override, ips in m.candidates.items():
        say(f"doctor: pure compute with {override}: {ips:.0f} images/s")
    print(d.text(), flush=True)
    took = time.perf_counter() - started
    say(f"doctor: done in {took:.1f} s" + (f"; trace in {trace_dir}/trace.json" if trace_dir else ""))
    if json_path:
        from dataclasses import asdict

        atomic_write_json(json_path, {"measurements": asdict(m), "diagnosis": d.to_dict(),
                                      "extra": extra, "hardware": hardware_summary(),
                                      "doctor_s": took}, indent=2, default=str)
    return 0
