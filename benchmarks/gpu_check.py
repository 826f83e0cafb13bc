"""Check and measure cnn_ray's CUDA paths on one GPU, without Ray; write a JSON of figures.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--quick]

Needs torch (+ torchvision for the torchvision models), numpy, pyarrow, PyYAML and pydantic: the
light dependencies of the numeric core. Ray is optional: where it is installed, a 1-worker
``use_gpu=True`` Ray Train smoke run is added. Prepared to finish in under 5 minutes on one
H100/H200-class GPU (``--quick``: in about one). Refuses (exit 2) when no CUDA device is present;
``--allow-cpu`` runs the same code paths on the CPU with gloo instead of NCCL (tests use it).

Sections (each a key of the JSON, with ``ok`` and its figures or the error):
  env          GPU, capability, native bf16, the precision ``auto`` resolves to.
  reduce       EpochStats.reduce inside a real ``torch.distributed`` process group of world
               size 1 (NCCL on CUDA, env://), as Ray Train sets it up; plus proof that the
               group refuses a CPU tensor (the bug this guards against).
  precision    the numeric core's train_one_epoch/evaluate on a CIFAR-10 subset in fp32, bf16
               and fp16 + GradScaler (loss finite and falling; scaler state saved and resumed).
  throughput   (a) pure compute images/s (one batch already on the GPU, repeated) and (b) the
               memory-cache path (GPU-resident uint8 rows -> crop/alternating flip on the
               device -> normalise -> step; cnn_ray.data.memory.DeviceShard), ratio b/a;
               torch.compile off and on.
  syncs        host<->device synchronisations of the recipe's training steps, counted with
               ``torch.cuda.set_sync_debug_mode("warn")`` (CUDA only): total, per step, and
               the source lines that synchronise.
  recipe       the full ``jobs/configs/cifar10_94.yaml`` recipe (Ray-free trainer): training
               seconds from first to last step, test top-1 (with TTA).
  recipe_compiled  the same with ``model.compile=true`` (CUDA, not ``--quick``).
  ray_train    (Ray installed only) a 1-worker use_gpu=True Ray Train smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def section(results: dict, name: str, fn: Callable[[], dict]) -> None:
    """Run one check; record its figures (``ok: True``) or its error (``ok: False``)."""
    t0 = time.perf_counter()
    try:
        out = {"ok": True, **fn()}
    except Exception as exc:  # noqa: BLE001 - every section reports, none stops the others
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc(limit=8)}
    out["section_s"] = round(time.perf_counter() - t0, 2)
    results[name] = out
    print(f"[gpu_check] {name}: {json.dumps(out, default=str)[:600]}", flush=True)


# ------------------------------------------------------------------------------ env
def check_env(device: torch.device) -> dict:
    from cnn_ray.train.techniques import cuda_has_native_bf16, resolve_precision

    info: dict[str, Any] = {"torch": torch.__version__, "device": str(device),
                            "auto_precision": resolve_precision("auto", device)}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device),
                    capability=list(torch.cuda.get_device_capability(device)),
                    native_bf16=cuda_has_native_bf16(device),
                    memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version())
    return info


# ------------------------------------------------------------------------------ reduce
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_reduce(device: torch.device) -> dict:
    """EpochStats.reduce in a world-size-1 group (env://), the way Ray Train initialises it."""
    import torch.distributed as dist

    from cnn_ray.train.loop import EpochStats, distributed_reduce

    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0",
                      WORLD_SIZE="1")
    dist.init_process_group(backend, init_method="env://")
    try:
        stats = EpochStats(loss_sum=3.0, correct1=2, correct5=4, num_images=5, wall_s=1.5, steps=2)
        out = stats.reduce(distributed_reduce, device)
        assert (out.num_images, out.correct1, out.steps) == (5, 2, 2), out
        refused = None
        if backend == "nccl":
            try:
                dist.all_reduce(torch.ones(2))  # a CPU tensor: what the old code did
                refused = False
            except Exception as exc:  # noqa: BLE001 - the expected refusal
                refused = f"{type(exc).__name__}: {str(exc)[:120]}"
        return {"backend": backend, "reduced": [out.num_images, out.correct1, out.steps],
                "cpu_tensor_refused": refused}
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ data
def load_data(n_train: int | None, n_test: int | None) -> dict:
    """CIFAR-10 arrays (uint8 NHWC, int64), the first ``n`` of a seeded permutation."""
    import numpy as np

    from cnn_ray.datasets import cifar10_arrays

    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = cifar10_arrays(split)
        order = np.random.default_rng(0).permutation(len(x))[: n or len(x)]
        out[split] = (np.ascontiguousarray(x[order]), y[order])
    x = out["train"][0].reshape(-1, 3) / 255.0
    out["mean"], out["std"] = x.mean(0).tolist(), x.std(0).tolist()
    return out


def _batches(x, y, bs: int, device: torch.device, seed: int):
    """Shuffled uint8 batches already on ``device`` (random crop + flip on the device)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    xs = torch.from_numpy(x).to(device)
    ys = torch.from_numpy(y).to(device)
    for i in range(0, len(order) - bs + 1, bs):
        idx = order[i:i + bs].to(device)
        img = xs[idx]
        flip = torch.rand(bs, generator=g).to(device) < 0.5
        img = torch.where(flip[:, None, None, None], img.flip(2), img)
        yield {"image": img, "label": ys[idx]}


# ------------------------------------------------------------------------------ precision
def check_precision(device: torch.device, data: dict, epochs: int) -> dict:
    """Train the numeric core in fp32, bf16 and fp16 + GradScaler (fp16 on CUDA only)."""
    from cnn_ray.models import create_model
    from cnn_ray.train.loop import StepSettings, evaluate, train_one_epoch
    from cnn_ray.train.techniques import apply_channels_last, make_grad_scaler

    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    out = {}
    for precision in ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16"):
        torch.manual_seed(0)
        model = apply_channels_last(create_model("airbench", num_classes=10,
                                                 widths=(32, 64, 64)).to(device))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        scaler = make_grad_scaler(device, precision)
        s = StepSettings(device=device, precision=precision, mean=data["mean"], std=data["std"],
                         log_every=0, label_smoothing=0.2)
        losses = []
        for epoch in range(epochs):
            st = train_one_epoch(model, _batches(xtr, ytr, 256, device, epoch), opt, s, scaler=scaler)
            losses.append(round(st.loss_sum / max(1, st.num_images), 4))
        ev = evaluate(model, _batches(xte, yte, 500, device, 0), s)
        row = {"train_loss": losses, "test_top1": round(ev.correct1 / max(1, ev.num_images), 4)}
        assert all(map(lambda v: v == v and v < 1e6, losses)), f"{precision}: non-finite loss"
        if scaler is not None:
            row["scaler_resumed"] = _scaler_round_trip(scaler, device)
        out[precision] = row
    return out


def _scaler_round_trip(scaler, device: torch.device) -> bool:
    """Save the GradScaler state through a real checkpoint and load it into a new scaler."""
    import tempfile

    from cnn_ray.models import create_model
    from cnn_ray.train.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
    from cnn_ray.train.techniques import make_grad_scaler

    model = create_model("simple_cnn", num_classes=10)
    with tempfile.TemporaryDirectory() as d:
        path = save_checkpoint(Path(d) / "ckpt", model=model, epoch=1, config={},
                               class_names=[str(i) for i in range(10)], mean=[0.5] * 3,
                               std=[0.25] * 3, scaler=scaler)
        fresh = make_grad_scaler(device, "fp16")
        restore_training_state(load_checkpoint(path), model=model, scaler=fresh)
    return fresh.get_scale() == scaler.get_scale() and fresh.state_dict() == scaler.state_dict()


# ------------------------------------------------------------------------------ throughput
def check_throughput(device: torch.device, data: dict, steps: int) -> dict:
    """(a) synthetic compute and (b) memory-cache path images/s, compile off/on."""
    out = {}
    for compiled in (False, True):
        key = "compiled" if compiled else "eager"
        try:
            out[key] = _throughput_once(device, data, steps, compiled)
        except Exception as exc:  # noqa: BLE001 - compile may be unavailable
            out[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return out


def _throughput_once(device: torch.device, data: dict, steps: int, compiled: bool) -> dict:
    from cnn_ray.models import create_model
    from cnn_ray.train.loop import StepSettings, train_one_epoch
    from cnn_ray.train.techniques import apply_channels_last, resolve_precision

    precision = resolve_precision("auto", device)
    model = apply_channels_last(create_model("airbench", num_classes=10).to(device))
    net = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    s = StepSettings(device=device, precision=precision, mean=data["mean"], std=data["std"],
                     log_every=0)
    xtr, ytr = data["train"]
    bs = 1024 if device.type == "cuda" else 128
    fixed = next(_batches(xtr, ytr, bs, device, 0))
    train_one_epoch(net, [fixed] * 3, opt, s)  # warm-up (and compilation)
    _sync(device)
    t0 = time.perf_counter()
    train_one_epoch(net, [fixed] * steps, opt, s)
    _sync(device)
    a = bs * steps / (time.perf_counter() - t0)
    shard = _memory_shard(xtr[: min(len(xtr), bs * steps)], ytr, device)
    _sync(device)
    t0 = time.perf_counter()
    st = train_one_epoch(net, shard.batches(bs, augment=_crop_flip(), seed=0, epoch=1,
                                            drop_last=True), opt, s)
    _sync(device)
    b = st.num_images / (time.perf_counter() - t0)
    return {"precision": precision, "batch": bs, "memory_path": type(shard).__name__,
            "a_images_per_sec": round(a), "b_images_per_sec": round(b),
            "b_over_a": round(b / a, 3)}


def _crop_flip():
    from cnn_ray.config import AugmentConfig

    return AugmentConfig.model_validate({"random_crop": {"padding": 2},
                                         "hflip": {"mode": "alternating"}})


def _memory_shard(x, y, device: torch.device):
    """The data.cache=memory path: an InMemoryShard, on the GPU when there is one."""
    import numpy as np

    from cnn_ray.data.memory import InMemoryShard, shard_for_device

    host = InMemoryShard(x, y[: len(x)], np.arange(len(x), dtype=np.int64))
    return shard_for_device(host, device, _crop_flip())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------ recipe, ray
def check_recipe(device: torch.device, data: dict, config: str, epochs: int | None,
                 extra: tuple[str, ...] = (), warmup: bool = True) -> dict:
    """The full recipe through the Ray-free trainer (``cnn_ray.train.local``), after an
    untimed warm-up run on a few batches (``warmup_s``) when ``warmup``."""
    from cnn_ray.config_io import load_train_config
    from cnn_ray.train.local import train_arrays

    overrides = [*([f"optim.epochs={epochs}"] if epochs else []), *extra]
    cfg = load_train_config(str(REPO / config), overrides, check_paths=False)
    warmup_s = None
    if warmup:
        # airbench times after a warm-up run: cuDNN's autotuner (cudnn.benchmark) and
        # torch.compile pick their kernels for every batch shape of the run (full batches and
        # the last, partial one) on a small subset first, outside the timed run.
        (xtr, ytr), (xte, yte) = data["train"], data["test"]
        bs = cfg.per_worker_batch_size()
        n = min(len(xtr), 2 * bs + len(xtr) % bs)
        wcfg = load_train_config(str(REPO / config), [*extra, "optim.epochs=1"],
                                 check_paths=False)
        t0 = time.perf_counter()
        train_arrays(wcfg, (xtr[:n], ytr[:n]), (xte, yte), device=device, log=lambda m: None)
        warmup_s = round(time.perf_counter() - t0, 2)
    return {**train_arrays(cfg, data["train"], data["test"], device=device),
            "warmup_s": warmup_s}


def check_syncs(device: torch.device, data: dict, config: str, batches: int = 20) -> dict:
    """Run ``batches`` steps of the recipe (EMA from the first step, so its hooks run) with
    CUDA's sync debug mode on; count the synchronising calls and name where they happen."""
    import warnings
    from collections import Counter

    from cnn_ray.config_io import load_train_config
    from cnn_ray.train.local import train_arrays

    if device.type != "cuda":
        return {"skipped": "sync debug mode exists on CUDA only"}
    cfg = load_train_config(str(REPO / config), ["optim.epochs=1", "optim.ema.start_epoch=0",
                                                 "eval.tta=none"], check_paths=False)
    n = batches * cfg.per_worker_batch_size()
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    quiet = lambda msg: None  # noqa: E731
    train_arrays(cfg, (xtr[:n], ytr[:n]), (xte[:1000], yte[:1000]), device=device, log=quiet)
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            t0 = time.perf_counter()
            out = train_arrays(cfg, (xtr[:n], ytr[:n]), (xte[:1000], yte[:1000]),
                               device=device, log=quiet)
            wall = time.perf_counter() - t0
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return {"steps": batches, "syncs_total": len(syncs),
            "syncs_per_step": round(len(syncs) / batches, 2), "where": dict(where.most_common(12)),
            "note": "includes the one evaluation pass and the epoch-end reads", "wall_s": round(wall, 2),
            "train_s": out["train_s"]}


def check_ray_train(device: torch.device) -> dict:
    """A 1-worker use_gpu=True Ray Train smoke run (skipped where Ray is not installed)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"skipped": "ray is not installed here"}
    from cnn_ray.config_io import load_train_config
    from cnn_ray.datasets import cifar10_subset
    from cnn_ray.train.launch import run_training

    cfg = load_train_config(str(REPO / "jobs/configs/cifar10.yaml"), [
        f"data.train={cifar10_subset('train', 50)}", f"data.val={cifar10_subset('test', 10)}",
        f"scaling.use_gpu={device.type == 'cuda'}", "run.smoke=true", "optim.epochs=2",
        "run.name=gpu_check_ray", "run.storage_path=/tmp/cnn_ray_gpu_check"])
    result = run_training(cfg)
    return {"metrics": {k: v for k, v in (result.metrics or {}).items()
                        if k in ("epoch", "val_top1", "images_per_sec")}}


# ------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    p.add_argument("--quick", action="store_true", help="small subsets, short recipe (~1 min)")
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU (tests): gloo, no fp16")
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--recipe-config", default="jobs/configs/cifar10_94.yaml")
    p.add_argument("--recipe-epochs", type=int, default=None)
    p.add_argument("--skip", nargs="*", default=[], help="sections to skip")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_check: no CUDA device is visible to torch (torch.cuda.is_available() is "
              "False); run it on a GPU machine, or pass --allow-cpu to exercise the code paths "
              "on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    quick = args.quick or device.type == "cpu"
    n_train = args.train_images or (2048 if quick else None)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data = load_data(n_train, 1000 if quick else None)
    recipe_epochs = args.recipe_epochs or (1 if quick else None)
    plan = [("env", lambda: check_env(device)), ("reduce", lambda: check_reduce(device)),
            ("precision", lambda: check_precision(device, data, 1 if quick else 2)),
            ("syncs", lambda: check_syncs(device, data, args.recipe_config, 5 if quick else 20)),
            ("recipe", lambda: check_recipe(device, data, args.recipe_config, recipe_epochs)),
            ("throughput", lambda: check_throughput(device, data, 5 if quick else 50)),
            ("recipe_compiled", lambda: check_recipe(device, data, args.recipe_config,
                                                     recipe_epochs, ("model.compile=true",))),
            ("ray_train", lambda: check_ray_train(device))]
    if quick or device.type != "cuda":
        args.skip = [*args.skip, "recipe_compiled"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from cnn_ray.io import atomic_write_json

    for name, fn in plan:
        if name not in args.skip:
            section(results, name, fn)
            # after every section, so a run stopped at its time limit keeps what it measured
            atomic_write_json(args.out, results, indent=2, default=str)
    failed = [k for k, v in results.items() if isinstance(v, dict) and not v.get("ok", True)]
    print(f"[gpu_check] wrote {args.out}; failed sections: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
