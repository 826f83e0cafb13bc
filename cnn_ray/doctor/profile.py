"""The doctor's measurements that need no Ray: a training step split into its phases, and what
the hardware supports natively.

:func:`profile_steps` runs the recipe's own step (the parts of :func:`cnn_ray.train.parts.
build_parts`, the recipe's step hooks, :func:`cnn_ray.train.loop.prepare_inputs`, the loop's
optimiser step) on real batches, waiting for the device between phases so each phase's time
is its own (on a GPU that synchronisation costs a little throughput: the figures are a split,
the loop's own images/s is the reference).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from cnn_ray.train.loop import DeviceCounts, StepHooks, _optimizer_step, prepare_inputs
from cnn_ray.train.parts import TrainParts
from cnn_ray.train.techniques import autocast_context, cpu_has_fast_bf16, cuda_has_native_bf16

PHASES = ("data_wait", "host_to_device", "forward", "backward", "optimizer")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_steps(parts: TrainParts, batches: Iterable[dict], *, steps: int, warmup: int = 2,
                  hooks: Optional[StepHooks] = None,
                  trace_dir: Optional[str] = None) -> dict:
    """Time ``warmup + steps`` training steps of ``parts`` on ``batches`` (``{"image": (N, H, W,
    C) uint8, "label": (N,) int64}``), phase by phase.

    Returns ``{"phases": {phase: mean seconds per step}, "images_per_sec": images / wall time
    of the timed steps, "steps": timed steps, "first_step_s": the first warm-up step's seconds
    (kernel selection, compilation)}``. ``trace_dir``: also record the timed steps with
    ``torch.profiler`` and write a Chrome/TensorBoard trace there. Raises ``ValueError`` when
    ``batches`` runs out before the first timed step.
    """
    model, hooks = parts.model, hooks or StepHooks()
    params = [p for p in model.parameters() if p.requires_grad]
    counts = DeviceCounts(parts.device)
    model.train()
    it = iter(batches)
    totals = {p: 0.0 for p in PHASES}
    prof = _profiler(trace_dir)
    try:
        timed, images, first_step_s, t_start = _run_steps(
            it, parts, params, hooks, counts, totals, steps=steps, warmup=warmup, prof=prof)
    finally:
        # a streaming Ray Dataset keeps producing into the object store (on the cores the
        # pure-compute measurement needs next) until its iterator is closed
        close = getattr(it, "close", None)
        if close is not None:
            close()
    if prof is not None:
        prof.stop()
        prof.export_chrome_trace(str(Path(trace_dir) / "trace.json"))
    if not timed:
        raise ValueError(f"the training data ran out after {warmup} warm-up steps: "
                         "lower the doctor's --steps or use more data")
    wall = time.perf_counter() - t_start
    return {"phases": {p: v / timed for p, v in totals.items()},
            "images_per_sec": images / wall, "steps": timed, "first_step_s": first_step_s}


def _run_steps(it, parts, params, hooks, counts, totals, *, steps: int, warmup: int, prof):
    """The loop of :func:`profile_steps`; adds each phase's seconds to ``totals`` and returns
    ``(timed steps, images in them, first step's seconds, wall-clock start of the timed steps)``."""
    s, model = parts.settings, parts.model
    timed = images = 0
    first_step_s, t_start = None, None
    for i in range(warmup + steps):
        if i == warmup:
            _sync(parts.device)
            t_start = time.perf_counter()
            if prof is not None:
                prof.start()
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            break
        t1 = time.perf_counter()
        x, y = prepare_inputs(batch, s)
        _sync(parts.device)
        t2 = time.perf_counter()
        target = y
        if hooks.batch_transform is not None:
            x, target = hooks.batch_transform(x, y)
        with autocast_context(parts.device, s.precision):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), target, label_smoothing=s.label_smoothing)
        _sync(parts.device)
        t3 = time.perf_counter()
        loss.backward()
        _sync(parts.device)
        t4 = time.perf_counter()
        _optimizer_step(parts.optimizer, params, s, parts.scaler, counts)
        for fn in hooks.after_step:
            fn(i + 1)
        _sync(parts.device)
        t5 = time.perf_counter()
        if i == 0:
            first_step_s = t5 - t0
        if i >= warmup:
            timed += 1
            images += y.shape[0]
            for p, d in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                totals[p] += d
    return timed, images, first_step_s, t_start


def _profiler(trace_dir: Optional[str]):
    if not trace_dir:
        return None
    from torch.profiler import ProfilerActivity, profile

    Path(trace_dir).mkdir(parents=True, exist_ok=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=acts, record_shapes=False)


def hardware_support(device: torch.device) -> dict:
    """What this machine computes natively: CPU flags (``avx512f``, ``avx512_bf16``,
    ``amx_bf16`` from ``/proc/cpuinfo``), oneDNN bf16 kernels (``cpu_native_bf16``), logical
    cores, and on CUDA the device name, compute capability and native bf16."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    out = {"cores": os.cpu_count(), "avx512f": "avx512f" in flags,
           "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
           "cpu_native_bf16": cpu_has_fast_bf16()}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        out.update(gpu=torch.cuda.get_device_name(device), cuda_capability=f"{major}.{minor}",
                   cuda_native_bf16=cuda_has_native_bf16(device))
    return out

