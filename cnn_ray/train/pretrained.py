"""Pretrained weights for fine-tuning: read ``model.pretrained``, load it into the model, take
its normalisation, report what was loaded. The card and the freezing: :mod:`cnn_ray.train.finetune`.

``model.pretrained`` is named weights (``imagenet``, a torchvision weights name, a timm tag:
:mod:`cnn_ray.models.weights`, from the local caches), a state dict file or a cnn_ray checkpoint
directory. No Ray here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.io import append_jsonl, write_text
from cnn_ray.models import (NamedWeights, classifier_head, first_conv, is_weights_name,
                            load_matching_state, load_named_weights, read_state_dict,
                            resolve_weights)
from cnn_ray.train.checkpoint import CheckpointError, ema_model_state, load_checkpoint, read_meta
from cnn_ray.train.inputs import DataSummary
from cnn_ray.train.techniques import unwrap_model

Log = Callable[[str], None]


# ------------------------------------------------------------------------------ weights
@dataclass
class PretrainedWeights:
    """What ``model.pretrained`` holds: ``state`` (model state dict, CPU tensors), ``kind``
    (``"state_dict"`` file or cnn_ray ``"checkpoint"`` directory), ``weights`` (``"file"``,
    or the checkpoint's ``"ema"`` / ``"raw"`` weights) and, for a checkpoint, its
    normalisation (``mean``/``std``, ``[0, 1]`` units per channel) and class names."""

    state: dict[str, torch.Tensor]
    source: str
    kind: str
    weights: str
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    class_names: Optional[list[str]] = None


def read_pretrained(path: str) -> PretrainedWeights:
    """Read ``model.pretrained`` (``~`` expanded): a checkpoint directory through
    :func:`cnn_ray.train.checkpoint.load_checkpoint` (its EMA weights when it kept an updated
    EMA, as its evaluation used, else its raw weights), or a file through
    :func:`cnn_ray.models.read_state_dict`; both with ``torch.load(weights_only=True)``.

    Raises:
        ConfigError: the path does not exist, or the checkpoint/file is unreadable or refused
            (the message names ``model.pretrained`` and the file).
    """
    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise ConfigError(f"model.pretrained: file or checkpoint directory does not exist: "
                          f"{path!r}")
    try:
        if p.is_dir():
            ckpt = load_checkpoint(p)
            averaged = ema_model_state(ckpt)
            return PretrainedWeights(
                state=averaged if averaged is not None else ckpt.model_state, source=str(p),
                kind="checkpoint", weights="ema" if averaged is not None else "raw",
                mean=list(ckpt.meta["mean"]), std=list(ckpt.meta["std"]),
                class_names=list(ckpt.meta["class_names"]))
        return PretrainedWeights(state=read_state_dict(p), source=str(p), kind="state_dict",
                                 weights="file")
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"model.pretrained: {exc}") from None


@dataclass
class PretrainedReport:
    """Which tensors ``model.pretrained`` gave the model (state-dict keys, sorted): ``loaded``
    (copied), ``new`` (head keys the weights lack: fresh init), ``skipped`` (head keys, or with
    named weights the ``small_input`` stem's, of another shape: fresh init), ``unused`` (head
    keys only the weights have), ``adapted`` (named weights: the stem conv adapted to the input
    channels). ``kind``: ``"named"`` (torchvision/timm weights, ``weights`` their canonical
    name), ``"state_dict"`` or ``"checkpoint"``. ``preprocessing``: named weights' mean/std,
    resize/crop sizes and interpolation (:meth:`cnn_ray.models.NamedWeights.preprocessing`).
    ``applied``: False when the run resumed from its own checkpoint (``resumed_from_epoch``),
    whose weights replaced these."""

    source: str
    kind: str
    weights: str
    head: str
    normalization: str
    loaded: list[str]
    new: list[str]
    skipped: list[str]
    unused: list[str]
    adapted: list[str] = dataclasses.field(default_factory=list)
    preprocessing: Optional[dict] = None
    applied: bool = True
    resumed_from_epoch: Optional[int] = None

    def to_dict(self) -> dict:
        """JSON-safe plain dict of every field."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for the log."""
        if not self.applied:
            return (f"resumed from checkpoint at epoch {self.resumed_from_epoch}, pretrained not "
                    f"applied (model.pretrained={self.source}: the run's own weights were "
                    f"restored over it)")
        fresh = self.skipped + self.new
        adapted = (f", {self.adapted} adapted to the input channels" if self.adapted else "")
        return (f"model.pretrained {self.kind} {self.source} ({self.weights} weights): "
                f"{len(self.loaded)} tensors loaded, {len(self.new)} new, {len(self.skipped)} "
                f"skipped for shape mismatch{adapted}; freshly initialised: {fresh or 'none'} "
                f"(head {self.head!r}); normalisation: {self.normalization}")


def apply_pretrained(model: nn.Module, cfg: TrainConfig) -> Optional[PretrainedReport]:
    """Load ``model.pretrained`` into the unwrapped ``model`` (built and prepared as the run
    trains it, :func:`cnn_ray.recipe.apply.prepare_model`), the head re-initialised where its
    shape differs (:func:`cnn_ray.models.load_matching_state`; named weights also adapt or
    re-initialise the stem, :func:`cnn_ray.models.load_named_weights`). None when the key is
    unset.

    Raises:
        ConfigError: unreadable or (offline) uncached weights, an unknown weights name, or keys
            missing/unexpected/of another shape outside the classifier head (the message names
            ``model.pretrained``, the file and the keys).
    """
    if not cfg.model.pretrained:
        return None
    model = unwrap_model(model)
    if is_weights_name(cfg.model.pretrained):
        return _apply_named(model, cfg)
    w = read_pretrained(cfg.model.pretrained)
    try:
        result = load_matching_state(model, w.state, w.source)
        head = classifier_head(model)[0]
    except ValueError as exc:
        raise ConfigError(f"model.pretrained: {exc}") from None
    norm = ("the new data's mean/std (model.normalization=data)"
            if cfg.model.normalization == "data"
            else "the checkpoint's mean/std" if w.kind == "checkpoint"
            else "the new data's mean/std (a state dict file carries none)")
    return PretrainedReport(source=w.source, kind=w.kind, weights=w.weights, head=head,
                            normalization=norm, **result)


def _apply_named(model: nn.Module, cfg: TrainConfig) -> PretrainedReport:
    spec = cfg.model.pretrained
    try:
        w, result = load_named_weights(model, cfg.model.name, spec,
                                       cfg.model.build_knobs(cfg.data.image_size))
        head = classifier_head(model)[0]
    except ValueError as exc:
        raise ConfigError(f"model.pretrained: {exc}") from None
    channels = first_conv(model)[1].in_channels
    norm = (f"the weights' mean/std ({w.name}: {list(w.mean)}, {list(w.std)})"
            if _uses_weights_stats(cfg, w, channels) else
            "the new data's mean/std (model.normalization=data)"
            if cfg.model.normalization == "data" else
            f"the new data's mean/std (the weights' are for {len(w.mean)} channels, the data "
            f"has {channels})")
    return PretrainedReport(source=spec, kind="named", weights=w.name, head=head,
                            normalization=norm, preprocessing=w.preprocessing(), **result)


def _uses_weights_stats(cfg: TrainConfig, w: NamedWeights, channels: int) -> bool:
    return cfg.model.normalization == "auto" and len(w.mean) == channels


def named_weights(cfg: TrainConfig) -> Optional[NamedWeights]:
    """The :class:`~cnn_ray.models.NamedWeights` ``model.pretrained`` names for ``model.name``
    (resolved without reading or downloading a file), or None when it is unset or a path.

    Raises:
        ConfigError: the name does not resolve (named ``model.pretrained``).
    """
    spec = cfg.model.pretrained
    if not spec or not is_weights_name(spec):
        return None
    try:
        return resolve_weights(cfg.model.name, spec, cfg.model.build_knobs(cfg.data.image_size))
    except ValueError as exc:
        raise ConfigError(f"model.pretrained: {exc}") from None


def pretrained_preprocessing(cfg: TrainConfig) -> Optional[dict]:
    """The preprocessing the ``model.pretrained`` weights were trained with, for the data side:
    ``{"weights", "mean", "std", "resize_size", "crop_size", "interpolation"}`` (mean/std in
    ``[0, 1]`` units, sizes in pixels: resize the short side to ``resize_size``, centre-crop
    ``crop_size``), from torchvision's ``weights.transforms()`` or timm's ``pretrained_cfg``;
    None unless ``model.pretrained`` names weights. Works on any run's config, also one read
    back from a checkpoint's ``meta.json``.

    Raises:
        ConfigError: as :func:`named_weights`.
    """
    w = named_weights(cfg)
    return w.preprocessing() if w is not None else None


def keep_pretrained_normalization(cfg: TrainConfig, summary: DataSummary) -> DataSummary:
    """``summary`` with the mean/std of the ``model.pretrained`` weights: the named weights'
    own (when they were made for the data's channel count) or the cnn_ray checkpoint's
    (``meta.json``); unchanged for a state dict file or with ``model.normalization: data``.
    The driver (and the Ray-free trainer) call it before the summary reaches the workers, so
    training, evaluation and the run's own checkpoints all use that normalisation.

    Raises:
        ConfigError: an unknown weights name, an unreadable ``meta.json``, or a checkpoint's
            channel count other than the data's.
    """
    path = cfg.model.pretrained
    if not path or cfg.model.normalization == "data":
        return summary
    channels = summary.image_shape[2]
    w = named_weights(cfg)
    if w is not None:
        if not _uses_weights_stats(cfg, w, channels):
            return summary
        return dataclasses.replace(summary, mean=[float(v) for v in w.mean],
                                   std=[float(v) for v in w.std])
    if not Path(os.path.expanduser(path)).is_dir():
        return summary
    try:
        meta = read_meta(os.path.expanduser(path))
    except CheckpointError as exc:
        raise ConfigError(f"model.pretrained: {exc}") from None
    if len(meta["mean"]) != channels:
        raise ConfigError(f"model.pretrained: {path} was trained on {len(meta['mean'])}-channel "
                          f"images, the data has {channels} channels")
    return dataclasses.replace(summary, mean=[float(v) for v in meta["mean"]],
                               std=[float(v) for v in meta["std"]])


def record_pretrained(report: Optional[PretrainedReport], run_dir: Optional[str], log: Log, *,
                      resumed_from_epoch: int = 0) -> Optional[PretrainedReport]:
    """Log the pretrained report (rank 0) and append it to ``<run_dir>/events.jsonl`` as an
    ``{"event": "pretrained", ...}`` line; when it was applied, also ``pretrained.json``.
    ``resumed_from_epoch`` > 0: the run restored its own checkpoint over the pretrained
    weights, and the report says ``pretrained not applied``. Returns the report recorded."""
    if report is None:
        return None
    if resumed_from_epoch:
        report = dataclasses.replace(report, applied=False,
                                     resumed_from_epoch=int(resumed_from_epoch))
    log(report.summary())
    if run_dir:
        append_jsonl(run_dir, "events.jsonl",
                     {"time": time.time(), "event": "pretrained", **report.to_dict()})
        if report.applied:
            write_text(run_dir, "pretrained.json", json.dumps(report.to_dict(), indent=2))
    return report
