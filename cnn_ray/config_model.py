"""The ``model`` section of :class:`cnn_ray.config.TrainConfig`: a registered model name, its
knobs, the stem for small inputs and the pretrained weights (:mod:`cnn_ray.models`,
:mod:`cnn_ray.models.weights`). Re-exported by :mod:`cnn_ray.config`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cnn_ray.config_recipe import BatchNormSettings, Whitening


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """A registered model name plus its knobs (``None`` knobs are left at the model default)."""

    name: str = Field("resnet9", description="registered model family "
                      "(cnn_ray.models.list_models(); see Model families)")
    width_mult: Optional[float] = Field(None, gt=0.0, le=8.0, description="multiplier of the "
                                        "family's channel widths; None = family default")
    depth: Optional[int] = Field(None, ge=1, le=64, description="blocks per stage (family-specific)")
    kernel_size: Optional[int] = Field(None, ge=1, le=11, description="conv kernel side "
                                       "(pixels, family-specific); None = family default")
    separable: Optional[bool] = Field(None, description="depthwise-separable convs "
                                      "(family-specific); None = family default")
    dropout: Optional[float] = Field(None, ge=0.0, lt=1.0, description="dropout probability "
                                     "before the classifier (family-specific); None = family "
                                     "default")
    widths: Optional[tuple[int, int, int]] = Field(
        None, description="airbench: the three group widths (overrides width_mult)")
    small_input: Union[bool, Literal["auto"]] = Field(
        "auto", description="the small-image stem of the torchvision families that have one "
        "(ResNets: 3x3 stride-1 first conv, no max-pool; MobileNet, EfficientNet, RegNet: "
        "stride-1 first conv; ShuffleNet: both; cnn_ray.models.tv): auto = on when "
        "data.image_size < 96, true, false = the ImageNet stem. auto leaves the other models "
        "alone; true/false on them is an error")
    channels_last: bool = Field(True, description="feed the inputs in channels-last (NHWC) "
                                "memory format")
    whitening: Whitening = Field(default_factory=Whitening, description="patch-whitening "
                                 "initialisation of the first conv")
    batchnorm: BatchNormSettings = Field(default_factory=BatchNormSettings,
                                         description="BatchNorm settings of the whole model")
    blurpool: bool = Field(
        False, description="BlurPool: a fixed 3x3 binomial blur (stride 1) before every strided "
        "conv with >= 16 input channels (not the stem), for shift-invariant downsampling "
        "(Zhang, ICML 2019; FFCV's BlurPoolConv2d, Composer's BlurPool; "
        "cnn_ray.recipe.blurpool). Parameter names and the state dict are unchanged")
    compile: bool = Field(False, description="torch.compile the model")
    pretrained: Optional[str] = Field(
        None, description="fine-tune from pretrained weights: imagenet (or true: the family's "
        "default weights), a torchvision weights name (ResNet50_Weights.IMAGENET1K_V2 or "
        "IMAGENET1K_V2), a timm tag (.in12k_ft_in1k, timm/ models), read from the local caches "
        "(TORCH_HOME, the Hugging Face cache) and downloaded when missing unless offline "
        "(HF_HUB_OFFLINE=1); or a local state dict file (.pt/.pth, torch.load("
        "weights_only=True)) or cnn_ray checkpoint directory (its EMA weights when it kept "
        "them, else the raw ones). The classifier head is re-initialised when its shape "
        "differs (cnn_ray.train.finetune, cnn_ray.models.weights)")
    normalization: Literal["auto", "data"] = Field(
        "auto", description="input mean/std: auto = the pretrained weights' (named weights' "
        "own, a checkpoint's stored ones) when model.pretrained gives them, else the training "
        "data's per-channel statistics; data = always the training data's")
    freeze: Optional[Union[Literal["backbone"], list[str]]] = Field(
        None, description="parameters not updated until model.unfreeze_epoch: 'backbone' "
        "(everything except the classifier head) or a list of module-name prefixes "
        "(e.g. ['0', '1.0']); their optimiser step is skipped, requires_grad is not touched (DDP)")
    unfreeze_epoch: Optional[int] = Field(
        None, ge=2, description="1-based epoch from which the model.freeze parameters train too "
        "(head first, then all); None = frozen all run")

    @field_validator("name")
    @classmethod
    def _timm_name(cls, v: str) -> str:
        if v.startswith("timm/"):  # timm missing or without this model: say so at load time
            from cnn_ray.models.timm_models import check_timm_name

            check_timm_name(v[len("timm/"):])
        return v

    @field_validator("pretrained", mode="before")
    @classmethod
    def _pretrained_flag(cls, v: Any) -> Any:
        # timm's spelling: pretrained: true is the default weights; false is none
        if isinstance(v, bool):
            return "imagenet" if v else None
        return v

    @model_validator(mode="after")
    def _has_small_stem(self) -> "ModelConfig":
        if self.small_input == "auto":
            return self
        from cnn_ray.models import model_knobs  # only when small_input is set

        try:
            has = "small_input" in model_knobs(self.name)
        except ValueError:
            return self  # an unknown name is reported where the model is built
        if not has:
            raise ValueError(f"model.small_input={str(self.small_input).lower()}: model "
                             f"{self.name!r} has no small-input stem (the torchvision ResNets, "
                             "MobileNets, EfficientNets, RegNets and ShuffleNet do); use auto")
        return self

    @field_validator("freeze", mode="before")
    @classmethod
    def _prefixes_as_text(cls, v: Any) -> Any:
        # nn.Sequential children are named "0", "1", ...: an override model.freeze=[0, 1]
        # parses as YAML ints
        if isinstance(v, list):
            return [str(p) if isinstance(p, int) and not isinstance(p, bool) else p for p in v]
        return v

    def knobs(self) -> dict[str, Any]:
        """The architecture knobs that are set, as keyword arguments for ``create_model``
        (``small_input`` only when true or false; build with :meth:`build_knobs`)."""
        keys = ("width_mult", "depth", "kernel_size", "separable", "dropout", "widths")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.small_input != "auto":
            out["small_input"] = self.small_input
        return out

    def build_knobs(self, image_size: int) -> dict[str, Any]:
        """:meth:`knobs` with ``small_input: auto`` resolved for ``image_size``
        (``data.image_size``, pixels: on below 96) when the model has a small-input stem:
        what every place that builds the run's model passes to ``create_model``.

        Raises:
            ValueError: ``small_input`` is auto and ``name`` is not a registered model.
        """
        out = self.knobs()
        if self.small_input == "auto" and not self.name.startswith("timm/"):
            from cnn_ray.models import model_knobs, resolve_small_input

            if "small_input" in model_knobs(self.name):
                out["small_input"] = resolve_small_input("auto", image_size)
        return out
