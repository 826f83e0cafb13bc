"""The one typed configuration of a cnn_ray run.

A run is described by :class:`TrainConfig`: data, augmentation, model, optimisation,
precision, scaling and run settings. It crosses the Ray boundary as a plain ``dict``
(``TrainConfig.model_dump(mode="json")``) and is rebuilt and validated inside each worker with
:meth:`TrainConfig.from_dict`. Nothing here parses argv or reads YAML: :mod:`cnn_ray.config_io`
reads recipe files and ``a.b=value`` overrides, :mod:`cnn_ray.cli` parses argv.

Validation errors are :class:`ConfigError` (a ``ValueError``) whose message names every bad key
by its dotted path (``optim.lr``) and says what was expected.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cnn_ray.config_augment import (Affine, AugmentConfig, AutoAugment,  # noqa: F401
                                    ColorJitter, Cutout, HFlip, RandomCrop, RandomErasing,
                                    RandomResizedCrop, Rotation)
from cnn_ray.config_data import DataConfig, PCAConfig, Progressive  # noqa: F401
from cnn_ray.config_model import ModelConfig  # noqa: F401
from cnn_ray.config_recipe import (EMA, EVAL_CROP_RATIO, BatchNormSettings, CutMix,  # noqa: F401
                                   EvalConfig, MixUp, Whitening)


class ConfigError(ValueError):
    """A configuration is invalid. The message names each offending key (dotted path)."""


class _Strict(BaseModel):
    # extra="forbid": a typo such as ``optim.lrr`` is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)




# ------------------------------------------------------------------------------ optimisation
class OptimConfig(_Strict):
    """Optimiser, schedule and regularisation.

    ``lr`` is the peak learning rate for ``batch_size`` images per step summed over all workers
    (the global batch); it is not rescaled automatically.
    """

    optimizer: Literal["sgd", "adamw", "adam", "muon"] = Field(
        "sgd", description="torch SGD, AdamW or Adam; muon: Muon on the conv filters "
        "(muon_lr, muon_momentum), SGD on the other parameters")
    lr: float = Field(0.1, gt=0.0, le=100.0, description="peak learning rate for the global "
                      "batch (per 1024 examples with decoupled)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (sgd; muon: the "
                            "non-filter parameters)")
    nesterov: bool = Field(True, description="Nesterov momentum (sgd, muon; when momentum > 0)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam, adamw: (beta1, beta2)")
    weight_decay: float = Field(5e-4, ge=0.0, description="weight decay of the weights "
                                "(per 1024 examples with decoupled; none on muon's filters)")
    decay_norm_and_bias: bool = Field(
        False, description="also apply weight_decay to 1-D parameters (biases, norm affine "
        "parameters; BN biases at weight_decay / model.batchnorm.bias_lr_mult, so their decay "
        "per step is the weights'), as airbench decays every parameter; false: weights only")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross-entropy label "
                                   "smoothing: targets (1 - s) * one-hot + s / classes")
    backbone_lr_mult: float = Field(
        1.0, gt=0.0, le=1.0, description="learning rate of the non-head parameters relative to "
        "the classifier head's (discriminative fine-tuning; after model.unfreeze_epoch)")
    schedule: Literal["onecycle", "cosine", "step", "plateau", "constant", "linear_decay",
                      "wsd", "rung_anneal"] = Field(
        "onecycle", description="learning-rate schedule (cnn_ray.train.optim."
        "build_lr_scheduler): onecycle, linear_decay, wsd, rung_anneal warm up over pct_start; "
        "cosine, step, constant over warmup_epochs; plateau: gamma on a val-loss plateau")
    initial_lr_frac: float = Field(0.2, ge=0.0, le=1.0, description="linear_decay: lr at step 0")
    final_lr_frac: float = Field(0.07, ge=0.0, le=1.0, description="linear_decay, wsd: lr at "
                                 "the end")
    decay_frac: float = Field(0.2, gt=0.0, le=1.0, description="wsd: share of the steps in the "
                              "final linear decay (warm-up: pct_start)")
    anneal_epochs: Optional[list[int]] = Field(
        None, description="rung_anneal: epochs (1-based, increasing, < optim.epochs) at whose "
        "end a cycle is annealed and the next restarts; a sweep derives them from its ASHA "
        "rungs when left out")
    decoupled: bool = Field(False, description="lr and weight_decay per 1024 examples, "
                            "momentum-corrected (airbench); sgd/muon only")
    muon_lr: float = Field(0.24, gt=0.0, description="optimizer muon: lr of the conv filters")
    muon_momentum: float = Field(0.6, ge=0.0, lt=1.0, description="optimizer muon: momentum "
                                 "of the conv filters")
    ema: EMA = Field(default_factory=EMA, description="exponential moving average of the "
                     "weights")
    warmup_epochs: float = Field(0.0, ge=0.0, description="cosine, step, constant: linear "
                                 "warm-up from 0.001 * lr over these epochs")
    pct_start: float = Field(0.25, gt=0.0, lt=1.0, description="OneCycle warm-up share")
    step_size: int = Field(30, ge=1, description="epochs between decays (schedule=step)")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="decay factor (step, plateau)")
    plateau_patience: int = Field(2, ge=0, description="plateau: epochs without a lower "
                                  "val loss before the lr is multiplied by gamma")
    batch_size: int = Field(512, ge=1, description="global images per optimiser step")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimiser step")
    grad_clip_norm: Optional[float] = Field(None, gt=0.0, description="clip the gradients' "
                                            "global L2 norm to this before each step; None = "
                                            "no clipping")
    epochs: int = Field(10, ge=1, description="training epochs (with budget_s: derived from "
                        "the budget; this value only spans the provisional schedule of the "
                        "calibration steps)")
    budget_s: Optional[float] = Field(
        None, gt=0.0, description="train to a wall-clock budget (seconds from the first "
        "training step to the end of the last evaluation) instead of optim.epochs: a short "
        "calibration on the workers sets the epoch count and so the whole schedule, re-checked "
        "after every epoch (the schedule's tail shortened if the machine slowed); the last "
        "epoch may stop early; <run dir>/budget.json reports it. Not with schedule rung_anneal")
    budget_calibration_steps: int = Field(
        8, ge=1, description="with budget_s: timed training steps (after 2 warm-up steps) "
        "that estimate the first plan's seconds per epoch")
    early_stopping_patience: Optional[int] = Field(None, ge=1, description="epochs without val gain")
    max_bad_steps: int = Field(3, ge=0, description="non-finite losses tolerated before failing")
    eval_batch_size: int = Field(1024, ge=1, description="images per evaluation batch on "
                                 "each worker (also cnn-ray predict's default)")


class PrecisionConfig(_Strict):
    """``auto``, ``fp32``, ``bf16`` (autocast; CPU or CUDA) or ``fp16`` (autocast + GradScaler,
    CUDA only).

    ``auto`` picks, on each worker's device: CUDA -> bf16 where supported, else fp16; CPU -> bf16
    where oneDNN has native bf16 kernels (AVX-512-BF16 / AMX), else fp32 (on CPUs without them
    bf16 convolutions fall back to slow reference kernels, ~20x slower than fp32).
    """

    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="training precision: fp32, bf16 autocast, fp16 autocast + "
        "GradScaler (CUDA only), or auto (chosen per worker device, see above)")


class ScalingConfig(_Strict):
    """How many Train workers, with what resources (mirrors ``ray.train.ScalingConfig``)."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="logical CPUs each worker reserves "
                                   "(also its torch threads when torch_threads is None)")
    torch_threads: Optional[int] = Field(None, ge=1, description="intra-op threads per worker")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy of the worker bundles")
    autoscale_timeout_s: float = Field(
        600.0, ge=0.0, description="on a cluster that can grow (an autoscaler is configured): "
        "how long the up-front check waits for the nodes it asked for before stopping")


class RunConfig(_Strict):
    """Naming, storage, checkpoints and fault tolerance."""

    name: str = Field("cnn_ray_run", description="the run's directory under storage_path "
                      "(non-empty, no '/')")
    storage_path: str = Field("~/cnn_ray_runs", description="where runs keep checkpoints, "
                              "metrics and prepared data: a local path (~ expanded) or a "
                              "storage URI")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (the newest)")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts; -1 = unlimited")
    seed: int = Field(0, ge=0, description="seed of the held-out split, shuffles, "
                      "augmentation draws and model init (rank r: seed + r)")
    smoke: bool = Field(False, description="tiny run on a few batches (same code path)")
    max_steps_per_epoch: Optional[int] = Field(
        None, ge=1, description="at most this many training steps and validation batches per "
        "epoch (the schedule fits them); null = the whole epoch. For throughput benchmarks "
        "(jobs/benchmark.py --epoch-steps) and short checks; smoke runs take 2")
    log_every: int = Field(50, ge=1, description="steps between rank-0 progress lines")
    progress_every_s: float = Field(
        30.0, ge=0.0, description="seconds between rank-0 progress lines with the time left "
        "(steps of the epoch, ETA of the epoch and of the run's training); 0 = none")

    def steps_cap(self) -> Optional[int]:
        """Training steps (and validation batches) per epoch at most: 2 in smoke runs, else
        ``max_steps_per_epoch`` (the smaller of the two when both are set); None = all."""
        caps = [c for c in (2 if self.smoke else None, self.max_steps_per_epoch) if c is not None]
        return min(caps) if caps else None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v in (".", ".."):
            raise ValueError(f"expected a non-empty name without '/', got {v!r}")
        return v


class TrainConfig(_Strict):
    """The whole run. Build with :meth:`from_dict`; never mutate after validation."""

    data: DataConfig = Field(..., description="the images and how they are read and "
                             "streamed")
    augment: AugmentConfig = Field(default_factory=AugmentConfig,
                                   description="training-time augmentation")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimiser, schedule "
                               "and regularisation")
    precision: PrecisionConfig = Field(default_factory=PrecisionConfig,
                                       description="numeric precision of training")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="Train workers "
                                   "and their resources")
    run: RunConfig = Field(default_factory=RunConfig, description="naming, storage, "
                           "checkpoints and fault tolerance")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation: "
                             "the validation transform and test-time augmentation")

    @model_validator(mode="after")
    def _cross_checks(self) -> "TrainConfig":
        per_worker = self.optim.batch_size // (self.scaling.num_workers * self.optim.grad_accum_steps)
        if per_worker < 1 or self.optim.batch_size % (
            self.scaling.num_workers * self.optim.grad_accum_steps
        ):
            raise ValueError(
                "optim.batch_size must be a positive multiple of scaling.num_workers * "
                f"optim.grad_accum_steps ({self.scaling.num_workers} * "
                f"{self.optim.grad_accum_steps}), got {self.optim.batch_size}"
            )
        if self.precision.dtype == "fp16" and not self.scaling.use_gpu:
            raise ValueError(
                "precision.dtype=fp16 needs scaling.use_gpu=true (fp16 autocast + GradScaler is a "
                "CUDA path); on CPU use bf16"
            )
        if self.data.prepared_dir and "://" in self.data.prepared_dir:
            raise ValueError(
                f"data.prepared_dir={self.data.prepared_dir!r}: the prepare step writes shards "
                "with local file I/O; expected a local path or a shared mount every node reads"
            )
        if "://" in self.run.storage_path and not self.data.prepared_dir and not self.data.use_raw:
            raise ValueError(
                f"run.storage_path={self.run.storage_path!r} is a storage URI and data.prepared_dir "
                "is unset (its default lives under run.storage_path): set data.prepared_dir to a "
                "local path or a shared mount every node reads (checkpoints, metrics and the run "
                "files still go to the URI), or data.use_raw=true"
            )
        ends = self.optim.anneal_epochs
        if ends is not None:
            if self.optim.schedule != "rung_anneal":
                raise ValueError(f"optim.anneal_epochs is set ({ends}) but optim.schedule is "
                                 f"{self.optim.schedule!r}: it is read by rung_anneal only")
            if any(b <= a for a, b in zip(ends, ends[1:])) or any(
                    not 1 <= e < self.optim.epochs for e in ends):
                raise ValueError(f"optim.anneal_epochs: expected strictly increasing epochs in "
                                 f"[1, optim.epochs={self.optim.epochs}), got {ends}")
        if self.optim.budget_s is not None and self.optim.schedule == "rung_anneal":
            raise ValueError("optim.budget_s derives the epoch count, but optim.schedule="
                             "rung_anneal anneals at fixed epochs (optim.anneal_epochs, a "
                             "sweep's rungs): use onecycle, linear_decay, wsd, cosine, step, "
                             "constant or plateau with a budget")
        if self.optim.decoupled and self.optim.optimizer not in ("sgd", "muon"):
            raise ValueError(f"optim.decoupled=true is defined for optim.optimizer sgd or muon "
                             f"(momentum-corrected SGD), got {self.optim.optimizer!r}")
        if self.model.whitening.enabled and self.data.use_raw:
            raise ValueError("model.whitening.enabled=true computes the first layer from the "
                             "prepared shards; it needs data.use_raw=false")
        if self.model.unfreeze_epoch is not None and self.model.freeze is None:
            raise ValueError("model.unfreeze_epoch is set but model.freeze is not: set "
                             "model.freeze (backbone or a list of module prefixes)")
        if isinstance(self.model.freeze, list) and not (self.model.freeze
                                                        and all(self.model.freeze)):
            raise ValueError(f"model.freeze: expected 'backbone' or a non-empty list of "
                             f"non-empty module prefixes, got {self.model.freeze!r}")
        if self.model.pretrained and "://" in self.model.pretrained:
            raise ValueError(f"model.pretrained={self.model.pretrained!r}: expected imagenet, a "
                             "torchvision weights name, a timm tag (.tag), a local file or a "
                             "checkpoint directory, not a URL (named weights are fetched into "
                             "the local caches by torchvision/timm)")
        bands = self.data.channels not in (1, 3, 4) or self.data.pca is not None
        if bands and self.data.use_raw:
            raise ValueError(f"data.channels={self.data.channels}"
                             f"{' with data.pca' if self.data.pca else ''}: multi-band tiles are "
                             "scaled (and reduced) by a transform fitted at prepare time; it "
                             "needs data.use_raw=false")
        stored = (self.data.pca.components if self.data.pca and self.data.pca.components
                  else None if self.data.pca else self.data.channels)
        if bands and self.augment.color_jitter.enabled and stored != 3:
            raise ValueError(
                f"augment.color_jitter.enabled=true is defined for 3-band RGB images; the stored "
                f"images have {stored or 'data.pca.explained_variance-many'} bands "
                f"(data.channels={self.data.channels}"
                f"{', data.pca' if self.data.pca else ''}): set augment.color_jitter.enabled=false")
        if self.augment.auto_augment.enabled and stored not in (1, 3):
            raise ValueError(
                f"augment.auto_augment.policy={self.augment.auto_augment.policy} is defined for "
                f"1- or 3-band images (torchvision's ops); the stored images have "
                f"{stored or 'data.pca.explained_variance-many'} bands "
                f"(data.channels={self.data.channels}): set augment.auto_augment.policy=none")
        resize, crop = self.eval_sizes()
        if crop > resize:
            raise ValueError(
                f"eval.image_size={crop} is larger than eval.resize_size={resize}: the "
                "validation centre crop is taken from the resized image; expected "
                "eval.resize_size >= eval.image_size")
        if self.data.cache == "memory" and self.data.use_raw:
            raise ValueError(
                "data.cache=memory keeps the prepared shards in memory; it needs "
                "data.use_raw=false (raw files are decoded every epoch)"
            )
        return self

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config", check_paths: bool = True) -> "TrainConfig":
        """Validate a plain dict (from YAML or from ``model_dump``).

        Raises:
            ConfigError: naming each bad key as a dotted path, with what was expected.
        """
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
        try:
            cfg = cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None
        if check_paths:
            cfg.check_paths(source)
        return cfg

    def check_paths(self, source: str = "config") -> None:
        """Raise :class:`ConfigError` if a data path (globs must match) or
        ``model.pretrained`` does not exist. Named weights (``imagenet``, a torchvision weights
        name, a timm tag) must resolve for ``model.name`` and be in the local cache: a file not
        there is downloaded now when online (:func:`cnn_ray.models.weights.fetch_weights`), so
        the error comes before any data is prepared or worker started."""
        import glob

        for key in ("train", "val"):
            path = getattr(self.data, key)
            if path is None or "://" in path:
                continue  # remote URIs are checked by the reader
            p = os.path.expanduser(path)
            if not (os.path.exists(p) or glob.glob(p)):
                raise ConfigError(f"{source}: data.{key}: path does not exist: {path!r}")
        pretrained = self.model.pretrained
        if not pretrained:
            return
        from cnn_ray.models.weights import fetch_weights, is_weights_name, resolve_weights

        if is_weights_name(pretrained):
            try:
                fetch_weights(resolve_weights(self.model.name, pretrained,
                                              self.model.build_knobs(self.data.image_size)))
            except ValueError as exc:  # WeightsError, or an unknown model.name
                raise ConfigError(f"{source}: model.pretrained: {exc}") from None
        elif not os.path.exists(os.path.expanduser(pretrained)):
            raise ConfigError(f"{source}: model.pretrained: file or checkpoint directory does "
                              f"not exist: {pretrained!r}")

    def eval_sizes(self) -> tuple[int, int]:
        """``(resize_size, image_size)`` of the validation transform in pixels, defaults
        resolved (:class:`~cnn_ray.config_recipe.EvalConfig`): the stored square is resized to
        ``resize_size`` and its centre ``image_size`` square kept."""
        crop = self.eval.image_size or self.data.image_size
        if self.eval.resize_size is not None:
            return self.eval.resize_size, crop
        if self.data.store_size is None:
            return crop, crop
        return round(crop / EVAL_CROP_RATIO), crop

    def per_worker_batch_size(self) -> int:
        """Images per micro-batch on one worker: batch_size / (num_workers * grad_accum_steps)."""
        return self.optim.batch_size // (self.scaling.num_workers * self.optim.grad_accum_steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict; ``TrainConfig.from_dict(cfg.to_dict()) == cfg``."""
        return self.model_dump(mode="json")


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Turn pydantic errors into one line per key: ``source: a.b: expected ..., got ...``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and kind not in ("model_type",) and loc and not isinstance(
                    err["input"], dict):  # a section's own check names its keys itself
                msg += f" (got {err['input']!r})"
        lines.append(f"{source}: {loc or '<top>'}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
