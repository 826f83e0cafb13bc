"""Crop + flip throughput: the numpy path against the torch (device) path, in images/s.

    python benchmarks/benchmark_augment.py                  # CPU, 1 torch thread, 512x32x32x3 batches
    python benchmarks/benchmark_augment.py --device cuda    # the torch path on a GPU (numpy on CPU)
    python benchmarks/benchmark_augment.py --smoke          # tiny, for CI

Two levels, each the median of ``--repeats`` (5) timings, printed as images/s:

* ``batch``: one ``(512, 32, 32, 3) uint8`` batch through :func:`cnn_ray.data.augment.augment_batch`
  (numpy, host) and through :func:`cnn_ray.data.device_augment.augment_batch_torch` (torch on
  ``--device``, per-batch draws included);
* ``epoch``: a whole epoch of a ``--rows``-image shard through ``InMemoryShard.batches`` (numpy,
  prefetch off) and ``DeviceShard.batches`` (torch; one parameter copy per epoch included), so
  the batch gather and the per-epoch permutation are counted too.

On CUDA every timing ends with ``torch.cuda.synchronize()``. No Ray. Decides which path
``cnn_ray.data.memory.shard_for_device`` uses on CPU (the numpy one unless torch is as fast).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, on any node

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cnn_ray.config import AugmentConfig  # noqa: E402
from cnn_ray.data.augment import augment_batch  # noqa: E402
from cnn_ray.data.device_augment import augment_batch_torch  # noqa: E402
from cnn_ray.data.memory import InMemoryShard  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="torch path's device (cpu, cuda, cuda:1)")
    p.add_argument("--batch", type=int, default=512, help="images per batch (512)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (32)")
    p.add_argument("--rows", type=int, default=10_240, help="images in the epoch-level shard")
    p.add_argument("--repeats", type=int, default=5, help="timings per figure; median (5)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1, as a Ray task)")
    p.add_argument("--smoke", action="store_true", help="64 images per batch, 256 rows, 2 repeats")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def _median_seconds(fn: Callable[[int], None], repeats: int, device: torch.device) -> float:
    """Median wall seconds of ``fn(epoch)`` over ``repeats`` calls after one warm-up call."""
    times = []
    for epoch in range(repeats + 1):
        start = time.perf_counter()
        fn(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _drain(batches) -> None:
    for _ in batches:
        pass


def measure(args: argparse.Namespace) -> dict:
    """Images/s of both paths at both levels (see the module docstring)."""
    device = torch.device(args.device)
    cfg = AugmentConfig()  # random crop (padding 4, reflect) + hflip p=0.5
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    idx = np.arange(args.batch, dtype=np.int64)
    x_dev = torch.from_numpy(x).to(device)
    shard = InMemoryShard(rng.integers(0, 256, (args.rows, args.size, args.size, 3), np.uint8),
                          np.arange(args.rows) % 10, np.arange(args.rows))
    dev_shard = shard.to_device(device)

    def epoch_of(s, prefetch):
        return lambda e: _drain(s.batches(args.batch, augment=cfg, seed=0, epoch=e,
                                          prefetch=prefetch))

    cpu = torch.device("cpu")
    seconds = {
        "batch_numpy": _median_seconds(
            lambda e: augment_batch(x, idx, cfg, seed=0, epoch=e), args.repeats, cpu),
        "batch_torch": _median_seconds(
            lambda e: augment_batch_torch(x_dev, idx, cfg, seed=0, epoch=e), args.repeats, device),
        "epoch_numpy": _median_seconds(epoch_of(shard, 0), args.repeats, cpu),
        "epoch_torch": _median_seconds(epoch_of(dev_shard, 0), args.repeats, device),
    }
    per = {"batch": args.batch, "epoch": args.rows}
    return {f"{k}_images_per_s": per[k.split("_")[0]] / v for k, v in seconds.items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        args.batch, args.rows, args.repeats = 64, 256, 2
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        figures = measure(args)
    finally:
        torch.set_num_threads(threads)  # callers in the same process (tests) keep theirs
    result = {"device": args.device, "torch_threads": args.threads, "batch": args.batch,
              "size": args.size, "rows": args.rows, "repeats": args.repeats,
              "cpu": platform.processor() or platform.machine(), **figures}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    print(f"crop+flip, {args.batch}x{args.size}x{args.size}x3 uint8, torch on {args.device}, "
          f"{args.threads} CPU thread(s), median of {args.repeats}:")
    for level in ("batch", "epoch"):
        np_fig, t_fig = (figures[f"{level}_{p}_images_per_s"] for p in ("numpy", "torch"))
        print(f"  {level:5s}  numpy {np_fig:12,.0f} images/s   torch {t_fig:12,.0f} images/s"
              f"   torch/numpy {t_fig / np_fig:5.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
