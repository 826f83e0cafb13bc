"""Config sections of the fast-training recipe (issue 11), part of :class:`cnn_ray.config.TrainConfig`.

Each key switches one technique of :mod:`cnn_ray.recipe` (its card says what it does, the
values that work and the source); every key is a plain dotted key a sweep space can search
(``model.whitening.enabled``, ``optim.ema.decay``, ``eval.tta`` ...). Defaults leave every
technique off, so a config without these keys trains as before.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MixUp(_Strict):
    """MixUp (Zhang et al., 2018): convex combinations of image pairs and their labels, with
    ``lambda ~ Beta(alpha, alpha)``; for longer runs on harder data."""

    enabled: bool = Field(False, description="mix training batches with MixUp (with cutmix "
                          "also on: one of the two per batch, probability 0.5 each)")
    alpha: float = Field(0.2, gt=0.0, description="Beta(alpha, alpha) parameter of the mixing "
                         "weight lambda")


class CutMix(_Strict):
    """CutMix (Yun et al., 2019): paste a box of another image, mix labels by its area."""

    enabled: bool = Field(False, description="mix training batches with CutMix (with mixup "
                          "also on: one of the two per batch, probability 0.5 each)")
    alpha: float = Field(1.0, gt=0.0, description="Beta(alpha, alpha) parameter of lambda, "
                         "the share of the image's area kept (the pasted box: 1 - lambda)")


class Whitening(_Strict):
    """Patch-whitening initialisation of the first conv from training-data patches (airbench).

    The weight is frozen; its bias trains for ``bias_epochs`` epochs, then is frozen too.
    Computed on the driver from ``samples`` prepared training images (no second pass over raw
    files).
    """

    enabled: bool = Field(False, description="initialise the first conv by patch whitening "
                          "(needs data.use_raw=false)")
    eps: float = Field(5e-4, gt=0.0, description="added to the patch-covariance eigenvalues")
    samples: int = Field(5000, ge=16, description="training images the patches come from")
    bias_epochs: float = Field(3.0, ge=0.0, description="epochs the first conv's bias trains")


class BatchNormSettings(_Strict):
    """BatchNorm settings of the whole model (airbench: momentum 0.4 in torch's convention, eps
    1e-12, frozen scales, BN biases at 64x the learning rate). ``None`` keeps the model's."""

    momentum: Optional[float] = Field(None, gt=0.0, le=1.0, description="torch convention")
    eps: Optional[float] = Field(None, gt=0.0, description="added to the batch variance")
    freeze_scale: bool = Field(False, description="BN weights fixed at 1, not trained")
    bias_lr_mult: float = Field(1.0, gt=0.0, description="learning-rate multiplier of BN biases")


class EMA(_Strict):
    """An exponential moving average of the weights (``torch.optim.swa_utils.AveragedModel``),
    evaluated and checkpointed instead of the raw weights (Polyak averaging); with
    ``lookahead`` the average is also copied back into the trained weights after each update
    (airbench's Lookahead: decay 0.95**5 every 5 steps from epoch 3, ``power`` 3)."""

    enabled: bool = Field(False, description="keep an EMA of the weights, evaluated and "
                          "checkpointed instead of the raw weights")
    decay: float = Field(0.99, gt=0.0, lt=1.0, description="per update")
    every_steps: int = Field(5, ge=1, description="optimiser steps between updates")
    warmup: bool = Field(True, description="decay ramps up as (1+n)/(10+n) early on")
    power: float = Field(0.0, ge=0.0, description="decay * (step / total steps) ** power "
                         "(replaces warmup when > 0; airbench: 3)")
    start_epoch: float = Field(0.0, ge=0.0, description="updates begin after these epochs")
    lookahead: bool = Field(False, description="copy the average back into the weights")


# torchvision's classic ImageNet evaluation: resize the shorter side to 256, centre-crop 224
# (references/classification/presets.py ClassificationPresetEval; 224 / 256 = 0.875). Its newer
# recipes evaluate at 232 -> 224 (--val-resize-size 232), i.e. a ratio of about 0.966.
EVAL_CROP_RATIO = 0.875


class EvalConfig(_Strict):
    """Evaluation: the validation transform and test-time augmentation.

    Transform (torchvision's ``Resize(resize_size)`` + ``CenterCrop(image_size)``, applied to the
    stored square images): ``resize_size`` defaults to ``round(image_size / 0.875)`` when
    ``data.store_size`` is set (torchvision's classic 256 -> 224) and to ``image_size`` (the
    whole stored square, as before) when it is not; ``image_size`` defaults to
    ``data.image_size``. An ``image_size`` above ``data.image_size`` tests at a higher
    resolution than training, which makes up for the zoom of random-resized-crop training
    (FixRes: Touvron et al., "Fixing the train-test resolution discrepancy", NeurIPS 2019).

    TTA (``flip``: mean of the image and its mirror; ``flip_translate``: plus 1-pixel shifts of
    both, airbench's multi-crop; 6 forward passes per image), on the last epoch only
    (``tta_epochs: last``, airbench's choice: the earlier epochs' figures only track progress)
    or on every epoch (``all``)."""

    image_size: Optional[int] = Field(
        None, ge=8, le=4096, description="side of the validation centre crop (pixels); None = "
        "data.image_size; larger tests above the training resolution (FixRes)")
    resize_size: Optional[int] = Field(
        None, ge=8, le=4096, description="validation resizes the stored image to this side "
        "(pixels) before the centre crop; None = round(eval.image_size / 0.875) with "
        "data.store_size set (torchvision: 256 -> 224), else eval.image_size")

    tta: Literal["none", "flip", "flip_translate"] = Field(
        "none", description="test-time augmentation: none (1 forward pass per image), flip "
        "(2), flip_translate (6)")
    tta_epochs: Literal["last", "all"] = Field(
        "last", description="evaluations that use tta: the last epoch's only, or every epoch's")

    def tta_at(self, epoch: int, epochs: int) -> str:
        """The TTA mode of the evaluation after 0-based ``epoch`` of ``epochs``."""
        return self.tta if self.tta_epochs == "all" or epoch + 1 == epochs else "none"
