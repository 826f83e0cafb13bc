"""What crosses the Ray boundary into a training worker, typed (STYLE.md rule 14). No Ray here.

The driver (:mod:`cnn_ray.train.launch`) builds a :class:`WorkerInputs` and hands Ray Train its
plain-dict form (``train_loop_config = inputs.to_dict()``); every worker rebuilds and validates
it with :meth:`WorkerInputs.from_dict` (the config through ``TrainConfig.from_dict``, STYLE.md
rule 2). :class:`TrainingData` is the driver-side view of prepared data, whichever mode
produced it (prepared shards streamed or held in memory, raw files); its implementations live
in :mod:`cnn_ray.train.data_modes` (Ray glue).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import numpy as np

from cnn_ray.config import TrainConfig


@dataclass(frozen=True)
class DataSummary:
    """What a worker needs to know about the data, whichever mode prepared it.

    Attributes:
        class_names: class index -> name (length K).
        mean, std: per-channel normalisation of the training split, ``[0, 1]`` units (length C).
        num_train, num_val: images in each split.
        image_shape: ``(H, W, C)`` of the stored images.
        bad_inputs: records left out while preparing/listing (see ``bad_inputs.jsonl``).
        raw: ``data.use_raw`` (files decoded every epoch; decode failures are merged into the
            run dir's ``bad_inputs.jsonl`` by rank 0 after each epoch).
        bands: the :class:`~cnn_ray.data.bands.BandTransform` (``to_dict``) that mapped
            multi-band tiles to the stored bands, or None; saved in every checkpoint.
    """

    class_names: list[str]
    mean: list[float]
    std: list[float]
    num_train: int
    num_val: int
    image_shape: tuple[int, int, int]
    bad_inputs: int = 0
    raw: bool = False
    bands: Optional[dict] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict (lists, ints, a bool); inverse of :meth:`from_dict`."""
        return {"class_names": list(self.class_names), "mean": list(self.mean),
                "std": list(self.std), "num_train": int(self.num_train),
                "num_val": int(self.num_val), "image_shape": list(self.image_shape),
                "bad_inputs": int(self.bad_inputs), "raw": bool(self.raw),
                **({"bands": self.bands} if self.bands is not None else {})}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "DataSummary":
        """Rebuild from :meth:`to_dict`. Raises ``ValueError`` naming unknown/missing keys."""
        _check_keys(cls, raw, "data")
        return cls(class_names=[str(c) for c in raw["class_names"]],
                   mean=[float(v) for v in raw["mean"]], std=[float(v) for v in raw["std"]],
                   num_train=int(raw["num_train"]), num_val=int(raw["num_val"]),
                   image_shape=tuple(int(v) for v in raw["image_shape"]),
                   bad_inputs=int(raw.get("bad_inputs", 0)), raw=bool(raw.get("raw", False)),
                   bands=raw.get("bands"))


@dataclass(frozen=True)
class FaultInjection:
    """Test hook: SIGKILL worker ``rank`` once, when it is about to train micro-batch ``step``
    (0-based) of epoch ``epoch`` (1-based: the ``epoch`` of the metrics). ``marker`` is a file
    written just before the kill; while it exists the fault does not fire again (so the
    restarted group runs through)."""

    marker: str
    rank: int = 1
    epoch: int = 2
    step: int = 1

    def applies(self, rank: int, epoch: int) -> bool:
        """Whether this fault targets ``rank`` in 1-based ``epoch``."""
        return rank == self.rank and epoch == self.epoch

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FaultInjection":
        """From ``{"marker", "rank", "epoch", "step"}`` (all but ``marker`` optional).
        Raises ``ValueError`` naming unknown/missing keys."""
        _check_keys(cls, raw, "fault_injection")
        return cls(**raw)


class TrainingData(Protocol):
    """Prepared data as the driver hands it to a trainer, whichever mode produced it.

    ``summary`` is what the workers receive; the other methods give the trainer its data:
    Ray Datasets to stream, or (``data.cache: memory``) object refs of in-memory arrays.
    """

    summary: DataSummary

    def run_files(self) -> dict[str, str]:
        """Extra run-dir files, ``{name: text}`` (``bad_inputs.jsonl`` when inputs were bad)."""

    def datasets(self, cfg: TrainConfig, bad_dir: Optional[str] = None) -> dict[str, Any]:
        """``{"train", "val"}`` Ray Datasets (``bad_dir``: where raw decoding failures go)."""

    def object_refs(self, cfg: TrainConfig) -> dict[str, Any]:
        """``{"train", "val"}`` object refs of the arrays for ``data.cache: memory``."""

    def stem_weights(self, cfg: TrainConfig) -> Optional[np.ndarray]:
        """``model.whitening.enabled``: the first conv's patch-whitening filters
        ``(2*C*k*k, C, k, k)`` float32 from a sample of the training images; else None."""


@dataclass
class WorkerInputs:
    """Everything a training worker receives (``train_loop_config``), typed.

    Attributes:
        config: the run's validated config.
        data: the data summary (:class:`DataSummary`).
        run_dir: local path or storage URI for ``metrics.jsonl``/``events.jsonl``; None = none.
        memory: ``data.cache: memory``: ``{"train", "val"}`` object refs of the prepared arrays
            (dicts of uint8 NHWC images, int64 labels and idx); None = stream Ray Datasets.
        fault: test hook (:class:`FaultInjection`), None in real runs.
        precision: ``fp32 | bf16 | fp16`` resolved once for the whole group from
            ``precision.dtype`` (``auto``) on the device the workers get; None = each worker
            resolves it itself.
        stem_weights: ``model.whitening.enabled``: the first conv's patch-whitening filters,
            ``(2*C*k*k, C, k, k)`` float32, computed once on the driver so every rank starts
            from the same ones (:func:`cnn_ray.recipe.apply.compute_stem_weights`); else None.

    Raises:
        ValueError: ``stem_weights`` missing while ``model.whitening.enabled`` (or given while
            it is off), or not a 4-D array.
    """

    config: TrainConfig
    data: DataSummary
    run_dir: Optional[str] = None
    memory: Optional[dict[str, Any]] = None
    fault: Optional[FaultInjection] = None
    precision: Optional[str] = None
    stem_weights: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        whiten = self.config.model.whitening.enabled
        if whiten != (self.stem_weights is not None):
            raise ValueError(f"model.whitening.enabled={str(whiten).lower()} but stem_weights "
                             f"{'missing' if whiten else 'given'}: the driver computes them "
                             "exactly when whitening is on")
        if self.stem_weights is not None:
            self.stem_weights = np.asarray(self.stem_weights, dtype=np.float32)
            if self.stem_weights.ndim != 4:
                raise ValueError(f"stem_weights must be (out, C, k, k), got shape "
                                 f"{self.stem_weights.shape}")

    def to_dict(self) -> dict[str, Any]:
        """The plain dict Ray Train passes to every worker (object refs and the numpy
        ``stem_weights`` kept as they are)."""
        return {"config": self.config.to_dict(), "data": self.data.to_dict(),
                "run_dir": self.run_dir, "memory": self.memory, "precision": self.precision,
                "fault_injection": dataclasses.asdict(self.fault) if self.fault else None,
                "stem_weights": self.stem_weights}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "WorkerInputs":
        """Rebuild and validate :meth:`to_dict`'s output inside the worker.

        Raises:
            ConfigError: a bad ``config`` (named by dotted key).
            ValueError: unknown or missing keys.
        """
        _check_keys(cls, raw, "train_loop_config",
                    names={"config", "data", "run_dir", "memory", "fault_injection", "precision",
                           "stem_weights"},
                    required={"config", "data"})
        fault = raw.get("fault_injection")
        return cls(
            config=TrainConfig.from_dict(raw["config"], source="train_loop_config",
                                         check_paths=False),
            data=DataSummary.from_dict(raw["data"]), run_dir=raw.get("run_dir"),
            memory=raw.get("memory"), fault=FaultInjection.from_dict(fault) if fault else None,
            precision=raw.get("precision"), stem_weights=raw.get("stem_weights"))


def _check_keys(cls, raw: dict[str, Any], what: str, *, names: Optional[set] = None,
                required: Optional[set] = None) -> None:
    """Raise ``ValueError`` if ``raw`` has keys outside ``names`` (default: the dataclass's
    fields) or lacks one of ``required`` (default: the fields without a default)."""
    fields = dataclasses.fields(cls)
    names = names or {f.name for f in fields}
    if required is None:
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
    unknown = sorted(set(raw) - names)
    missing = sorted(required - set(raw))
    if unknown or missing:
        raise ValueError(f"{what}: unknown keys {unknown}, missing keys {missing} "
                         f"(expected {sorted(names)})")
