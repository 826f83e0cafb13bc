"""Throughput benchmark: how close the Ray pipeline gets to the machine's limit.

Prints, in one run, images/s of
  (a) pure forward+backward+step on synthetic in-memory tensors (the limit of this machine),
  (b) the full Ray pipeline (prepared shards -> Ray Data augmentation -> Ray Train worker) training
      the same model, batch size and precision,
  (c) a plain PyTorch baseline as tutorials write it: ``torchvision.datasets.ImageFolder`` +
      ``DataLoader(num_workers=2)`` + torchvision transforms, fp32, contiguous memory,
and the ratios b/a and b/c, the peak memory of the training job and the object-store spill.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from cnn_ray.compat import session_dir
from cnn_ray.config import TrainConfig
from cnn_ray.io import atomic_write_json
from cnn_ray.models import create_model


def hardware_summary() -> str:
    """One line: CPU model, logical cores, memory, GPU, torch/ray versions (the installed Ray's
    version is read from its metadata: nothing imports Ray)."""
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from importlib import metadata

    try:
        ray_version = metadata.version("ray")
    except metadata.PackageNotFoundError:
        ray_version = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} logical cores, {mem_gb:.0f} GiB, {gpu}; "
            f"torch {torch.__version__}, ray {ray_version}")


def _time_steps(step, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _synthetic_step(cfg: TrainConfig, num_classes: int, *, precision: Optional[str] = None,
                    channels_last: Optional[bool] = None, compile: bool = False,
                    backend: str = "inductor"):
    """``(step, batch)``: one forward+backward+optimizer step of ``cfg``'s network on fixed
    in-memory tensors (``cfg``'s per-worker batch, precision and layout; ``compile``:
    ``torch.compile`` of the model in place with ``backend``, as ``model.compile=true`` does
    in training)."""
    from cnn_ray.train.optim import build_optimizer
    from cnn_ray.train.techniques import autocast_context, resolve_precision

    device = torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    precision = resolve_precision(precision or cfg.precision.dtype, device)
    channels_last = cfg.model.channels_last if channels_last is None else channels_last
    model = create_model(cfg.model.name, num_classes=num_classes, in_channels=cfg.data.channels,
                         **cfg.model.build_knobs(cfg.data.image_size)).to(device)
    bs = cfg.per_worker_batch_size()
    size = cfg.data.image_size
    x = torch.randn(bs, cfg.data.channels, size, size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if precision != "fp32":
        x = x.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    y = torch.randint(0, num_classes, (bs,), device=device)
    opt = build_optimizer(model, cfg.optim)
    if compile:
        model.compile(backend=backend)

    def step():
        with autocast_context(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, bs


def synthetic_images_per_sec(cfg: TrainConfig, num_classes: int, *, steps: int = 20, warmup: int = 3,
                             precision: Optional[str] = None, channels_last: Optional[bool] = None,
                             threads: Optional[int] = None) -> float:
    """(a) median images/s of forward+backward+SGD step on in-memory tensors.

    Uses ``cfg``'s model, per-worker micro-batch and precision (overridable), on CPU threads =
    ``scaling.torch_threads``. Inputs are created once, so no input cost is measured.
    """
    torch.set_num_threads(threads or cfg.scaling.torch_threads or os.cpu_count() or 1)
    step, bs = _synthetic_step(cfg, num_classes, precision=precision, channels_last=channels_last)
    times = _time_steps(step, steps, warmup)
    return bs / statistics.median(times)


def compile_speedup(cfg: TrainConfig, num_classes: int = 10, *, steps: int = 8,
                    rounds: int = 3, backend: str = "inductor") -> dict[str, Any]:
    """Eager vs ``torch.compile`` (PyTorch 2 inductor) training step of ``cfg``'s network, in one
    process: the compiled model's first step (compilation of forward and backward, seconds),
    then ``rounds`` alternating windows of ``steps`` timed steps each (eager, compiled, ...:
    the machine's drift hits both), after one warm-up step each.

    Returns ``{"eager_images_per_sec", "compiled_images_per_sec"`` (medians over all timed
    steps), ``"speedup"`` (compiled / eager), ``"compile_s"``, ``"break_even_steps"`` (steps
    after which the compile time is repaid; None when compiling is slower), ``"batch"``}.
    """
    torch.set_num_threads(cfg.scaling.torch_threads or os.cpu_count() or 1)
    eager, bs = _synthetic_step(cfg, num_classes)
    compiled, _ = _synthetic_step(cfg, num_classes, compile=True, backend=backend)
    t0 = time.perf_counter()
    compiled()
    compile_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for step in (eager, compiled):
        step()  # warm-up (the compiled one: a second, already compiled call)
    for _ in range(rounds):
        times["eager"] += _time_steps(eager, steps, 0)
        times["compiled"] += _time_steps(compiled, steps, 0)
    e, c = (bs / statistics.median(times[k]) for k in ("eager", "compiled"))
    per_step_gain = bs / e - bs / c  # seconds saved per step
    return {"eager_images_per_sec": round(e, 1), "compiled_images_per_sec": round(c, 1),
            "speedup": round(c / e, 3), "compile_s": round(compile_s, 1), "batch": bs,
            "break_even_steps": (math.ceil(compile_s / per_step_gain) if per_step_gain > 0
                                 else None)}


def plain_pytorch_images_per_sec(cfg: TrainConfig, *, steps: int = 8, warmup: int = 1,
                                 num_workers: int = 2) -> float:
    """(c) images/s of the tutorial baseline on the raw ImageFolder tree ``cfg.data.train``.

    ``ImageFolder`` + ``DataLoader(num_workers=2, shuffle=True)`` + ``RandomCrop(padding=4)``,
    ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``; fp32; contiguous (NCHW) memory; the
    same model and batch size. Images/s over ``steps`` consecutive steps (data loading included).
    """
    import torchvision
    from torchvision import transforms as T

    from cnn_ray.train.optim import build_optimizer

    torch.set_num_threads(cfg.scaling.torch_threads or os.cpu_count() or 1)
    size = cfg.data.image_size
    tf = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
    ds = torchvision.datasets.ImageFolder(os.path.expanduser(cfg.data.train), transform=tf)
    bs = cfg.per_worker_batch_size()
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=num_workers,
                                         drop_last=True, persistent_workers=False)
    model = create_model(cfg.model.name, num_classes=len(ds.classes), in_channels=3,
                         **cfg.model.build_knobs(cfg.data.image_size))
    opt = build_optimizer(model, cfg.optim)
    it = iter(loader)
    done, t0 = 0, None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            done += x.shape[0]
    return done / (time.perf_counter() - t0)


def pipeline_images_per_sec(cfg: TrainConfig) -> dict:
    """(b) train with the full Ray pipeline for ``optim.epochs`` epochs; figures of the last one.

    Always a fresh run: ``<run.name>_benchmark_<timestamp>`` under ``run.storage_path`` (a
    benchmark that reused ``run.name`` would resume an earlier run's checkpoint and report its
    stale figures without training). Returns the last epoch's metrics (``images_per_sec``,
    ``data_wait_share``, ``peak_rss_mb``, ...) plus ``spilled_bytes`` of the object store and
    ``run_name``.
    """
    from cnn_ray.train.launch import run_training

    name = f"{cfg.run.name}_benchmark_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    result = run_training(cfg, name=name)
    out = dict(result.metrics)
    out["run_name"] = name
    out["spilled_bytes"] = object_store_spilled_bytes()
    return out


def object_store_spilled_bytes() -> int:
    """Bytes of objects Ray spilled to disk in this session so far (0 = no spilling).

    Reads the spill directories under the session dir (Ray's default filesystem spilling);
    ``-1`` if the session dir cannot be found (e.g. a remote cluster).
    """
    try:
        session = Path(session_dir())
    except Exception:  # noqa: BLE001 - diagnostics only
        return -1
    return sum(f.stat().st_size for d in session.glob("ray_spilled_objects*") for f in d.rglob("*")
               if f.is_file())


def benchmark_main(cfg: TrainConfig, *, steps: int = 20, json_path: Optional[str] = None,
                   only: Optional[str] = None) -> int:
    """CLI entry: run (a), (c) then (b), print a table of figures and write them as JSON.
    ``only="a"``: just the pure-compute figure (no Ray, no data: the machine's images/s);
    ``only="compile"``: eager vs ``torch.compile`` of that step (:func:`compile_speedup`)."""
    from cnn_ray.train.techniques import resolve_precision

    hw = hardware_summary()
    print(f"[benchmark] hardware: {hw}", flush=True)
    if only == "compile":
        res = compile_speedup(cfg, 10, steps=max(2, steps // 3))
        print(f"[benchmark] torch.compile ({cfg.model.name}, batch {res['batch']}, "
              f"{resolve_precision(cfg.precision.dtype, torch.device('cpu'))}): eager "
              f"{res['eager_images_per_sec']} images/s, compiled {res['compiled_images_per_sec']}"
              f" images/s, speed-up {res['speedup']}x, compile {res['compile_s']} s, repaid "
              f"after {res['break_even_steps'] or 'never (compiled is slower)'} steps", flush=True)
        if json_path:
            atomic_write_json(json_path, {"hardware": hw, "compile": res}, indent=2)
        return 0
    if only == "a":
        a = synthetic_images_per_sec(cfg, 10, steps=steps)
        print(f"[benchmark] (a) synthetic fwd+bwd+step: {a:.1f} images/s ({cfg.model.name} "
              f"{cfg.model.knobs()}, batch {cfg.per_worker_batch_size()}, "
              f"{resolve_precision(cfg.precision.dtype, torch.device('cpu'))})", flush=True)
        if json_path:
            atomic_write_json(json_path, {"hardware": hw, "a_synthetic_images_per_sec": a})
        return 0
    from cnn_ray.data.prepare import prepare_data

    num_classes = len(prepare_data(cfg).class_names)
    a = synthetic_images_per_sec(cfg, num_classes, steps=steps)
    print(f"[benchmark] (a) synthetic fwd+bwd+step: {a:.1f} images/s", flush=True)
    c = plain_pytorch_images_per_sec(cfg, steps=max(3, steps // 4))
    print(f"[benchmark] (c) plain PyTorch ImageFolder+DataLoader fp32: {c:.1f} images/s", flush=True)
    bm = pipeline_images_per_sec(cfg)
    b = bm["images_per_sec"]
    figures = {
        "hardware": hw, "model": cfg.model.name, "batch_size": cfg.per_worker_batch_size(),
        "precision": resolve_precision(cfg.precision.dtype, torch.device("cpu")),
        "channels_last": cfg.model.channels_last,
        "a_synthetic_images_per_sec": a, "b_pipeline_images_per_sec": b,
        "c_plain_pytorch_images_per_sec": c, "b_over_a": b / a, "b_over_c": b / c,
        "b_data_wait_share": bm.get("data_wait_share"), "peak_rss_mb_worker": bm.get("peak_rss_mb"),
        "peak_rss_mb_driver": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "object_store_spilled_bytes": bm.get("spilled_bytes"),
        "val_top1_last_epoch": bm.get("val_top1"),
    }
    print("[benchmark] figures:")
    for k, v in figures.items():
        print(f"  {k:32s} {v:.3f}" if isinstance(v, float) else f"  {k:32s} {v}")
    print(f"[benchmark] targets: b/a >= 0.85 -> {'PASS' if b / a >= 0.85 else 'MISS'}; "
          f"b/c >= 3 -> {'PASS' if b / c >= 3 else 'MISS'}; "
          f"no spilling -> {'PASS' if figures['object_store_spilled_bytes'] == 0 else 'MISS/unknown'}")
    if json_path:
        atomic_write_json(json_path, figures, indent=2)
    return 0
