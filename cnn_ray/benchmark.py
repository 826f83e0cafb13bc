"""Throughput benchmark: how close the Ray pipeline gets to the machine's limit.

Prints, in one run, images/s and the data-wait share of
  (a) pure forward+backward+step on synthetic in-memory tensors (the limit of this machine),
  (b) the full Ray pipeline with the memory cache (``data.cache: memory``: the prepared shards
      put once in the object store, cropped/augmented on the Ray Train worker),
  (b') the full Ray pipeline streaming from the prepared shards (``data.cache: none``: Ray Data
      tasks read the stored uint8 squares and crop/augment them every epoch),
  (b'') streaming from the raw JPEG files (``data.use_raw: true``, ``data.cache: none``: Ray
      Data tasks decode, resize, crop and augment every epoch). The prepared shards keep
      decoded uint8 pixels, not JPEG bytes, so "streaming from stored JPEGs" is measured as
      this decode-every-epoch path on the original files;
  (c) a plain PyTorch baseline as tutorials write it: ``torchvision.datasets.ImageFolder`` +
      ``DataLoader(num_workers=2, shuffle=True)`` + per-image torchvision transforms
      (``RandomResizedCrop(image_size)`` at resolution, ``RandomCrop(padding=4)`` at 32 px),
      fp32, contiguous (NCHW) memory, the same model and batch size,
and the ratios b/a, b'/a, b''/a and b/c, the peak memory of the training jobs and the
object-store spill. (b), (b'), (b'') train ``optim.epochs`` epochs (``epochs`` overrides it)
of at most ``epoch_steps`` steps (``run.max_steps_per_epoch``) each and report the last epoch.
On a machine with a GPU every figure runs on it (``scaling.use_gpu`` is switched on).
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


def plain_transform(cfg: TrainConfig):
    """The torchvision training transform of (c), as users write it per image:
    ``RandomResizedCrop(image_size)`` (the config's scale and ratio) at resolution
    (``data.store_size`` set or ``augment.random_resized_crop`` on), else ``RandomCrop(image_size,
    padding=4)``; then ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``."""
    from torchvision import transforms as T

    size = cfg.data.image_size
    rrc = cfg.augment.random_resized_crop
    if cfg.data.store_size is not None or rrc.enabled:
        crop = T.RandomResizedCrop(size, scale=tuple(rrc.scale), ratio=tuple(rrc.ratio),
                                   antialias=True)
    else:
        crop = T.RandomCrop(size, padding=4)
    return T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])


def plain_pytorch_images_per_sec(cfg: TrainConfig, *, steps: int = 8,
                                 warmup: Optional[int] = None,
                                 num_workers: int = 2) -> dict[str, float]:
    """(c) the tutorial baseline on the raw ImageFolder tree ``cfg.data.train``.

    ``ImageFolder`` + ``DataLoader(num_workers=2, shuffle=True)`` + :func:`plain_transform`;
    fp32; contiguous (NCHW) memory; the same model and batch size, on the GPU when
    ``scaling.use_gpu`` and one is present (batches moved with ``.to(device)``). Returns
    ``{"images_per_sec", "data_wait_share"}`` over ``steps`` consecutive steps after
    ``warmup`` (data loading included; the wait is the time spent in ``next(loader)``).
    ``warmup`` defaults to ``2 * num_workers + 1`` steps: the batches the loader's workers
    prefetch (``prefetch_factor=2`` each) while the model is built are consumed before the
    clock starts, so the timed steps see the loader's steady rate.
    """
    import torchvision

    from cnn_ray.train.optim import build_optimizer

    torch.set_num_threads(cfg.scaling.torch_threads or os.cpu_count() or 1)
    device = torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    ds = torchvision.datasets.ImageFolder(os.path.expanduser(cfg.data.train),
                                          transform=plain_transform(cfg))
    bs = cfg.per_worker_batch_size()
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=num_workers,
                                         drop_last=True, persistent_workers=False)
    model = create_model(cfg.model.name, num_classes=len(ds.classes), in_channels=3,
                         **cfg.model.build_knobs(cfg.data.image_size)).to(device)
    opt = build_optimizer(model, cfg.optim)
    warmup = 2 * num_workers + 1 if warmup is None else warmup
    it = iter(loader)
    done, wait, t0 = 0, 0.0, None

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:  # a tiny data set: start another epoch
            it = iter(loader)
            return next(it)

    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        w0 = time.perf_counter()
        x, y = next_batch()
        x, y = x.to(device), y.to(device)
        if i >= warmup:
            wait += time.perf_counter() - w0
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            done += x.shape[0]
    wall = time.perf_counter() - t0
    return {"images_per_sec": done / wall, "data_wait_share": wait / wall}


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


#: the Ray pipeline figures: key -> (label, the config changes that select the data path)
PIPELINE_MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "b": ("(b) Ray pipeline, memory cache (data.cache=memory)",
          {"data.cache": "memory", "data.use_raw": False}),
    "b_stream": ("(b') Ray pipeline, streaming the prepared shards (data.cache=none)",
                 {"data.cache": "none", "data.use_raw": False}),
    "b_raw": ("(b'') Ray pipeline, streaming + decoding the raw JPEGs (data.use_raw=true)",
              {"data.cache": "none", "data.use_raw": True}),
}
#: every figure ``--only`` can name, in the order they run ("compile" runs alone)
MODES = ("a", "c", *PIPELINE_MODES, "compile")
#: key of each figure in the JSON (``<key>_images_per_sec``, ``<key>_data_wait_share``)
FIGURE_KEYS = {"a": "a_synthetic", "b": "b_memory", "b_stream": "b_stream", "b_raw": "b_raw",
               "c": "c_plain_pytorch"}
#: issue 25's targets: (numerator, denominator, minimum ratio)
TARGETS = (("b", "a", 0.9), ("b_stream", "a", 0.8), ("b_raw", "a", 0.8), ("b", "c", 2.5))


def with_changes(cfg: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """``cfg`` with dotted-key ``changes`` applied, validated again (a :class:`ConfigError`
    when the combination is invalid, e.g. ``data.use_raw`` with whitening)."""
    from cnn_ray.config_io import merge_dotted

    return TrainConfig.from_dict(merge_dotted(cfg.to_dict(), changes), source="benchmark",
                                 check_paths=False)


def benchmark_config(cfg: TrainConfig, *, epochs: Optional[int] = None,
                     epoch_steps: Optional[int] = None,
                     gpu: Optional[bool] = None) -> TrainConfig:
    """The config every figure runs: ``optim.epochs=epochs`` and ``run.max_steps_per_epoch=
    epoch_steps`` when given; ``scaling.use_gpu`` on when this machine has a GPU (``gpu``:
    None = ``torch.cuda.is_available()``; the config's own ``use_gpu: true`` is kept)."""
    changes: dict[str, Any] = {}
    if epochs is not None:
        changes["optim.epochs"] = epochs
    if epoch_steps is not None:
        changes["run.max_steps_per_epoch"] = epoch_steps
    if (torch.cuda.is_available() if gpu is None else gpu) and not cfg.scaling.use_gpu:
        changes["scaling.use_gpu"] = True
    return with_changes(cfg, changes) if changes else cfg


def _only(only) -> list[str]:
    if only is None:
        return ["a", "c", *PIPELINE_MODES]
    names = [only] if isinstance(only, str) else list(only)
    bad = [n for n in names if n not in MODES]
    if bad:
        raise ValueError(f"--only: unknown figure(s) {bad}; expected some of {list(MODES)}")
    if "compile" in names and len(names) > 1:
        raise ValueError("--only compile runs alone")
    return [m for m in MODES if m in names]


def run_figures(cfg: TrainConfig, *, steps: int = 20, only=None) -> dict[str, Any]:
    """Measure the figures ``only`` names (None: a, c, b, b', b'') of ``cfg`` (already
    :func:`benchmark_config`), printing each as it comes. Returns the JSON dict: the machine,
    the settings, ``<figure>_images_per_sec`` and ``<figure>_data_wait_share`` of each figure
    (keys :data:`FIGURE_KEYS`), the ratios ``b_over_a``, ``b_stream_over_a``, ``b_raw_over_a``,
    ``b_over_c`` of the figures measured, the targets met, the peak memory and the spill; a
    pipeline figure whose config is invalid (e.g. ``use_raw`` with whitening) is listed in
    ``skipped`` with the reason."""
    from cnn_ray.config import ConfigError
    from cnn_ray.train.techniques import resolve_precision

    modes = _only(only)
    device = torch.device("cuda" if cfg.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    out: dict[str, Any] = {
        "hardware": hardware_summary(), "device": device.type, "model": cfg.model.name,
        "image_size": cfg.data.image_size, "store_size": cfg.data.store_size,
        "batch_size": cfg.per_worker_batch_size(),
        "precision": resolve_precision(cfg.precision.dtype, device),
        "channels_last": cfg.model.channels_last, "torch_threads": cfg.scaling.torch_threads,
        "steps": steps, "epochs": cfg.optim.epochs,
        "epoch_steps": cfg.run.max_steps_per_epoch, "figures": modes, "skipped": {},
    }
    print(f"[benchmark] hardware: {out['hardware']}", flush=True)
    print(f"[benchmark] {cfg.model.name} at {cfg.data.image_size} px (stored "
          f"{cfg.data.stored_size} px), batch {out['batch_size']}, {out['precision']}, "
          f"channels_last={cfg.model.channels_last}, {device.type}", flush=True)
    ips: dict[str, float] = {}

    def record(mode: str, images_per_sec: float, wait: Optional[float], label: str) -> None:
        key = FIGURE_KEYS[mode]
        ips[mode] = images_per_sec
        out[f"{key}_images_per_sec"] = images_per_sec
        out[f"{key}_data_wait_share"] = wait
        w = "" if wait is None else f", data wait {100 * wait:.1f}%"
        print(f"[benchmark] {label}: {images_per_sec:.1f} images/s{w}", flush=True)

    num_classes = 10
    if any(m != "a" for m in modes):
        from cnn_ray.data.prepare import prepare_data

        num_classes = len(prepare_data(cfg).class_names)
    if "a" in modes:
        a = synthetic_images_per_sec(cfg, num_classes, steps=steps)
        record("a", a, 0.0, f"(a) synthetic fwd+bwd+step ({out['precision']}, "
               f"channels_last={cfg.model.channels_last})")
    if "c" in modes:
        c = plain_pytorch_images_per_sec(cfg, steps=steps)
        record("c", c["images_per_sec"], c["data_wait_share"],
               "(c) plain PyTorch ImageFolder+DataLoader(num_workers=2) fp32 NCHW")
    for mode in (m for m in modes if m in PIPELINE_MODES):
        label, changes = PIPELINE_MODES[mode]
        try:
            mcfg = with_changes(cfg, changes)
        except ConfigError as e:
            out["skipped"][mode] = str(e)
            print(f"[benchmark] {label}: skipped ({e})", flush=True)
            continue
        bm = pipeline_images_per_sec(mcfg)
        record(mode, bm["images_per_sec"], bm.get("data_wait_share"), label)
        key = FIGURE_KEYS[mode]
        out[f"{key}_run_name"] = bm.get("run_name")
        out[f"{key}_epoch"] = bm.get("epoch")
        out[f"{key}_train_images_last_epoch"] = bm.get("train_images")
        out[f"{key}_peak_rss_mb_worker"] = bm.get("peak_rss_mb")
        out[f"{key}_object_store_spilled_bytes"] = bm.get("spilled_bytes")
        out[f"{key}_val_top1_last_epoch"] = bm.get("val_top1")
    targets = {}
    for num, den, minimum in TARGETS:
        if num in ips and den in ips and ips[den] > 0:
            ratio = ips[num] / ips[den]
            out[f"{num}_over_{den}"] = ratio
            targets[f"{num}_over_{den} >= {minimum}"] = ratio >= minimum
    out["targets"] = targets
    out["peak_rss_mb_driver"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def benchmark_main(cfg: TrainConfig, *, steps: int = 20, json_path: Optional[str] = None,
                   only=None, epochs: Optional[int] = None,
                   epoch_steps: Optional[int] = None) -> int:
    """CLI entry: :func:`run_figures` of :func:`benchmark_config` (``epochs``,
    ``epoch_steps``), a table of the figures and the targets, and the JSON at ``json_path``.
    ``only``: the figures to run (names of :data:`MODES`; ``"a"`` alone: the machine's
    images/s for this model, batch and precision, no Ray, no data); ``"compile"``: eager vs
    ``torch.compile`` of the pure-compute step (:func:`compile_speedup`)."""
    from cnn_ray.train.techniques import resolve_precision

    modes = _only(only)
    cfg = benchmark_config(cfg, epochs=epochs, epoch_steps=epoch_steps)
    if modes == ["compile"]:
        hw = hardware_summary()
        print(f"[benchmark] hardware: {hw}", flush=True)
        res = compile_speedup(cfg, 10, steps=max(2, steps // 3))
        print(f"[benchmark] torch.compile ({cfg.model.name}, batch {res['batch']}, "
              f"{resolve_precision(cfg.precision.dtype, torch.device('cpu'))}): eager "
              f"{res['eager_images_per_sec']} images/s, compiled {res['compiled_images_per_sec']}"
              f" images/s, speed-up {res['speedup']}x, compile {res['compile_s']} s, repaid "
              f"after {res['break_even_steps'] or 'never (compiled is slower)'} steps", flush=True)
        if json_path:
            atomic_write_json(json_path, {"hardware": hw, "compile": res}, indent=2)
        return 0
    figures = run_figures(cfg, steps=steps, only=modes)
    print("[benchmark] figures:")
    for k, v in figures.items():
        if k in ("targets", "skipped", "figures"):
            continue
        print(f"  {k:40s} {v:.3f}" if isinstance(v, float) else f"  {k:40s} {v}")
    if figures["targets"]:
        print("[benchmark] targets: " + "; ".join(
            f"{name} ({figures[name.split()[0]]:.3f}) -> {'PASS' if ok else 'MISS'}"
            for name, ok in figures["targets"].items()))
    if json_path:
        atomic_write_json(json_path, figures, indent=2)
    return 0
