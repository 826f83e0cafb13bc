"""The ``augment`` section of :class:`cnn_ray.config.TrainConfig`: training-time augmentation.

Each technique is a model with ``enabled`` and its strength; the batched functions that apply
them are :mod:`cnn_ray.data.augment` (numpy, host) and :mod:`cnn_ray.data.device_augment`
(torch, on the training device). Re-exported by :mod:`cnn_ray.config`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cnn_ray.config_recipe import CutMix, MixUp


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RandomCrop(_Strict):
    """Pad by ``padding`` pixels (reflect) and crop back to size at a random offset."""

    enabled: bool = Field(True, description="apply random_crop")
    padding: int = Field(4, ge=0, description="reflect padding and largest shift (pixels); "
                         "0: no crop")


class RandomResizedCrop(_Strict):
    """Crop a random area/aspect ratio and resize back (Inception-style zoom)."""

    enabled: bool = Field(False, description="apply random_resized_crop")
    scale: tuple[float, float] = Field(
        (0.35, 1.0), description="[low, high] of the crop's area as a share of the image "
        "(uniform); 0 < low <= high")
    ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="[low, high] of the crop's aspect ratio width/height "
        "(log-uniform); 0 < low <= high")

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= v[1]):
            raise ValueError(f"expected 0 < low <= high, got {list(v)}")
        return v


class HFlip(_Strict):
    """Horizontal flip. ``random``: each image with probability ``p`` every epoch;
    ``alternating`` (airbench): random on the first epoch, then each image flipped on exactly
    alternate epochs (``p`` unused), so every image is seen both ways every two epochs."""

    enabled: bool = Field(True, description="apply hflip")
    p: float = Field(0.5, ge=0.0, le=1.0, description="mode random: probability that an "
                     "image is flipped, drawn per image and epoch")
    mode: Literal["random", "alternating"] = Field(
        "random", description="random: a fresh coin per image and epoch; alternating: each "
        "image flipped on alternate epochs (airbench)")


class Rotation(_Strict):
    """Rotate about the centre by an angle drawn uniformly from ``[-degrees, degrees]``
    (resampled bilinearly, composed with random_resized_crop and affine)."""

    enabled: bool = Field(False, description="apply rotation")
    degrees: float = Field(15.0, ge=0.0, le=180.0, description="largest rotation angle "
                           "(degrees)")


class Affine(_Strict):
    """Random shift (fraction of the image side) and shear (degrees)."""

    enabled: bool = Field(False, description="apply affine")
    translate: float = Field(0.1, ge=0.0, le=0.5, description="largest shift along each "
                             "axis, as a share of that side (uniform in [-t, t])")
    shear: float = Field(10.0, ge=0.0, le=45.0, description="largest shear angle along x "
                         "(degrees, uniform in [-shear, shear])")


class ColorJitter(_Strict):
    """Random brightness/contrast/saturation factors in ``[1 - s, 1 + s]``."""

    enabled: bool = Field(False, description="apply color_jitter (3-band RGB images)")
    brightness: float = Field(0.2, ge=0.0, le=1.0, description="brightness factor drawn from "
                              "[1 - s, 1 + s]; 0: off")
    contrast: float = Field(0.2, ge=0.0, le=1.0, description="contrast factor drawn from "
                            "[1 - s, 1 + s] (blend with the mean grey level); 0: off")
    saturation: float = Field(0.2, ge=0.0, le=1.0, description="saturation factor drawn from "
                              "[1 - s, 1 + s] (blend with the grey image; 3 channels only); "
                              "0: off")


class Cutout(_Strict):
    """Zero a random ``size`` x ``size`` square (DeVries & Taylor, 2017)."""

    enabled: bool = Field(False, description="apply cutout")
    size: int = Field(8, ge=1, description="side of the zeroed square (pixels); its centre is "
                      "uniform over the image, clipped at the borders")
    p: float = Field(1.0, ge=0.0, le=1.0, description="probability per image and epoch")


class AutoAugment(_Strict):
    """A learned or random policy of photometric/geometric ops per image (torchvision
    ``transforms.v2``): ``trivial_augment_wide`` (Mueller & Hutter 2021), ``rand_augment``
    (Cubuk et al. 2020) or ``auto_augment`` (Cubuk et al. 2019); ``none``: off."""

    policy: Literal["none", "trivial_augment_wide", "rand_augment", "auto_augment"] = Field(
        "none", description="none (off), trivial_augment_wide (one random op at a random "
        "magnitude per image), rand_augment (num_ops random ops at magnitude) or auto_augment "
        "(a sub-policy of auto_augment_policy); 1- or 3-band images")
    num_ops: int = Field(2, ge=1, le=16, description="rand_augment: ops applied per image")
    magnitude: int = Field(9, ge=0, description="rand_augment: the ops' strength, a bin of "
                           "num_magnitude_bins (0: weakest; below num_magnitude_bins)")
    num_magnitude_bins: int = Field(31, ge=2, le=1024, description="rand_augment and "
                                    "trivial_augment_wide: magnitude bins of each op's range")
    auto_augment_policy: Literal["imagenet", "cifar10", "svhn"] = Field(
        "imagenet", description="auto_augment: the learned policy (data set it was searched on)")

    @property
    def enabled(self) -> bool:
        """Whether a policy is on (``policy != none``)."""
        return self.policy != "none"

    @model_validator(mode="after")
    def _magnitude_in_bins(self) -> "AutoAugment":
        if self.magnitude >= self.num_magnitude_bins:
            raise ValueError(f"magnitude={self.magnitude} must be below num_magnitude_bins="
                             f"{self.num_magnitude_bins}")
        return self


class RandomErasing(_Strict):
    """Erase a random rectangle per image (Zhong et al. 2020), torchvision ``v2.RandomErasing``
    on the uint8 image before normalisation."""

    enabled: bool = Field(False, description="apply random_erasing (last, after cutout)")
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability per image and epoch "
                     "(torchvision's default and the paper's; its ImageNet recipes use 0.1, "
                     "timm 0.25)")
    scale: tuple[float, float] = Field(
        (0.02, 0.33), description="[low, high] of the erased area as a share of the image; "
        "0 < low <= high <= 1")
    ratio: tuple[float, float] = Field(
        (0.3, 3.3), description="[low, high] of the rectangle's aspect ratio (log-uniform); "
        "0 < low <= high")
    value: int = Field(0, ge=0, le=255, description="uint8 fill of the erased pixels (before "
                       "normalisation: 0 is black, not torchvision's post-normalise mean)")

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0 < v[0] <= v[1]):
            raise ValueError(f"expected 0 < low <= high, got {list(v)}")
        return v

    @field_validator("scale")
    @classmethod
    def _share(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[1] > 1:
            raise ValueError(f"scale is a share of the image: expected high <= 1, got {list(v)}")
        return v


class AugmentConfig(_Strict):
    """Training-time augmentation; each technique has ``enabled`` and its strength."""

    random_crop: RandomCrop = Field(default_factory=RandomCrop, description="pad and crop "
                                    "back at a random offset (a shift)")
    random_resized_crop: RandomResizedCrop = Field(
        default_factory=RandomResizedCrop, description="random-area crop resized back")
    hflip: HFlip = Field(default_factory=HFlip, description="horizontal flip")
    rotation: Rotation = Field(default_factory=Rotation, description="random rotation")
    affine: Affine = Field(default_factory=Affine, description="random shift and shear")
    color_jitter: ColorJitter = Field(default_factory=ColorJitter, description="random "
                                      "brightness, contrast and saturation")
    cutout: Cutout = Field(default_factory=Cutout, description="zero a random square")
    auto_augment: AutoAugment = Field(default_factory=AutoAugment, description="a per-image "
                                      "policy of ops: TrivialAugmentWide, RandAugment or "
                                      "AutoAugment (torchvision transforms.v2)")
    random_erasing: RandomErasing = Field(default_factory=RandomErasing, description="erase a "
                                          "random rectangle (torchvision transforms.v2)")
    mixup: MixUp = Field(default_factory=MixUp, description="MixUp of batch pairs (in the "
                         "training step)")
    cutmix: CutMix = Field(default_factory=CutMix, description="CutMix of batch pairs (in "
                           "the training step)")
