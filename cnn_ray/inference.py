"""A checkpoint opened for inference: the model built as the run trained it, its weights,
normalisation and test-time augmentation, behind one call. No Ray.

Used by evaluation (:func:`cnn_ray.evaluate.evaluate_batches`), batch prediction
(:mod:`cnn_ray.predict`) and export (:mod:`cnn_ray.export`), so the three preprocess and run a
checkpoint identically: ``uint8 (N, H, W, C)`` stored images -> the run's validation transform
(:class:`~cnn_ray.data.preprocess.EvalTransform`, recorded in the checkpoint: resize to
``eval.resize_size``, centre crop ``eval.image_size``) -> ``(x / 255 - mean) / std``
with the checkpoint's statistics (:func:`cnn_ray.data.preprocess.normalize_batch`) -> the model
(EMA weights when the run kept them, as its own ``val_top1`` measured) under the precision the
run used -> logits, averaged over the TTA views of ``eval.tta``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from cnn_ray.config import TrainConfig
from cnn_ray.data.preprocess import EvalTransform, normalize_batch
from cnn_ray.models import create_model
from cnn_ray.recipe.apply import Predict, prepare_model, tta_predictor
from cnn_ray.recipe.tta import tta_views
from cnn_ray.train.checkpoint import ema_model_state, load_checkpoint
from cnn_ray.train.loop import StepSettings
from cnn_ray.train.techniques import autocast_context, resolve_precision


@dataclass
class InferenceModel:
    """A loaded checkpoint. ``model`` is in eval mode on ``settings.device``; ``weights`` is
    ``"ema"`` or ``"raw"``; ``tta`` the TTA mode and ``predict`` its function (None: plain
    forward); ``settings`` carries device, precision, mean/std and ``channels_last``;
    ``eval_transform`` the validation transform of the run (``image_size``: its crop side,
    the model's input side here)."""

    model: nn.Module
    config: TrainConfig
    class_names: list[str]
    settings: StepSettings
    tta: str
    predict: Optional[Predict]
    weights: str
    image_size: int
    channels: int
    bands: Optional[dict] = None  # multi-band tiles: the run's BandTransform (to_dict)
    eval_transform: Optional[EvalTransform] = None

    @property
    def tta_views(self) -> int:
        """Forward passes per image (1, 2 or 6)."""
        return tta_views(self.tta)

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(N, H, W, C) uint8`` -> normalised ``(N, C, H, W)`` in the run's input dtype on the
        device (what evaluation feeds the model). Raises ValueError on a wrong shape/dtype."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        s = self.settings
        return normalize_batch(images.to(s.device, non_blocking=True), s.mean, s.std,
                               dtype=s.input_dtype, channels_last=s.channels_last)

    @torch.no_grad()
    def logits(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(N, H, W, C) uint8`` at ``image_size`` -> ``(N, K)`` float32 logits (TTA-averaged)."""
        x = self.preprocess(images)
        with autocast_context(self.settings.device, self.settings.precision):
            out = self.predict(self.model, x) if self.predict is not None else self.model(x)
        return out.float()


def load_inference_model(checkpoint: str | os.PathLike, *, tta: Optional[str] = None,
                         use_ema: bool = True, device: str | torch.device = "cpu",
                         precision: Optional[str] = None,
                         threads: Optional[int] = None) -> InferenceModel:
    """Open a cnn_ray checkpoint directory for inference.

    The model is built as the run trained it (:func:`cnn_ray.recipe.apply.prepare_model`:
    BatchNorm settings, the whitening conv's bias, ``channels_last``; not ``torch.compile``).

    Args:
        tta: ``none``, ``flip`` or ``flip_translate``; None: the checkpoint config's ``eval.tta``.
        use_ema: use the averaged weights when the checkpoint holds them (``ema.pt``).
        device: where the model runs.
        precision: ``fp32``/``bf16``/``fp16``/``auto``; None: the run's ``precision.dtype``
            (fp16 is replaced by fp32 on a CPU, which has no fast fp16).
        threads: ``torch.set_num_threads`` for this process when given.
    Raises:
        CheckpointError: missing/unreadable checkpoint files (the message names the file).
        ValueError: an unknown ``tta`` mode.
    """
    state = load_checkpoint(checkpoint)
    meta = state.meta
    cfg = TrainConfig.from_dict(meta["config"], source=f"{checkpoint}/meta.json", check_paths=False)
    names = list(meta["class_names"])
    tta = tta or cfg.eval.tta
    predict = tta_predictor(tta)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    model = create_model(cfg.model.name, num_classes=len(names), in_channels=len(meta["mean"]),
                         **cfg.model.build_knobs(cfg.data.image_size))
    prepare_model(model, cfg, compile=False)  # one pass over the data: compiling costs more
    averaged = ema_model_state(state) if use_ema else None
    model.load_state_dict(averaged if averaged is not None else state.model_state)
    model.to(device).eval()
    requested = precision or cfg.precision.dtype
    if device.type == "cpu" and requested == "fp16":
        requested = "fp32"
    s = StepSettings(device=device, precision=resolve_precision(requested, device),
                     mean=meta["mean"], std=meta["std"], channels_last=cfg.model.channels_last)
    transform = recorded_eval_transform(meta, cfg)
    return InferenceModel(model=model, config=cfg, class_names=names, settings=s, tta=tta,
                          predict=predict, weights="ema" if averaged is not None else "raw",
                          image_size=transform.image_size, channels=len(meta["mean"]),
                          bands=meta.get("bands"), eval_transform=transform)


def recorded_eval_transform(meta: dict, cfg: TrainConfig) -> EvalTransform:
    """The validation transform a checkpoint records (``meta.json`` ``eval_transform``); for a
    checkpoint written before it was recorded, the one of its config ``cfg``."""
    raw = meta.get("eval_transform")
    return EvalTransform.from_dict(raw) if raw else EvalTransform.of(cfg)


def eval_transform_for(meta: dict, cfg: TrainConfig) -> EvalTransform:
    """The validation transform to run a checkpoint with: the one it records, unless ``cfg``
    (the checkpoint's config with the user's overrides, or the recipe given to evaluation)
    sets other sizes (``data.store_size``/``image_size``, ``eval.resize_size``/
    ``image_size``): then ``cfg``'s, so ``eval.image_size=...`` tests another resolution."""
    saved = TrainConfig.from_dict(meta["config"], source="meta.json", check_paths=False)
    mine = EvalTransform.of(cfg)
    return recorded_eval_transform(meta, saved) if mine == EvalTransform.of(saved) else mine
