"""Ray Data glue: stream prepared shards (or raw files), shuffle, augment, hand to Train.

The train dataset is ``read_parquet(shards, shuffle=files) -> [random_shuffle] ->
map_batches(AugmentBatches)``: augmentation runs in Ray Data tasks on whole batches
(``cnn_ray.data.augment``), outside the training process. Batches leave the pipeline as uint8
NHWC (4x smaller than float in the object store); normalisation happens on the training device.

Random draws: each image's augmentation is a hash of (seed, epoch, row idx), so a row gets the
same draws whatever worker or batch it lands in, new draws every epoch, and the same run twice
with one seed gives the same draws. The epoch is the run's first epoch of this worker group
(:data:`AUGMENT_START_EPOCH`, set explicitly on the dataset's ``DataContext`` by
:class:`cnn_ray.train.launch.SplitValDataConfig` from the checkpoint the run resumes; 0 for a
new run) plus Ray Data's execution counter (:func:`cnn_ray.compat.data_execution_index`, the
counter behind ``RandomSeedConfig(reseed_after_execution=True)``, which restarts at 0 with
every new worker group): every ``iter_torch_batches`` pass over a Train shard is a new
execution. So a resumed run draws the augmentations of its own epochs, not epoch 0's again.

Progressive resizing (``data.progressive``; FFCV, Composer): the training side of an epoch is
:meth:`~cnn_ray.config.DataConfig.crop_size_at` of that same execution epoch and the run's
planned epochs, so a resumed run continues the ramp. The driver knows the epoch count unless
``optim.budget_s`` derives it on the workers; then the tasks crop every epoch at the ramp's end
size and each worker resizes its batches down to its epoch's side before the step
(:func:`~cnn_ray.data.resized_crop.resize_batch`). See :func:`train_sizes`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

import ray
from ray.data import Dataset

from cnn_ray.compat import data_execution_index
from cnn_ray.config import AugmentConfig, DataConfig
from cnn_ray.data.augment import augment_batch
from cnn_ray.data.preprocess import EvalTransform
from cnn_ray.data.shards import BAD_INPUTS_FILE, ChannelStats, read_shard_images
from cnn_ray.io import read_jsonl_at, write_text


AUGMENT_START_EPOCH = "cnn_ray.augment_start_epoch"  # DataContext config key (0-based epoch)


def _execution_epoch() -> int:
    """0-based epoch of the draws: the worker group's start epoch + Ray Data's execution count."""
    ctx = ray.data.DataContext.get_current()
    return int(ctx.get_config(AUGMENT_START_EPOCH, 0)) + data_execution_index(ctx)


class AugmentBatches:
    """``map_batches`` function: pyarrow shard batch -> augmented ``{"image", "label"}``.

    Input: a ``pyarrow.Table`` batch of a prepared shard (``image`` fixed-size binary, ``label``,
    ``idx``) at the stored ``image_shape``. Output: ``{"image": (N, H, W, C) uint8, "label":
    (N,) int64}``: training, augmented and (``out_size``, images stored larger) random-resized
    cropped to ``out_size`` (:func:`~cnn_ray.data.augment.augment_batch`); evaluation, the
    ``eval_transform`` (:class:`~cnn_ray.data.preprocess.EvalTransform`; None: as stored).
    The epoch used for the draws is ``epoch_offset`` plus the worker group's start epoch
    (:data:`AUGMENT_START_EPOCH` on the executing ``DataContext``) plus Ray Data's execution
    counter. ``sizes`` (``data.progressive``): the training side of each 0-based epoch
    (epochs past its end take the last; None: ``out_size`` every epoch); ``always_resize``:
    crop to that side also when it is the stored one (see :func:`train_sizes`).
    """

    def __init__(self, cfg: AugmentConfig, *, image_shape: tuple[int, int, int], seed: int,
                 epoch_offset: int = 0, train: bool = True, out_size: Optional[int] = None,
                 eval_transform: Optional[EvalTransform] = None,
                 sizes: Optional[Sequence[int]] = None, always_resize: bool = False):
        self.cfg = cfg
        self.image_shape = tuple(int(v) for v in image_shape)
        self.seed = seed
        self.epoch_offset = epoch_offset
        self.train = train
        self.out_size = out_size
        self.eval_transform = eval_transform
        self.sizes = tuple(int(v) for v in sizes) if sizes else None
        self.always_resize = always_resize

    def size_at(self, epoch: int) -> Optional[int]:
        """The training side of 0-based ``epoch``: ``sizes[epoch]`` (the last one past the
        end), else ``out_size``."""
        if self.sizes:
            return self.sizes[min(max(epoch, 0), len(self.sizes) - 1)]
        return self.out_size

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        import torch

        if torch.get_num_threads() != 1:  # Data tasks are single-threaded; oversubscription is slow
            torch.set_num_threads(1)
        images, labels, idx = read_shard_images(batch, self.image_shape)
        if self.train:
            epoch = self.epoch_offset + _execution_epoch()
            images = augment_batch(images, idx, self.cfg, seed=self.seed, epoch=epoch,
                                   out_size=self.size_at(epoch),
                                   always_resize=self.always_resize)
        elif self.eval_transform is not None:
            images = self.eval_transform.apply(images)
        return {"image": images, "label": labels}


def train_sizes(data: DataConfig, epochs: Optional[int]) -> dict[str, Any]:
    """The training-side arguments of :class:`AugmentBatches` for a streamed run.

    Without ``data.progressive``: ``out_size`` is ``data.train_crop_size`` (None: batches keep
    the stored side). With it, ``always_resize`` and, when the driver knows the run's
    ``epochs``, one side per epoch (``sizes[e] = data.crop_size_at(e, epochs)``); with
    ``epochs`` None (``optim.budget_s``: the epoch count is derived on the workers) every epoch
    is cropped at the ramp's end size and the worker resizes each batch down to its epoch's
    side (:func:`~cnn_ray.data.resized_crop.resize_batch`) before the step.

    Returns:
        ``{"out_size": int | None, "sizes": tuple[int, ...] | None, "always_resize": bool}``.
    """
    p = data.progressive
    if not p.enabled:
        return {"out_size": data.train_crop_size, "sizes": None, "always_resize": False}
    end = p.end_size or data.image_size
    sizes = tuple(data.crop_size_at(e, epochs) for e in range(epochs)) if epochs else None
    return {"out_size": end, "sizes": sizes, "always_resize": True}


def read_shards(files: list[str], data: DataConfig, *, seed: int, train: bool) -> Dataset:
    """``read_parquet`` of prepared shard files, file order shuffled per epoch when training."""
    shuffle = None
    if train and data.shuffle != "none":
        shuffle = ray.data.FileShuffleConfig(seed=seed, reseed_after_execution=True)
    return ray.data.read_parquet(files, shuffle=shuffle)


def build_train_dataset(files: list[str], data: DataConfig, augment: AugmentConfig, *,
                        image_shape: tuple[int, int, int], seed: int, epoch_offset: int = 0,
                        batch_rows: int = 256, epochs: Optional[int] = None) -> Dataset:
    """The streaming, augmented training dataset over prepared shards (stored at
    ``image_shape``; batches leave at ``data.image_size``, random-resized cropped from larger
    stored images in the Ray Data tasks; with ``data.progressive`` at each epoch's side of the
    run's ``epochs``, or the end size when ``epochs`` is None: :func:`train_sizes`).

    ``data.shuffle``: ``none``; ``files`` (shard order per epoch); ``local`` (plus the shuffle
    buffer in ``iter_torch_batches``, applied by the worker); ``full`` (a ``random_shuffle``
    of all rows every epoch, before augmentation; costly, all rows go through the object store).
    """
    ds = read_shards(files, data, seed=seed, train=True)
    if data.shuffle == "full":
        ds = ds.random_shuffle(seed=ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True))
    return ds.map_batches(
        AugmentBatches(augment, image_shape=image_shape, seed=seed, epoch_offset=epoch_offset,
                       train=True, **train_sizes(data, epochs)),
        batch_format="pyarrow", batch_size=batch_rows, num_cpus=data.data_cpus, resources=data.resources or None,
        zero_copy_batch=True,
    )


def build_eval_dataset(files: list[str], data: DataConfig, *, image_shape: tuple[int, int, int],
                       batch_rows: int = 1024,
                       transform: Optional[EvalTransform] = None) -> Dataset:
    """The evaluation dataset: shards decoded to ``{"image", "label"}``, no augmentation, the
    validation ``transform`` applied in the Ray Data tasks (:meth:`EvalTransform.of` the run's
    config; None: the stored square resized to ``data.image_size``)."""
    ds = read_shards(files, data, seed=0, train=False)
    transform = transform or EvalTransform(int(image_shape[0]), data.image_size, data.image_size)
    return ds.map_batches(
        AugmentBatches(AugmentConfig(), image_shape=image_shape, seed=0, train=False,
                       eval_transform=transform),
        batch_format="pyarrow", batch_size=batch_rows, num_cpus=data.data_cpus, resources=data.resources or None, zero_copy_batch=True,
    )


class _RawBatches:
    """``map_batches`` function after raw decoding: drop bad rows, then augment (train only).

    With ``bad_dir`` (a local folder), every skipped file is also recorded there as one
    ``<sha1 of path>.json`` (``{"path", "reason", "split"}``), written atomically, so a file that
    fails in every epoch is listed once; the training worker merges them into the run's
    ``bad_inputs.jsonl`` (:func:`merge_raw_bad_inputs`)."""

    def __init__(self, cfg: AugmentConfig, *, image_shape, seed: int, train: bool, policy: str,
                 bad_dir: Optional[str] = None, split: str = "train",
                 out_size: Optional[int] = None, eval_transform: Optional[EvalTransform] = None,
                 sizes: Optional[Sequence[int]] = None, always_resize: bool = False):
        self.inner = AugmentBatches(cfg, image_shape=image_shape, seed=seed, train=train,
                                    out_size=out_size, eval_transform=eval_transform,
                                    sizes=sizes, always_resize=always_resize)
        self.policy = policy
        self.bad_dir, self.split = bad_dir, split

    def _record(self, batch: pa.Table) -> None:
        import hashlib
        import json

        for path, reason in zip(batch.column("path").to_pylist(), batch.column("reason").to_pylist()):
            if reason is not None:
                name = hashlib.sha1(str(path).encode()).hexdigest()[:20]
                write_text(self.bad_dir, f"{name}.json",
                           json.dumps({"path": path, "reason": reason, "split": self.split}))

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        from cnn_ray.data.decode import BadInputError

        reason = batch.column("reason")
        if reason.null_count != len(batch):
            node = batch.column("node")
            if node.null_count != len(batch):  # listed by the driver, not found on this node
                from cnn_ray.data.errors import InputNotVisibleError

                i = next(i for i, v in enumerate(node.to_pylist()) if v is not None)
                raise InputNotVisibleError(batch.column("path")[i].as_py(), node[i].as_py())
            if self.policy == "fail":
                i = next(i for i, r in enumerate(reason.to_pylist()) if r is not None)
                raise BadInputError(batch.column("path")[i].as_py(), reason[i].as_py())
            if self.bad_dir:
                self._record(batch)
            batch = batch.filter(reason.is_null())
        table = pa.table({"image": batch.column("image"), "label": batch.column("label"),
                          "idx": batch.column("rid")})
        return self.inner(table)


def decode_raw_dataset(source, data: DataConfig, *, seed: int = 0, train: bool = False,
                       rows_per_block: int = 256, bands: Optional[dict] = None) -> Dataset:
    """Raw folder/manifest/Parquet :class:`~cnn_ray.data.sources.Source` -> decoded rows.

    Decoding (:func:`cnn_ray.data.decode_tasks.decode_block`: Pillow, odd modes converted, resized
    to the stored side ``data.store_size`` (else ``data.image_size``) and centre-cropped, as
    the prepare step stores them) runs in Ray Data tasks of ``data.data_cpus``.
    Rows: ``image`` (fixed-size binary, HWC uint8), ``label``, ``rid`` (row id in the source),
    ``reason`` (None, or why the file is unusable: its image is then zeros), ``path`` (set on
    bad rows only). Bad rows are *kept* here; the caller applies ``data.bad_input``.
    ``bands``: a checkpoint's band transform (:class:`~cnn_ray.data.bands.BandTransform`
    ``to_dict``): the files are multi-band tiles, mapped to its ``out_bands`` stored bands.

    Raises:
        ValueError: the source holds no images.
    """
    from cnn_ray.data.decode_tasks import decode_block, parquet_work_items

    if source.kind == "parquet":
        items = parquet_work_items(source)
        batch_size = 1
    else:
        items = [{"path": r.path, "label": r.label, "rid": r.row} for r in source.records]
        batch_size = rows_per_block
    if not items:
        raise ValueError(f"{source.path}: no usable images")
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // batch_size))
    if train and data.shuffle != "none":
        ds = ds.randomize_block_order(seed=ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True))
    kw = {"size": data.stored_size, "channels": data.channels, "encoding": source.image_encoding,
          "src_shape": source.image_shape, "rows_per_block": rows_per_block, "bands": bands,
          "dtype": getattr(source, "array_dtype", "uint8")}
    return ds.map_batches(decode_block, batch_size=batch_size, batch_format="pyarrow", fn_kwargs=kw,
                          num_cpus=data.data_cpus, resources=data.resources or None)


def build_raw_dataset(source, data: DataConfig, augment: Optional[AugmentConfig] = None, *,
                      seed: int = 0, train: bool = False, rows_per_block: int = 256,
                      bad_dir: Optional[str] = None, bands: Optional[dict] = None,
                      transform: Optional[EvalTransform] = None,
                      epochs: Optional[int] = None) -> Dataset:
    """Decode a raw folder/manifest/Parquet :class:`~cnn_ray.data.sources.Source` every pass.

    The ``data.use_raw`` path and ``jobs/evaluate.py --data``: no prepare step, decoding
    (:func:`decode_raw_dataset`) runs in Ray Data tasks on every epoch. Bad files follow
    ``data.bad_input`` (``skip`` drops them, and with ``bad_dir`` lists each once there, see
    :class:`_RawBatches`; ``fail`` raises ``BadInputError`` naming the file).
    Output rows as :func:`build_train_dataset` / :func:`build_eval_dataset` (``transform``:
    the validation transform of evaluation, as there; ``epochs``: the training sides of
    ``data.progressive``, :func:`train_sizes`).
    """
    ds = decode_raw_dataset(source, data, seed=seed, train=train, rows_per_block=rows_per_block,
                            bands=bands)
    side = data.stored_size
    shape = (side, side, bands["out_bands"] if bands else data.channels)
    transform = transform or EvalTransform(side, data.image_size, data.image_size)
    return ds.map_batches(
        _RawBatches(augment or AugmentConfig(), image_shape=shape, seed=seed, train=train,
                    policy=data.bad_input, bad_dir=bad_dir, split="train" if train else "val",
                    eval_transform=None if train else transform, **train_sizes(data, epochs)),
        batch_format="pyarrow", batch_size=None, num_cpus=data.data_cpus, resources=data.resources or None, zero_copy_batch=True,
    )


class RawData:
    """Raw inputs opened for the ``data.use_raw`` path (no prepare step).

    Mirrors the :class:`~cnn_ray.data.shards.PreparedData` fields the trainer needs
    (``class_names``, ``mean``, ``std``, ``image_shape``, ``num_train``, ``num_val``); the
    normalisation statistics come from a seeded sample of up to ``stats_sample`` training images.
    """

    def __init__(self, data: DataConfig, *, seed: int = 0, stats_sample: int = 1024):
        import dataclasses

        from cnn_ray.data.bad_inputs import split_summary
        from cnn_ray.data.decode import BadInputError, decode_image
        from cnn_ray.data.sources import ManifestSpec, discover, split_holdout

        if data.format == "parquet" or (data.format == "auto" and str(data.train).endswith(".parquet")):
            raise ValueError("data.use_raw=true supports folder and manifest inputs; prepare Parquet "
                             "inputs instead (data.use_raw=false)")
        spec = ManifestSpec.of(data)
        train = discover(data.train, data.format, channels=data.channels, manifest=spec)
        if data.val:
            val = discover(data.val, data.format, class_names=train.class_names, channels=data.channels,
                           manifest=spec)
        else:
            tr, va = split_holdout(train.records, data.val_fraction, seed)
            val = dataclasses.replace(train, records=[train.records[i] for i in va])
            train = dataclasses.replace(train, records=[train.records[i] for i in tr])
        self.root = str(data.train)
        self.train_source, self.val_source = train, val
        self.class_names = list(train.class_names)
        self.image_shape = (data.stored_size, data.stored_size, data.channels)
        self.num_train, self.num_val = len(train.records), len(val.records)
        rng = np.random.default_rng([seed, 7])
        pick = rng.permutation(len(train.records))[:stats_sample]
        stats = ChannelStats(data.channels)
        for i in pick:
            rec = train.records[int(i)]
            try:
                with open(rec.path, "rb") as f:
                    img = decode_image(f.read(), size=data.stored_size, channels=data.channels,
                                       path=rec.path)
            except (BadInputError, OSError):
                continue
            stats.add_images(img[None])
        if not stats.pixels:
            raise ValueError(f"{data.train}: no readable training image in a sample of {len(pick)}")
        self.mean, self.std = stats.mean_std()
        self.bad_count = len(train.problems) + len(val.problems)
        # found while listing (missing files, unknown labels); unreadable files are found while
        # decoding, each epoch, and listed by _RawBatches
        self.problems = ([dict(p, split="train") for p in train.problems]
                         + [dict(p, split="val") for p in val.problems])
        # per split, for data.max_bad_fraction (a held-out val shares the training listing)
        self.bad_by_split = {"train": split_summary(train.problems, train.num_rows)}
        if data.val:
            self.bad_by_split["val"] = split_summary(val.problems, val.num_rows)


RAW_BAD_DIR = "bad_inputs_raw"  # <run dir>/bad_inputs_raw/: files skipped while decoding raw data


def merge_raw_bad_inputs(run_dir: str) -> int:
    """Merge the files :class:`_RawBatches` recorded under ``<run_dir>/bad_inputs_raw`` into
    ``<run_dir>/bad_inputs.jsonl`` (one ``{"path", "reason", "split"}`` per line, each path once,
    rewritten atomically). Returns the number of lines in ``bad_inputs.jsonl`` afterwards."""
    import json
    from pathlib import Path

    lines = read_jsonl_at(run_dir, BAD_INPUTS_FILE)
    seen = {(r.get("path"), r.get("split")) for r in lines}
    raw = Path(run_dir) / RAW_BAD_DIR
    added = False
    for f in sorted(raw.glob("*.json")) if raw.is_dir() else []:
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: the next merge picks it up
        if (rec.get("path"), rec.get("split")) not in seen:
            seen.add((rec.get("path"), rec.get("split")))
            lines.append(rec)
            added = True
    if added:
        write_text(run_dir, BAD_INPUTS_FILE, "".join(json.dumps(r) + "\n" for r in lines))
    return len(lines)
