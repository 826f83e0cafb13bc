"""Which techniques of the fast-training recipe a run switches on, applied to a model and the
step loop. The decisions live here; the Ray glue (:mod:`cnn_ray.train.worker`,
:mod:`cnn_ray.train.launch`) only calls these functions. No Ray.

Order of operations in a worker (every rank the same, so ranks agree):

1. :func:`prepare_model` on the fresh model: BatchNorm settings, patch-whitening of the first
   conv from the driver's :func:`compute_stem_weights`, BlurPool, ``channels_last``,
   ``torch.compile``
   (in place, ``nn.Module.compile``, so the module keeps its class and its state-dict keys);
2. DDP wrapping (PyTorch's "where to apply torch.compile": compile the inner module, then wrap);
3. :func:`make_model_ema` on the unwrapped, device-placed model;
4. per epoch: :func:`freeze_whitening_bias` at its start, :func:`build_step_hooks` for the
   steps (MixUp/CutMix, EMA updates), :func:`eval_model` + :func:`tta_predictor` to evaluate.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnn_ray.config import TrainConfig
from cnn_ray.config_recipe import EMA
from cnn_ray.recipe.batchnorm import batchnorm_modules
from cnn_ray.recipe.blurpool import apply_blurpool
from cnn_ray.recipe.ema import copy_ema_to_model, ema_decay_at, make_ema
from cnn_ray.recipe.mixing import mixing_transform
from cnn_ray.recipe.tta import predict_tta, tta_views
from cnn_ray.recipe.whitening import first_conv, patch_whitening_weights
from cnn_ray.train.loop import StepHooks
from cnn_ray.train.techniques import apply_channels_last, unwrap_model

Predict = Callable[[nn.Module, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------- model
def prepare_model(model: nn.Module, cfg: TrainConfig, stem_weights=None, *,
                  compile: Optional[bool] = None) -> nn.Module:
    """Apply the model-side switches of ``cfg`` to a fresh (unwrapped) ``model``, in place.

    - ``model.batchnorm``: ``momentum``/``eps`` of every BatchNorm where set (``None`` keeps the
      model's), scales frozen with ``freeze_scale`` (cnn_ray.recipe.batchnorm's card);
    - ``model.whitening.enabled``: the first conv's first ``2*C*k*k`` filters set to
      ``stem_weights`` and frozen; its bias (added as zeros if the conv has none) stays
      trainable until :func:`freeze_whitening_bias`. ``stem_weights=None`` only adds the bias
      and freezes the weight: the structure a checkpoint of a whitened model loads into;
    - ``model.blurpool``: :func:`cnn_ray.recipe.blurpool.apply_blurpool` (a blur before each
      strided conv past the stem; the state-dict keys stay the same);
    - ``model.channels_last``: :func:`~cnn_ray.train.techniques.apply_channels_last`;
    - ``model.compile`` (or ``compile`` when given): ``model.compile()`` in place, so the module
      stays what :func:`~cnn_ray.train.techniques.unwrap_model` returns and its state dict has
      no ``_orig_mod.`` prefixes. Compile before DDP wraps the model. With
      ``data.progressive`` the input side changes during the run: dynamo's recompile limit is
      raised to cover every side of the ramp (:func:`allow_size_recompiles`).

    Args:
        stem_weights: ``(2*C*k*k, C, k, k)`` float array/tensor from :func:`compute_stem_weights`.
    Returns:
        ``model`` (changed in place).
    Raises:
        ValueError: ``stem_weights`` without ``model.whitening.enabled``, or weights that do not
            fit the first conv (the message names the model and the shapes).
    """
    apply_batchnorm_settings(model, cfg)
    if cfg.model.whitening.enabled:
        set_stem_weights(model, stem_weights, model_name=cfg.model.name)
    elif stem_weights is not None:
        raise ValueError("stem_weights given but model.whitening.enabled is false")
    if cfg.model.blurpool:
        apply_blurpool(model)
    if cfg.model.channels_last:
        apply_channels_last(model)
    if cfg.model.compile if compile is None else compile:
        allow_size_recompiles(cfg)
        model.compile()
    return model


def allow_size_recompiles(cfg: TrainConfig) -> int:
    """Let ``torch.compile`` follow ``data.progressive``'s changing input side.

    Dynamo guards each compiled graph on its input shapes. With its default automatic dynamic
    shapes, the first new side recompiles once with a symbolic height/width (one graph for the
    rest of the ramp); with ``torch._dynamo.config.automatic_dynamic_shapes`` off, or shapes
    marked static, every side gets its own graph (specialised kernels, one compile each, as
    FFCV's fixed-size steps). Either way the frame must not hit
    ``torch._dynamo.config.recompile_limit`` (8 by default; past it dynamo falls back to eager
    for that frame, or raises with ``fail_on_recompile_limit_hit``): this raises it to at least
    two graphs per distinct side (full and last partial batch) plus the default's 8 (the
    evaluation shapes), and never lowers it.

    Returns:
        The limit in force (unchanged without ``data.progressive``).
    """
    import torch._dynamo.config as dynamo_config

    limit = int(dynamo_config.recompile_limit)
    p, image_size = cfg.data.progressive, cfg.data.image_size
    if not p.enabled:
        return limit
    end = p.end_size or image_size
    sides = {max(p.start_size, min(end, k * p.step))
             for k in range(p.start_size // p.step, -(-end // p.step) + 1)}
    limit = max(limit, 2 * len(sides) + 8)
    dynamo_config.recompile_limit = limit
    return limit


def apply_batchnorm_settings(model: nn.Module, cfg: TrainConfig) -> int:
    """``model.batchnorm``: set ``momentum`` (torch convention) and ``eps`` of every BatchNorm
    where the config sets them; ``freeze_scale`` sets ``requires_grad=False`` on the BN weights.
    Returns the number of BatchNorm modules (0 changes nothing)."""
    bn = cfg.model.batchnorm
    mods = batchnorm_modules(model)
    for m in mods:
        if bn.momentum is not None:
            m.momentum = bn.momentum
        if bn.eps is not None:
            m.eps = bn.eps
        if bn.freeze_scale and m.weight is not None:
            m.weight.requires_grad_(False)
    return len(mods)


def set_stem_weights(model: nn.Module, weights=None, *,
                     model_name: Optional[str] = None) -> nn.Parameter:
    """Make the first ``nn.Conv2d`` of ``model`` a patch-whitening layer: its first
    ``len(weights)`` filters set to ``weights`` (None: left as they are), its weight frozen, its
    bias a trainable parameter (zeros added if it had none). Returns that bias.

    Raises:
        ValueError: no conv, or ``weights`` of a shape the conv cannot take (a different kernel
            or channel count, more filters than the conv has).
    """
    label = model_name or type(model).__name__
    name, conv = first_conv(model)
    if weights is not None:
        w = torch.tensor(np.asarray(weights, dtype=np.float32))  # a copy: may be read-only
        fits = (w.ndim == 4 and w.shape[1:] == conv.weight.shape[1:]
                and w.shape[0] <= conv.out_channels and conv.groups == 1)
        if not fits:
            raise ValueError(
                f"{label}: whitening weights of shape {tuple(w.shape)} do not fit the first conv "
                f"{name!r} (weight {tuple(conv.weight.shape)}, groups {conv.groups}); patch "
                f"whitening needs 2*C*k*k <= out_channels")
        with torch.no_grad():
            conv.weight[: w.shape[0]].copy_(w.to(conv.weight.device, conv.weight.dtype))
    conv.weight.requires_grad_(False)
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device,
                                             dtype=conv.weight.dtype))
    return conv.bias


def compute_stem_weights(cfg: TrainConfig, sample: np.ndarray, *, num_classes: int,
                         mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Patch-whitening filters for ``cfg.model``'s first conv from a sample of training images.

    Builds the model once (to read the first conv's kernel size and check the weights fit it),
    then :func:`cnn_ray.recipe.patch_whitening_weights` with ``model.whitening.eps``.

    Args:
        sample: ``(N, H, W, C)`` uint8 prepared training images.
        mean, std: the prepared per-channel normalisation (``[0, 1]`` units), as in training.
    Returns:
        ``(2*C*k*k, C, k, k)`` float32 numpy array.
    Raises:
        ValueError: the model has no conv, a non-square/grouped first conv, or too few output
            channels for the filters (the message names the model).
    """
    from cnn_ray.models import create_model

    model = create_model(cfg.model.name, num_classes=num_classes, in_channels=sample.shape[-1],
                         **cfg.model.build_knobs(cfg.data.image_size))
    name, conv = first_conv(model)
    kh, kw = conv.kernel_size
    if kh != kw:
        raise ValueError(f"{cfg.model.name}: first conv {name!r} has a non-square kernel "
                         f"{conv.kernel_size}; patch whitening needs k x k")
    weights = patch_whitening_weights(sample, kh, cfg.model.whitening.eps, mean=mean, std=std)
    set_stem_weights(model, weights, model_name=cfg.model.name)  # raises if they do not fit
    return weights.numpy()


def freeze_whitening_bias(model: nn.Module, cfg: TrainConfig, epoch: int) -> bool:
    """At the start of 0-based ``epoch``: freeze the whitening conv's bias once
    ``model.whitening.bias_epochs`` epochs are done (rounded up to whole epochs).

    The bias gets ``requires_grad=False``; its gradient stays None, so the optimiser (built
    with it, so its state dict keeps its shape across a resume) no longer moves it. A DDP
    wrapper fixes its parameter set when built: the caller re-wraps when this returns True.
    Returns whether the bias was frozen now (False: whitening off, too early, or already).
    """
    w = cfg.model.whitening
    if not w.enabled or epoch < math.ceil(w.bias_epochs):
        return False
    bias = first_conv(unwrap_model(model))[1].bias
    if bias is None or not bias.requires_grad:
        return False
    bias.requires_grad_(False)
    return True


# ------------------------------------------------------------------------------------- ema
def make_model_ema(model: nn.Module, cfg: TrainConfig) -> Optional[AveragedModel]:
    """``optim.ema.enabled``: an EMA (:func:`cnn_ray.recipe.make_ema`) of the unwrapped
    ``model``, on its device (call after the model is on the device); else None.

    A model compiled in place gives a compiled copy (the deep copy rebinds the compiled call
    to the copy, which runs its own weights).
    """
    if not cfg.optim.ema.enabled:
        return None
    return make_ema(unwrap_model(model), decay=cfg.optim.ema.decay)


def ema_warmup_decay(decay: float, updates: int) -> float:
    """``min(decay, (1 + n) / (10 + n))`` after ``n`` updates: the average follows the weights
    closely early on (TensorFlow's ``ExponentialMovingAverage(num_updates=...)``)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class EmaUpdate:
    """``StepHooks.after_step`` callable: fold ``model`` into ``ema`` every ``every_steps``
    optimiser steps (counted over the run from ``start_step``, so a resumed run keeps the
    phase) once ``start_epoch`` epochs are done, with the decay ramp ``power``
    (:func:`cnn_ray.recipe.ema.ema_decay_at` over ``total_steps``) or the warm-up of
    :func:`ema_warmup_decay` when ``warmup``; with ``lookahead`` the average is copied back
    into the model after each update (airbench)."""

    def __init__(self, ema: AveragedModel, model: nn.Module, settings: EMA, start_step: int = 0,
                 *, steps_per_epoch: int = 1, total_steps: Optional[int] = None):
        self.ema, self.model, self.settings = ema, unwrap_model(model), settings
        self.step = int(start_step)
        self.first = int(settings.start_epoch * steps_per_epoch)
        self.total = total_steps

    @torch.no_grad()
    def __call__(self, epoch_step: int) -> None:
        self.step += 1
        if self.step < self.first or self.step % self.settings.every_steps:
            return
        s = self.settings
        if s.power > 0:
            decay = ema_decay_at(s.decay, self.step, self.total, s.power)
        else:
            decay = ema_warmup_decay(s.decay, int(self.ema.n_averaged)) if s.warmup else s.decay
        self.ema.multi_avg_fn = get_ema_multi_avg_fn(decay)
        self.ema.update_parameters(self.model)
        if s.lookahead:
            copy_ema_to_model(self.ema, self.model)


def eval_model(model: nn.Module, ema: Optional[AveragedModel]) -> nn.Module:
    """The module to evaluate: the averaged weights once an EMA has been updated (it starts at
    ``optim.ema.start_epoch``), else ``model``."""
    return ema.module if ema is not None and int(ema.n_averaged) > 0 else model


# ------------------------------------------------------------------------------ step loop
def build_step_hooks(cfg: TrainConfig, model: nn.Module, ema: Optional[AveragedModel],
                     num_classes: int, *, seed: int = 0, start_step: int = 0,
                     steps_per_epoch: int = 1) -> StepHooks:
    """The :class:`~cnn_ray.train.loop.StepHooks` of ``cfg``: MixUp/CutMix as the batch
    transform (``augment.mixup`` / ``augment.cutmix``), an :class:`EmaUpdate` after each step
    when ``ema`` is given. ``seed``: the mixing draws' seed (per rank); ``start_step``:
    optimiser steps already done (a resumed run)."""
    after = [EmaUpdate(ema, model, cfg.optim.ema, start_step, steps_per_epoch=steps_per_epoch,
                       total_steps=steps_per_epoch * cfg.optim.epochs)] if ema is not None else []
    return StepHooks(batch_transform=mixing_transform(cfg.augment, num_classes, seed),
                     after_step=after)


def tta_predictor(mode: str) -> Optional[Predict]:
    """``evaluate(..., predict=...)`` for ``eval.tta`` ``mode``: None for ``"none"``, else
    :func:`cnn_ray.recipe.predict_tta` with that mode.

    Raises:
        ValueError: unknown mode.
    """
    tta_views(mode)  # validates
    if mode == "none":
        return None
    return lambda net, x: predict_tta(net, x, mode)
