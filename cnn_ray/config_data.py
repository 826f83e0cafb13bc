"""The ``data`` section of :class:`cnn_ray.config.TrainConfig`: where the images come from, how
they are prepared (decoded once into shards) and streamed or cached. Re-exported by
:mod:`cnn_ray.config`.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PCAConfig(_Strict):
    """PCA band reduction of multi-band tiles, fitted on the training split at prepare time
    (:mod:`cnn_ray.data.bands`; Rodarmel & Shan 2002). Give ``components`` or
    ``explained_variance``."""

    components: Optional[int] = Field(None, ge=1, le=64, description="principal components kept")
    explained_variance: Optional[float] = Field(
        None, gt=0.0, le=1.0, description="or keep the fewest components explaining this share "
        "of the scaled training pixels' variance")

    @model_validator(mode="after")
    def _one_of(self) -> "PCAConfig":
        if (self.components is None) == (self.explained_variance is None):
            raise ValueError("data.pca: give exactly one of components (an int) or "
                             "explained_variance (a share in (0, 1])")
        return self


class Progressive(_Strict):
    """Progressive resizing: train at a small crop early and grow it to the full size.

    The training crop side is ``start_size`` up to ``start_frac`` of the run, grows linearly to
    ``end_size`` at ``end_frac`` and stays there, each epoch's value rounded to a multiple of
    ``step`` (FFCV's ``get_resolution`` in libffcv/ffcv-imagenet: 160 -> 192 px, rounded to 32;
    Composer's ``ProgressiveResizing``). The ramp is given in shares of the run, not epochs,
    so that it holds when ``optim.budget_s`` derives the epoch count. Validation keeps
    ``eval.image_size`` (FixRes, Touvron et al. 2019: testing above the train crop pays).
    Early epochs cost ~(size / end_size)^2 of a full one."""

    enabled: bool = Field(False, description="grow the training crop over the run "
                          "(needs data.store_size)")
    start_size: int = Field(96, ge=8, le=4096, description="training crop side (pixels) up to "
                            "start_frac of the run")
    end_size: Optional[int] = Field(None, ge=8, le=4096, description="training crop side "
                                    "(pixels) from end_frac on; None = data.image_size")
    start_frac: float = Field(0.0, ge=0.0, le=1.0, description="share of the epochs trained at "
                              "start_size before the ramp")
    end_frac: float = Field(0.75, ge=0.0, le=1.0, description="share of the epochs after which "
                            "the crop is end_size")
    step: int = Field(32, ge=1, le=512, description="crop sides are rounded to a multiple of "
                      "this (32 or 16 as FFCV; 8 keeps the stride-32 backbones' maps whole "
                      "at 8x8 granularity)")

    @model_validator(mode="after")
    def _ramp(self) -> "Progressive":
        if self.end_frac < self.start_frac:
            raise ValueError(f"expected start_frac <= end_frac, got "
                             f"start_frac={self.start_frac}, end_frac={self.end_frac}")
        if self.end_size is not None and self.start_size > self.end_size:
            raise ValueError(f"expected start_size <= end_size, got "
                             f"start_size={self.start_size}, end_size={self.end_size}")
        return self

    def size_at(self, epoch: int, epochs: int, image_size: int) -> int:
        """Training crop side (pixels) of 0-based ``epoch`` of ``epochs``: ``start_size`` before
        ``start_frac * epochs``, ``end_size`` (default ``image_size``) from ``end_frac *
        epochs``, linear between, rounded to a multiple of ``step`` and kept within
        [start_size, end_size]. ``image_size`` when not enabled."""
        end = self.end_size or image_size
        if not self.enabled:
            return image_size
        lo, hi = self.start_frac * epochs, self.end_frac * epochs
        if epoch >= hi:
            size = float(end)
        elif epoch <= lo:
            size = float(self.start_size)
        else:
            size = self.start_size + (end - self.start_size) * (epoch - lo) / (hi - lo)
        size = int(round(size / self.step)) * self.step
        return max(self.start_size, min(end, size))


class DataConfig(_Strict):
    """Where the images come from and how they are streamed.

    ``train`` / ``val`` accept an ImageFolder root (``<root>/<class>/<img>``), a directory or
    glob of Parquet shards, or a CSV/TSV/JSON-lines/Parquet manifest (columns ``path_column``,
    ``label_column``, or ``path_template``). ``format`` ``auto`` detects which.
    """

    train: str = Field(..., description="training data: folder, Parquet shards, or manifest")
    val: Optional[str] = Field(None, description="validation data; None = seeded held-out fraction")
    format: Literal["auto", "folder", "parquet", "manifest"] = Field(
        "auto", description="how train/val are read: folder (ImageFolder tree), parquet "
        "(directory or glob of shards), manifest (CSV/TSV/JSON-lines/Parquet table); auto "
        "detects which")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="held-out share when val is None")
    image_size: int = Field(32, ge=8, le=4096, description="training resolution (pixels, square)")
    store_size: Optional[int] = Field(
        None, ge=8, le=4096, description="side of the prepared images (pixels): the shorter "
        "side is resized to it and the centred square kept; training takes a "
        "random_resized_crop of it to image_size per batch, validation resizes it to "
        "eval.resize_size and centre-crops eval.image_size. At least image_size; None = "
        "image_size (stored as trained)")
    channels: int = Field(3, ge=1, le=64, description="image channels after decoding; for "
                          ".npy/.npz/TIFF tiles the band count of the files")
    pca: Optional[PCAConfig] = Field(
        None, description="reduce multi-band tiles to principal components at prepare time "
        "(fitted on the training split, stored with the data and in checkpoints)")
    band_sample_images: int = Field(
        512, ge=1, description="training tiles (512 pixels each) sampled to fit the per-band "
        "scaling and data.pca")
    prepared_dir: Optional[str] = Field(
        None, description="where prepare writes shards; default <run.storage_path>/prepared/"
        "<training folder name>-<stored side>px-<hash of the data settings>"
    )
    use_raw: bool = Field(False, description="decode raw files every epoch instead of prepared shards")
    shard_size: int = Field(10_000, ge=1, description="images per prepared Parquet shard")
    shuffle: Literal["none", "files", "local", "full"] = Field(
        "local", description="files: shard order; local: + shuffle buffer; full: random_shuffle()"
    )
    shuffle_buffer: int = Field(4096, ge=0, description="rows in the local shuffle buffer")
    drop_last: bool = Field(
        False, description="drop each epoch's last partial training batch (torch DataLoader's "
        "drop_last; airbench trains so): every step then sees a full batch")
    prefetch_batches: int = Field(2, ge=0, description="batches prefetched by iter_torch_batches")
    bad_input: Literal["skip", "fail"] = Field(
        "skip", description="skip: leave out and list in bad_inputs.jsonl; fail: raise naming the file"
    )
    max_bad_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="with bad_input: skip, the most a split's inputs may "
        "be bad (missing, undecodable, unknown label) before the job stops, before training, "
        "with a summary; below it a warning names the count and the list's path")
    path_column: str = Field("path", min_length=1, description="manifest column holding the "
                             "image paths (relative ones are relative to the manifest's folder)")
    label_column: str = Field("label", min_length=1, description="manifest column holding the "
                              "labels (class names or integer indices)")
    path_template: Optional[str] = Field(
        None, description="build each manifest row's path from its columns, e.g. "
        "'images/{id}.jpg' ({id}: the row's 'id' column); replaces path_column")
    data_cpus: float = Field(
        0.5, gt=0.0, description="logical CPUs each Ray Data augmentation task reserves"
    )
    cache: Literal["none", "memory"] = Field(
        "none", description="none: stream and augment in Ray Data every epoch; memory: read the "
        "prepared shards once into Ray's object store (shared by all workers and sweep trials) "
        "and augment on each Train worker (cnn_ray.data.memory; small data sets, sweeps)"
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each Ray Data task (prepare "
        "decoding, streaming augmentation) asks for, e.g. {data_node: 0.001}: keeps Data work "
        "on the CPU-only nodes that advertise it in a mixed CPU/GPU cluster")
    progressive: Progressive = Field(
        default_factory=Progressive, description="progressive resizing: the training crop grows "
        "from start_size to end_size over the run (FFCV, Composer)")
    cache_max_mb: float = Field(
        4096.0, gt=0.0, description="cache: memory refuses data sets larger than this (MB): "
        "the training images at their stored size (store_size) plus the validation images at "
        "eval.image_size"
    )

    @model_validator(mode="after")
    def _store_at_least_trained(self) -> "DataConfig":
        if self.store_size is not None and self.store_size < self.image_size:
            raise ValueError(
                f"data.store_size={self.store_size} is smaller than data.image_size="
                f"{self.image_size}: expected data.store_size >= data.image_size (the training "
                "crop is taken from the stored image), or data.store_size: null to store at "
                "data.image_size")
        p = self.progressive
        if p.enabled:
            if self.store_size is None:
                raise ValueError("data.progressive.enabled=true crops each epoch's size from "
                                 "the stored images: expected data.store_size (>= "
                                 "data.image_size), got null")
            if (p.end_size or self.image_size) > self.stored_size:
                raise ValueError(f"data.progressive.end_size={p.end_size} is larger than "
                                 f"data.store_size={self.store_size}: expected <= store_size")
            if p.start_size > (p.end_size or self.image_size):
                raise ValueError(f"data.progressive.start_size={p.start_size} is larger than the "
                                 f"end size {p.end_size or self.image_size} (data.progressive."
                                 "end_size, default data.image_size): expected start <= end")
        return self

    def crop_size_at(self, epoch: int, epochs: int) -> Optional[int]:
        """The side training batches of 0-based ``epoch`` (of ``epochs``) are random-resized
        cropped to: :meth:`Progressive.size_at` when ``progressive`` is on, else
        :attr:`train_crop_size` (None: batches keep the stored side)."""
        if self.progressive.enabled:
            return self.progressive.size_at(epoch, epochs, self.image_size)
        return self.train_crop_size

    @property
    def stored_size(self) -> int:
        """Side in pixels of the prepared (stored) square images: ``store_size``, else
        ``image_size``."""
        return self.store_size or self.image_size

    @property
    def train_crop_size(self) -> Optional[int]:
        """The side training batches are random-resized cropped to from the stored images:
        ``image_size`` when ``store_size`` is set; None without it (batches keep the stored
        side, as before ``store_size`` existed)."""
        return self.image_size if self.store_size is not None else None

    @property
    def pipeline_cpus(self) -> float:
        """Logical CPUs Ray Data needs while training: ``data_cpus`` when streaming, 0 with
        ``cache: memory`` (no Ray Data runs after the arrays are put)."""
        return 0.0 if self.cache == "memory" else self.data_cpus
