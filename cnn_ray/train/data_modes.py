"""Prepared data, whichever mode produced it, as the trainer needs it (Ray glue, driver side).

Two implementations of :class:`cnn_ray.train.inputs.TrainingData`:

* :class:`ShardData`: prepared Parquet shards (:class:`~cnn_ray.data.shards.PreparedData`),
  streamed through Ray Data (``data.cache: none``) or read once into the object store
  (``data.cache: memory``);
* :class:`RawFiles`: raw files decoded every epoch (``data.use_raw``,
  :class:`~cnn_ray.data.pipeline.RawData`).

:func:`training_data` picks one from the config, so the callers never test types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

import ray

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.data.pipeline import build_eval_dataset, build_raw_dataset, build_train_dataset
from cnn_ray.data.preprocess import EvalTransform, resize_center_crop
from cnn_ray.train.inputs import DataSummary, TrainingData

if TYPE_CHECKING:
    from cnn_ray.data.pipeline import RawData
    from cnn_ray.data.shards import PreparedData

MATERIALIZE_VAL_BYTES = 256 * 2**20  # validation sets up to this size are decoded once


def training_data(cfg: TrainConfig, prepared: Union["PreparedData", "RawData"]) -> TrainingData:
    """``prepared`` (what :func:`cnn_ray.data.prepare.prepare_data` returned for ``cfg``) as
    :class:`TrainingData`: :class:`RawFiles` with ``data.use_raw``, else :class:`ShardData`."""
    return RawFiles(prepared) if cfg.data.use_raw else ShardData(prepared)


def _summary(prepared, *, raw: bool) -> DataSummary:
    return DataSummary(
        class_names=list(prepared.class_names), mean=list(prepared.mean),
        std=list(prepared.std), num_train=int(prepared.num_train), num_val=int(prepared.num_val),
        image_shape=tuple(int(v) for v in prepared.image_shape),
        bad_inputs=int(getattr(prepared, "bad_count", 0) or 0), raw=raw,
        bands=getattr(prepared, "bands", None))


def driver_epochs(cfg: TrainConfig) -> Optional[int]:
    """The run's epoch count as the driver knows it, for the per-epoch training sides of
    ``data.progressive`` in the Ray Data tasks: ``optim.epochs``, or None with
    ``optim.budget_s`` (the workers derive the count; the tasks then crop at the end size
    and the workers resize down, :func:`cnn_ray.data.pipeline.train_sizes`)."""
    return None if cfg.optim.budget_s is not None else cfg.optim.epochs


def _quiet(datasets: dict[str, ray.data.Dataset]) -> dict[str, ray.data.Dataset]:
    for ds in datasets.values():
        ds.context.enable_progress_bars = False  # rank 0 prints one line per epoch instead
    return datasets


class ShardData:
    """Prepared Parquet shards (``prepared``: a ``PreparedData``), streamed or in memory."""

    def __init__(self, prepared: "PreparedData"):
        self.prepared = prepared
        self.summary = _summary(prepared, raw=False)

    def run_files(self) -> dict[str, str]:
        """The prepared dir's ``bad_inputs.jsonl`` (records left out), when there is one."""
        bad = Path(self.prepared.root) / "bad_inputs.jsonl"
        return {"bad_inputs.jsonl": bad.read_text()} if bad.exists() else {}

    def datasets(self, cfg: TrainConfig, bad_dir: Optional[str] = None) -> dict[str, ray.data.Dataset]:
        """``{"train", "val"}`` Ray Datasets over the shards (``bad_dir`` is unused: the shards
        hold only decodable images). A validation set up to ``MATERIALIZE_VAL_BYTES`` is decoded
        once into the object store instead of every epoch (it is deterministic)."""
        p = self.prepared
        transform = EvalTransform.of(cfg)
        train = build_train_dataset(p.train_files, cfg.data, cfg.augment,
                                    image_shape=p.image_shape, seed=cfg.run.seed,
                                    epochs=driver_epochs(cfg))
        val = build_eval_dataset(p.val_files, cfg.data, image_shape=p.image_shape,
                                 transform=transform)
        if p.num_val * transform.image_size**2 * p.image_shape[2] <= MATERIALIZE_VAL_BYTES:
            val = val.materialize()
        return _quiet({"train": train, "val": val})

    def object_refs(self, cfg: TrainConfig) -> dict[str, Any]:
        """``data.cache: memory``: read the shards once and ``ray.put`` them.

        Returns ``{"train": ObjectRef, "val": ObjectRef}`` of
        :func:`~cnn_ray.data.memory.read_prepared_arrays` dicts (uint8 NHWC images, int64 labels
        and idx): training images at their stored size (each worker random-resized crops them
        to ``data.image_size``), validation images after the validation transform
        (:class:`~cnn_ray.data.preprocess.EvalTransform`). The caller owns the objects: they
        live while it holds the refs.

        Raises:
            ConfigError: the images take more than ``data.cache_max_mb``
                (:func:`~cnn_ray.data.memory.check_cache_fits`: the sizes, the limit, the ways
                out), raised before anything is read.
        """
        from cnn_ray.data.memory import check_cache_fits, read_prepared_arrays

        p = self.prepared
        shape = tuple(int(v) for v in p.image_shape)
        check_cache_fits(cfg, p.num_train, p.num_val, shape)
        t = EvalTransform.of(cfg)
        train = read_prepared_arrays(p.train_files, shape)
        val = read_prepared_arrays(p.val_files, shape, image_size=t.image_size,
                                   resize_size=t.resize_size)
        return {"train": ray.put(train), "val": ray.put(val)}

    def stem_weights(self, cfg: TrainConfig) -> Optional[np.ndarray]:
        """``model.whitening.enabled``: patch-whitening filters of the first conv from
        ``model.whitening.samples`` training images drawn with ``run.seed`` from the prepared
        shards (both cache modes read the same shards), normalised with the prepared mean/std
        (:func:`cnn_ray.recipe.apply.compute_stem_weights`); else None.

        Raises:
            ConfigError: the model's first conv cannot be whitened (named, with the numbers).
        """
        if not cfg.model.whitening.enabled:
            return None
        from cnn_ray.recipe.apply import compute_stem_weights

        p = self.prepared
        sample = sample_shard_images(p.train_files, tuple(p.image_shape),
                                     cfg.model.whitening.samples, seed=cfg.run.seed)
        if cfg.data.train_crop_size is not None:  # stored larger: the whole image at the
            sample = resize_center_crop(sample, cfg.data.train_crop_size)  # training size
        try:
            return compute_stem_weights(cfg, sample, num_classes=self.summary.num_classes,
                                        mean=p.mean, std=p.std)
        except ValueError as exc:
            raise ConfigError(f"model.whitening.enabled=true: {exc}") from None


def sample_shard_images(files: list[str], image_shape: tuple[int, int, int], n: int, *,
                        seed: int) -> np.ndarray:
    """``min(n, rows)`` images drawn without replacement (``numpy`` generator seeded with
    ``seed``) from prepared shard ``files``, in shard order: ``(n, H, W, C)`` uint8. Reads
    only the shards that hold a drawn row, one at a time.

    Raises:
        ValueError: no rows in ``files``.
    """
    import pyarrow.parquet as pq

    from cnn_ray.data.shards import read_shard_images

    counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
    total = sum(counts)
    if total == 0:
        raise ValueError("sample_shard_images: the training shards hold no images")
    picked = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    out, start = [], 0
    for path, count in zip(files, counts):
        local = picked[(picked >= start) & (picked < start + count)] - start
        if len(local):
            images, _, _ = read_shard_images(pq.read_table(path), image_shape)
            out.append(images[local])
        start += count
    return np.concatenate(out)


class RawFiles:
    """Raw files decoded every epoch (``raw``: a ``RawData``, ``data.use_raw``)."""

    def __init__(self, raw: "RawData"):
        self.raw = raw
        self.summary = _summary(raw, raw=True)

    def run_files(self) -> dict[str, str]:
        """Problems found while listing (the worker merges decoding failures in later)."""
        problems = self.raw.problems
        return {"bad_inputs.jsonl": "".join(json.dumps(p) + "\n" for p in problems)} \
            if problems else {}

    def datasets(self, cfg: TrainConfig, bad_dir: Optional[str] = None) -> dict[str, ray.data.Dataset]:
        """``{"train", "val"}`` Ray Datasets decoding the files; files that fail to decode are
        recorded under ``bad_dir`` when given."""
        train = build_raw_dataset(self.raw.train_source, cfg.data, cfg.augment, seed=cfg.run.seed,
                                  train=True, bad_dir=bad_dir, epochs=driver_epochs(cfg))
        val = build_raw_dataset(self.raw.val_source, cfg.data, train=False, bad_dir=bad_dir,
                                transform=EvalTransform.of(cfg))
        return _quiet({"train": train, "val": val})

    def object_refs(self, cfg: TrainConfig) -> dict[str, Any]:
        """Raises ConfigError: ``data.cache: memory`` needs prepared shards."""
        raise ConfigError("data.cache=memory needs prepared shards; set data.use_raw=false")

    def stem_weights(self, cfg: TrainConfig) -> Optional[np.ndarray]:
        """None; raises ConfigError with ``model.whitening.enabled`` (it needs prepared shards)."""
        if cfg.model.whitening.enabled:
            raise ConfigError("model.whitening.enabled=true computes the first layer from the "
                              "prepared shards; set data.use_raw=false")
        return None
