"""Where a training worker gets its rank, device, checkpoint and reports (Ray glue):
:class:`RayTrainSession` (a Ray Train worker) and :class:`TuneTrialSession` (one worker inside a
Ray Tune trial's own process), and the in-trial checkpoints of a run dir. Used by
:mod:`cnn_ray.train.worker`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

import torch

import ray.train
import ray.train.torch

from cnn_ray.config import TrainConfig
from cnn_ray.io import atomic_directory
from cnn_ray.watch import say

# ------------------------------------------------------------------------------ sessions
class RayTrainSession:
    """Where a Ray Train worker gets its rank, device, checkpoint and reports: Ray Train.

    The same interface as :class:`TuneTrialSession`: ``rank``, ``world``, ``device()``,
    ``wrap(model)`` (DDP when world > 1), ``get_checkpoint()`` (a ``Checkpoint`` or None),
    ``report(metrics, checkpoint_dir)``, ``after_checkpoint()`` (a barrier) and
    ``dataset_shard(name)`` (streamed Ray Data shards).
    """

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def device(self, cfg: TrainConfig) -> torch.device:
        return ray.train.torch.get_device()

    def wrap(self, model):
        return ray.train.torch.prepare_model(model)

    def get_checkpoint(self):
        return ray.train.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: Optional[str]) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir)
                         if checkpoint_dir else None)

    def after_checkpoint(self) -> None:
        _wait_until_committed(self.rank)

    def dataset_shard(self, name: str):
        return ray.train.get_dataset_shard(name)


class TuneTrialSession:
    """One worker trained inside a Ray Tune trial's own process (no Train controller, no
    worker actor: the trial's training starts without their start-up, issue 13).

    Rank 0 of 1; the device is ``cuda:0`` when ``scaling.use_gpu`` (Ray sets the trial's
    ``CUDA_VISIBLE_DEVICES``) and the CPU otherwise; no DDP. Each epoch is one
    ``ray.tune.report``. Checkpoints are kept as a Train run keeps them, in the run dir
    (``<run_dir>/checkpoint_epoch_<epoch>``, written atomically before the report, the newest
    ``keep`` kept; the report carries its ``checkpoint_path``), so a trial restarted after an
    interruption resumes from its own run dir whatever Tune's saved state recorded. Only the
    memory cache feeds it and only on a local (or mounted) storage path
    (:func:`cnn_ray.train.launch.trains_in_trial`).
    """

    rank, world = 0, 1

    def __init__(self, run_dir: str, keep: int):
        self.run_dir, self.keep = Path(run_dir), max(1, int(keep))

    def device(self, cfg: TrainConfig) -> torch.device:
        if cfg.scaling.use_gpu and torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("cpu")

    def wrap(self, model):
        return model

    def get_checkpoint(self):
        path = latest_run_checkpoint(self.run_dir)
        return ray.train.Checkpoint.from_directory(str(path)) if path else None

    def report(self, metrics: dict, checkpoint_dir: Optional[str]) -> None:
        import ray.tune

        if checkpoint_dir:
            dest = self.run_dir / f"{RUN_CHECKPOINT_PREFIX}{int(metrics['epoch']):06d}"
            with atomic_directory(dest) as tmp:
                shutil.copytree(checkpoint_dir, tmp, dirs_exist_ok=True)
            for old in run_checkpoints(self.run_dir)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            metrics = {**metrics, "checkpoint_path": str(dest)}
        ray.tune.report(metrics)

    def after_checkpoint(self) -> None:
        pass  # written (atomically) before the report

    def dataset_shard(self, name: str):
        raise RuntimeError("training inside a Tune trial reads the memory cache "
                           "(data.cache: memory); streamed Ray Data shards need a TorchTrainer")


RUN_CHECKPOINT_PREFIX = "checkpoint_epoch_"


Session = Union[RayTrainSession, TuneTrialSession]  # where a worker reports and checkpoints


def run_checkpoints(run_dir: Path) -> list[Path]:
    """The complete in-trial checkpoints of a run dir (``checkpoint_epoch_<epoch>``, whole
    folders: they appear by an atomic rename), oldest epoch first."""
    found = [p for p in Path(run_dir).glob(f"{RUN_CHECKPOINT_PREFIX}*")
             if p.is_dir() and p.name[len(RUN_CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(RUN_CHECKPOINT_PREFIX):]))


def latest_run_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete in-trial checkpoint of ``run_dir``, or None."""
    found = run_checkpoints(run_dir)
    return found[-1] if found else None


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
            say(f"checkpoint commit not confirmed ({type(exc).__name__}: {exc}); continuing")
