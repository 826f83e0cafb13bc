"""A training worker's batches (Ray glue): :class:`_StreamFeed` (this worker's streamed Ray
Data shards), :class:`_MemoryFeed` (its share of the memory cache), :func:`open_feed` choosing
between them, and the fault-injection test hook :func:`_with_fault`. Used by
:mod:`cnn_ray.train.worker`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch

import ray

from cnn_ray.config import TrainConfig
from cnn_ray.train.inputs import FaultInjection, WorkerInputs
from cnn_ray.train.sessions import Session

# ------------------------------------------------------------------------------ batches
class _StreamFeed:
    """This worker's Ray Data shards (``data.cache: none``): ``iter_torch_batches`` with the
    local shuffle seeded by (``run.seed``, epoch, rank). The tasks crop each epoch's side of
    ``data.progressive``, except with ``optim.budget_s`` (the epoch count is not known to the
    driver): they crop at the end size and each batch is resized down to ``size`` here
    (:func:`cnn_ray.data.pipeline.train_sizes`)."""

    def __init__(self, cfg: TrainConfig, rank: int, device: torch.device, session):
        self.cfg, self.rank, self.device = cfg, rank, device
        self.train = session.dataset_shard("train")
        self.val = session.dataset_shard("val")

    def train_batches(self, epoch: int, size: Optional[int] = None) -> Iterable[dict]:
        d, local = self.cfg.data, self.cfg.data.shuffle == "local"
        batches = self.train.iter_torch_batches(
            batch_size=self.cfg.per_worker_batch_size(), prefetch_batches=d.prefetch_batches,
            drop_last=d.drop_last, local_shuffle_buffer_size=(d.shuffle_buffer or None) if local else None,
            local_shuffle_seed=self.cfg.run.seed * 100_003 + epoch * 1_009 + self.rank
            if local and d.shuffle_buffer else None,
            pin_memory=self.device.type == "cuda",
        )
        if size is None or not d.progressive.enabled or self.cfg.optim.budget_s is None:
            return batches
        from cnn_ray.data.resized_crop import resize_batch

        return ({**b, "image": resize_batch(b["image"], size)} for b in batches)

    def val_batches(self) -> Iterable[dict]:
        return self.val.iter_torch_batches(batch_size=self.cfg.optim.eval_batch_size,
                                           prefetch_batches=self.cfg.data.prefetch_batches,
                                           pin_memory=self.device.type == "cuda")


class _MemoryFeed:
    """``data.cache: memory``: this worker's share of the arrays the driver put (zero-copy),
    augmented per batch with draws from (``run.seed``, epoch, image idx). On a GPU the rows
    live on the device and are augmented there (:class:`~cnn_ray.data.memory.DeviceShard`)
    when the augmentation is one the device path supports; else on the host (numpy)."""

    def __init__(self, refs: dict, cfg: TrainConfig, rank: int, world: int, log,
                 device: torch.device):
        from cnn_ray.data.memory import InMemoryShard, shard_for_device

        self.cfg, self.rank = cfg, rank
        t0 = time.perf_counter()
        self.train = InMemoryShard.from_arrays(ray.get(refs["train"]), rank=rank, world=world,
                                               equal=True)
        self.val = InMemoryShard.from_arrays(ray.get(refs["val"]), rank=rank, world=world,
                                             equal=False)
        self.resize = cfg.data.progressive.enabled  # every epoch's side, the stored one too
        self.train = shard_for_device(self.train, device, cfg.augment, always_resize=self.resize,
                                      out_size=cfg.data.crop_size_at(cfg.optim.epochs,
                                                                     cfg.optim.epochs))
        self.val = shard_for_device(self.val, device)
        log(f"data in memory ({type(self.train).__name__}): {len(self.train)} train + "
            f"{len(self.val)} val images per worker "
            f"({(self.train.nbytes + self.val.nbytes) / 1e6:.0f} MB) in "
            f"{time.perf_counter() - t0:.2f}s")

    def train_batches(self, epoch: int, size: Optional[int] = None) -> Iterable[dict]:
        c = self.cfg
        return self.train.batches(
            c.per_worker_batch_size(), augment=c.augment, seed=c.run.seed, epoch=epoch,
            rank=self.rank, shuffle=c.data.shuffle != "none", drop_last=c.data.drop_last,
            prefetch=max(1, c.data.prefetch_batches), out_size=size, always_resize=self.resize)

    def val_batches(self) -> Iterable[dict]:
        return self.val.batches(self.cfg.optim.eval_batch_size, shuffle=False, prefetch=1)


def open_feed(inputs: WorkerInputs, rank: int, world: int, device: torch.device, log, *,
              session: Session):
    """This worker's batches: ``train_batches(epoch, size)`` (0-based epoch; ``size``: its
    training side, :meth:`~cnn_ray.config.DataConfig.crop_size_at`) and ``val_batches()``,
    each an iterable of ``{"image": (N, H, W, C) uint8, "label": (N,) int64}`` torch batches."""
    if inputs.memory is not None:
        return _MemoryFeed(inputs.memory, inputs.config, rank, world, log, device)
    return _StreamFeed(inputs.config, rank, device, session)


def _with_fault(batches: Iterable[dict], fault: Optional[FaultInjection], rank: int,
                epoch: int) -> Iterator[dict]:
    """Test hook: SIGKILL this worker once at ``fault``'s (1-based ``epoch``, step)."""
    if fault is None or not fault.applies(rank, epoch):
        yield from batches
        return
    marker = Path(fault.marker)
    for i, batch in enumerate(batches):
        if i == fault.step and not marker.exists():
            marker.write_text(f"killed rank {rank} at epoch {epoch} step {i}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        yield batch
