"""Checkpoints: a directory of safe-to-load files, written atomically.

Layout of a checkpoint directory (a run dir holds one per kept epoch, ``checkpoint_*``; the
newest complete one is :func:`latest_checkpoint`)::

    model.pt        state_dict of the unwrapped model (tensors only)
    train_state.pt  {"optimizer", "scheduler", "scaler", "epoch", "best"} (tensors + primitives)
    ema.pt          optional (``optim.ema``): {"state": AveragedModel state_dict, "decay"}
    meta.json       {"format": 1, "epoch", "config", "class_names", "mean", "std", "metrics",
                     "eval_transform" (the validation sizes: stored_size, resize_size,
                     image_size; checkpoints before it: derived from "config"),
                     "bands" (multi-band data only), "budget" (optim.budget_s runs only)}

``model.pt`` always holds the raw (trained) weights; the exponential moving average of them,
when the run keeps one, is in ``ema.pt`` (:func:`ema_model_state` gives it as a plain model
state dict: what evaluation uses). The ``.pt`` files are read with ``torch.load(weights_only=True)``, which refuses pickles that
would run code. Writing goes to a temporary sibling directory that is renamed into place, so a
kill during a save never leaves a half-written checkpoint where a complete one is expected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from cnn_ray.io import atomic_directory
from cnn_ray.recipe.ema import ema_state_dict, load_ema_state_dict
from cnn_ray.train.techniques import unwrap_model

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing files or holds something unsafe/unexpected."""


@dataclass
class TrainingState:
    """What a checkpoint restores. ``epoch`` is the number of finished epochs; ``ema_state``
    the :func:`cnn_ray.recipe.ema_state_dict` of the run's EMA (None: it kept none)."""

    epoch: int
    model_state: dict
    optimizer_state: Optional[dict]
    scheduler_state: Optional[dict]
    scaler_state: Optional[dict]
    best: Optional[float]
    meta: dict
    ema_state: Optional[dict] = None


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    epoch: int,
    config: dict,
    class_names: list[str],
    mean: list[float],
    std: list[float],
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Any = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    best: Optional[float] = None,
    metrics: Optional[dict] = None,
    ema: Optional[nn.Module] = None,
    bands: Optional[dict] = None,
    eval_transform: Optional[dict] = None,
    budget: Optional[dict] = None,
) -> Path:
    """Write a checkpoint into ``directory`` (created; must not already hold one).

    ``ema``: the run's ``AveragedModel`` (:func:`cnn_ray.recipe.make_ema`), saved to ``ema.pt``
    next to the raw weights in ``model.pt``. ``bands``: the data's band transform
    (:meth:`cnn_ray.data.bands.BandTransform.to_dict`), kept in ``meta.json`` so evaluation,
    prediction and export map raw tiles exactly as training did. ``eval_transform``: the run's
    validation transform (:meth:`cnn_ray.data.preprocess.EvalTransform.to_dict`), kept in
    ``meta.json`` so they resize and crop as its validation did. ``budget``: a run trained to
    ``optim.budget_s``, its plan (:meth:`cnn_ray.train.budget_run.BudgetRun.state`, JSON), kept
    in ``meta.json`` so a resumed run keeps its derived epochs.

    The files are written into ``<directory>.tmp-<pid>-<random>`` and renamed to ``directory``
    at the end (:func:`cnn_ray.io.atomic_directory`). Returns ``directory`` as a Path. Raises
    ``FileExistsError`` if it exists.
    """
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"checkpoint directory already exists: {directory}")
    with atomic_directory(directory, replace=False) as tmp:
        state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
        torch.save(state, tmp / "model.pt")
        torch.save(
            {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": int(epoch),
                "best": best,
            },
            tmp / "train_state.pt",
        )
        if ema is not None:
            saved = ema_state_dict(ema)
            saved["state"] = {k: v.detach().cpu() for k, v in saved["state"].items()}
            torch.save(saved, tmp / "ema.pt")
        meta = {
            "format": FORMAT_VERSION, "epoch": int(epoch), "config": config,
            "class_names": list(class_names), "mean": list(map(float, mean)),
            "std": list(map(float, std)), "metrics": metrics or {},
            **({"bands": bands} if bands is not None else {}),
            **({"eval_transform": dict(eval_transform)} if eval_transform is not None else {}),
            **({"budget": budget} if budget is not None else {}),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return directory


def read_meta(directory: str | os.PathLike) -> dict:
    """The ``meta.json`` of a checkpoint (config, class names, normalisation, epoch)."""
    path = Path(directory) / "meta.json"
    if not path.exists():
        raise CheckpointError(f"{directory}: not a cnn_ray checkpoint (no meta.json)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return meta


def latest_checkpoint(run_directory: str | os.PathLike) -> Path:
    """The newest complete ``checkpoint_*`` directory of a run dir (complete: it holds
    ``meta.json``; newest: last by name). Raises CheckpointError if there is none."""
    run_directory = Path(run_directory)
    found = sorted(p for p in run_directory.glob("checkpoint_*") if (p / "meta.json").exists())
    if not found:
        raise CheckpointError(f"{run_directory}: no checkpoint found (expected checkpoint_*/meta.json)")
    return found[-1]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory (it holds ``meta.json``) as given, or a run directory's newest
    complete checkpoint (:func:`latest_checkpoint`), so ``--checkpoint ~/cnn_ray_runs/my_run``
    works as well as ``--checkpoint .../checkpoint_<time>``.

    Raises:
        CheckpointError: ``path`` does not exist, or is neither a checkpoint nor a run directory
            holding one (the message names the path and what was expected).
    """
    path = Path(path).expanduser()
    if (path / "meta.json").exists():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory (expected a checkpoint_*/ "
                              "directory holding meta.json, or the run directory above it)")
    if any(path.glob("checkpoint_*/meta.json")):
        return latest_checkpoint(path)
    raise CheckpointError(f"{path}: not a cnn_ray checkpoint (no meta.json) and no "
                          "checkpoint_*/meta.json below it (expected a checkpoint or its run directory)")


def load_checkpoint(directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> TrainingState:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        CheckpointError: a file is missing, or a file holds objects ``weights_only`` refuses
            (such as a pickle that would run code); the message names the file.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    model_state = _safe_load(directory / "model.pt", map_location)
    train_path = directory / "train_state.pt"
    train = _safe_load(train_path, map_location) if train_path.exists() else {}
    ema_path = directory / "ema.pt"
    return TrainingState(
        epoch=int(meta["epoch"]), model_state=model_state,
        optimizer_state=train.get("optimizer"), scheduler_state=train.get("scheduler"),
        scaler_state=train.get("scaler"), best=train.get("best"), meta=meta,
        ema_state=_safe_load(ema_path, map_location) if ema_path.exists() else None,
    )


def ema_model_state(state: TrainingState) -> Optional[dict]:
    """The averaged weights of ``state`` as a state dict of the plain model (the keys of
    ``model_state``), or None when the checkpoint holds no EMA or one never updated."""
    if state.ema_state is None:
        return None
    averaged = state.ema_state["state"].get("n_averaged")
    if averaged is not None and int(averaged) == 0:
        return None  # saved before the EMA's first update (optim.ema.start_epoch)
    prefix = "module."
    return {k[len(prefix):]: v for k, v in state.ema_state["state"].items()
            if k.startswith(prefix)}


def _safe_load(path: Path, map_location) -> Any:
    if not path.exists():
        raise CheckpointError(f"{path}: missing checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError and friends
        raise CheckpointError(
            f"{path}: refused to load (torch.load weights_only=True): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def restore_training_state(
    state: TrainingState, *, model: nn.Module, optimizer=None, scheduler=None, scaler=None,
    ema: Optional[nn.Module] = None,
) -> None:
    """Load model/optimizer/scheduler/scaler states from ``state`` into live objects.

    ``ema`` (an ``AveragedModel``): gets the saved average; when the checkpoint holds none (the
    EMA was switched on for this resume) it restarts from the restored weights.

    Raises:
        CheckpointError: the saved optimiser state has other parameter groups than
            ``optimizer`` (the message gives both layouts and the settings that shape them).
    """
    unwrap_model(model).load_state_dict(state.model_state)
    if ema is not None:
        if state.ema_state is not None:
            load_ema_state_dict(ema, state.ema_state)
        else:
            ema.module.load_state_dict(state.model_state)
    if optimizer is not None and state.optimizer_state is not None:
        try:
            optimizer.load_state_dict(state.optimizer_state)
        except ValueError as exc:  # torch: group count or sizes differ
            saved = [len(g["params"]) for g in state.optimizer_state.get("param_groups", [])]
            now = [len(g["params"]) for g in optimizer.param_groups]
            raise CheckpointError(
                f"the checkpoint's optimiser state ({type(optimizer).__name__} groups of "
                f"{saved} parameters) does not fit this run's optimiser ({now}): a setting "
                "that shapes its parameter groups changed (optim.optimizer, "
                "model.batchnorm.bias_lr_mult / freeze_scale, model.whitening, fine-tuning "
                "keys). Start a new "
                f"run with another run.name, or restore those settings to resume ({exc})"
            ) from exc
    if scheduler is not None and state.scheduler_state is not None:
        scheduler.load_state_dict(state.scheduler_state)
    if scaler is not None and state.scaler_state is not None:
        scaler.load_state_dict(state.scaler_state)
