"""The prepare step: decode every input image once into fixed-size Parquet shards (Ray Data glue).

:func:`prepare_data` runs it for a run's config (or, with ``data.use_raw``, returns the
:class:`~cnn_ray.data.pipeline.RawData` that decodes every epoch instead);
:func:`prepare_dataset` lists the input (:func:`cnn_ray.data.sources.discover`), decodes and
resizes every image once in parallel Ray Data tasks, splits train/val, and writes the shards,
``prepared.json`` and ``bad_inputs.jsonl`` in the format of :mod:`cnn_ray.data.shards` (which
also reads them back, without Ray). The work is split by job:

* :mod:`cnn_ray.data.prepare_build`: routing rows to the splits, the decode pass, writing the
  shards, the channel statistics and progress lines;
* :mod:`cnn_ray.data.decode_tasks`: the Ray Data decode tasks (shared with the raw-data path);
* :mod:`cnn_ray.data.prepare_bands`: fitting the band transform of multi-band data.

Folder/manifest rows are written in a seeded random order (so a shard holds every class and
a local shuffle buffer sees a mix); Parquet inputs keep their row order.

Geometry: every image is stored as a square of side ``data.store_size`` (else
``data.image_size``): the shorter side resized to it (Pillow's antialiased bilinear), the
centred square kept (:mod:`cnn_ray.data.decode`). Why a square and not the whole image with
its aspect kept: the memory and GPU caches hold one fixed-shape uint8 array and crop whole
batches out of it without copies or padding, the Parquet column is fixed-size; what is lost
is the ends of the long side, which torchvision's evaluation centre crop never reads (it
keeps the centre ``crop / resize`` of the shorter side) and where only the widest
random-resized-crop boxes would reach (Oxford flowers 667x500: a quarter of the width). A
``store_size`` above ``image_size`` keeps the resolution that training's random-resized crop
and a FixRes evaluation above the training size draw on (FFCV stores 256-512 px likewise).

Caching: the fingerprint hashes the input listing (paths, sizes, mtimes) and the settings
that change the output (the stored side, channels, val, val_fraction, format, shard_size,
seed), so changing ``data.store_size`` re-prepares and changing ``data.image_size`` under a
fixed ``store_size`` does not. A
re-run with the same fingerprint returns the existing data without work unless ``force=True``.
The data is built in ``<out_dir>.tmp-<pid>-<random>`` and renamed into place
(:func:`cnn_ray.io.atomic_directory`), so an interrupted run never leaves a complete-looking
``out_dir``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any, Optional, Union

from cnn_ray.config import DataConfig, TrainConfig
from cnn_ray.data.bad_inputs import check_bad_fraction
from cnn_ray.data.decode import BadInputError
from cnn_ray.data.prepare_bands import bands_mode
from cnn_ray.data.prepare_build import build_shards, say
from cnn_ray.data.shards import BAD_INPUTS_FILE, PREPARED_FILE, PreparedData, load_prepared
from cnn_ray.data.sources import ManifestSpec, Source, discover
from cnn_ray.io import atomic_directory, iter_jsonl, remove_stale_temps
from cnn_ray.runs import default_prepared_dir, run_dir

if TYPE_CHECKING:
    from cnn_ray.data.pipeline import RawData

PREPARE_VERSION = 1  # bump when the output layout or decode recipe changes (invalidates caches)


def prepare_data(cfg: TrainConfig, *, force: bool = False,
                 progress: bool = True) -> Union[PreparedData, "RawData"]:
    """Run (or reuse) the prepare step for ``cfg.data`` into
    :func:`cnn_ray.runs.default_prepared_dir`; returns its :class:`PreparedData`.

    With ``data.use_raw`` nothing is written: returns a ``RawData`` that decodes every epoch.
    Either way ``data.max_bad_fraction`` is applied to the rows left out (raw: at listing).
    Either goes to :func:`cnn_ray.train.launch.write_run_files`,
    :func:`~cnn_ray.train.launch.put_in_memory` and :func:`~cnn_ray.train.launch.build_trainer`
    (which see it as :class:`~cnn_ray.train.inputs.TrainingData`).

    Raises:
        TooManyBadInputsError: a split has more bad inputs than ``data.max_bad_fraction``.
        The errors of :func:`prepare_dataset` (BadInputError, SourceError,
        InputNotVisibleError).
    """
    if cfg.data.use_raw:
        from cnn_ray.data.pipeline import RawData  # Ray Data: only for raw data

        raw = RawData(cfg.data, seed=cfg.run.seed)
        if cfg.data.bad_input == "skip":
            check_bad_fraction(raw.bad_by_split, cfg.data.max_bad_fraction,
                               f"{run_dir(cfg)}/{BAD_INPUTS_FILE}",
                               source={"train": cfg.data.train, "val": cfg.data.val or ""})
        return raw
    return prepare_dataset(cfg.data, default_prepared_dir(cfg), seed=cfg.run.seed, force=force,
                           progress=progress)


def prepare_dataset(
    cfg: DataConfig,
    out_dir: str,
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    concurrency: Optional[int] = None,
    num_cpus: float = 0.25,
) -> PreparedData:
    """Decode ``cfg.train`` (and ``cfg.val``) once into Parquet shards under ``out_dir``.

    Args:
        cfg: the data settings (train/val paths, format, image_size, store_size, channels,
            val_fraction, shard_size, bad_input).
        out_dir: where the prepared dataset goes (created; replaced when stale or ``force``).
        seed: seeds the held-out split and the row order.
        force: rebuild even if ``out_dir`` is up to date.
        progress: print a progress line every few seconds (and the skip notice).
        concurrency: most decode tasks at once; default the cluster's CPU count.
        num_cpus: logical CPUs each decode task reserves (fractional, so prepare runs while
            other work holds CPUs).

    Returns:
        The :class:`PreparedData` now in ``out_dir``.

    Raises:
        BadInputError: ``cfg.bad_input == "fail"`` and an input is bad (names the file).
        SourceError: an input's layout/schema is unusable, or no training image is usable.
        TooManyBadInputsError: more than ``cfg.max_bad_fraction`` of a split's inputs are bad
            (the prepared data and its ``bad_inputs.jsonl`` are kept; below the limit a warning
            line is printed instead, see :mod:`cnn_ray.data.bad_inputs`).
        InputNotVisibleError: a file listed here was not found on the node decoding it.
    """
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    spec = ManifestSpec.of(cfg)
    train_src = discover(cfg.train, cfg.format, channels=cfg.channels, manifest=spec)
    val_src = (discover(cfg.val, cfg.format, class_names=train_src.class_names, channels=cfg.channels,
                        manifest=spec) if cfg.val else None)
    fp = fingerprint(cfg, train_src, val_src, seed)
    if not force and _is_current(out_dir, fp):
        data = load_prepared(out_dir)
        if cfg.bad_input == "fail" and data.bad_count:
            first = _first_bad(out_dir)
            raise BadInputError(first.get("path", out_dir),
                                first.get("reason", "bad input (see bad_inputs.jsonl)"))
        say(progress, f"prepare: {out_dir} is up to date (fingerprint {fp[:12]}), skipping; "
                       "force=True rebuilds")
        _check_bad(cfg, out_dir, data)
        return data
    _check_replaceable(out_dir)
    remove_stale_temps(out_dir)
    with atomic_directory(out_dir) as tmp:
        summary = build_shards(cfg, train_src, val_src, str(tmp), seed=seed, progress=progress,
                              concurrency=concurrency, num_cpus=num_cpus)
        summary["fingerprint"] = fp
        with open(tmp / PREPARED_FILE, "w") as f:
            json.dump(summary, f, indent=1)
        _check_replaceable(out_dir)
    data = load_prepared(out_dir)
    _check_bad(cfg, out_dir, data)
    return data


def fingerprint(cfg: DataConfig, train: Source, val: Optional[Source], seed: int) -> str:
    """sha256 of the input listings and the settings that change the prepared output."""
    key = {
        "version": PREPARE_VERSION,
        "train": [train.kind, train.listing_digest, train.class_names],
        "val": [val.kind, val.listing_digest] if val else None,
        "cfg": {k: getattr(cfg, k) for k in ("train", "val", "val_fraction", "format", "image_size",
                                             "channels", "shard_size")},
        "seed": seed,
    }
    # the side the images are stored at (data.store_size, else image_size) under the old key
    # name: fingerprints of data prepared without store_size stay valid
    key["cfg"]["image_size"] = cfg.stored_size
    if bands_mode(cfg, train):  # only then: keeps earlier fingerprints valid
        key["bands"] = [cfg.pca.model_dump() if cfg.pca else None, cfg.band_sample_images]
    spec = ManifestSpec.of(cfg)
    if spec != ManifestSpec():  # only when set: the default keeps earlier fingerprints valid
        key["manifest"] = [spec.path_column, spec.label_column, spec.path_template]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _check_bad(cfg: DataConfig, out_dir: str, data: PreparedData) -> None:
    """Apply ``cfg.max_bad_fraction`` to the prepared data's per-split bad counts (data prepared
    before they were recorded: one figure over all splits)."""
    if cfg.bad_input == "fail":
        return  # a bad input already stopped the job
    try:
        with open(os.path.join(out_dir, PREPARED_FILE)) as f:
            summaries = json.load(f).get("bad_by_split")
    except (OSError, ValueError):
        summaries = None
    if summaries is None:
        first = [f"{b.get('path')} ({b.get('reason')})" for b, _ in zip(
            iter_jsonl(os.path.join(out_dir, BAD_INPUTS_FILE)), range(5))] if data.bad_count else []
        summaries = {"all": {"inputs": data.num_train + data.num_val + data.bad_count,
                             "bad": data.bad_count, "by_kind": {}, "first": first}}
    check_bad_fraction(summaries, cfg.max_bad_fraction, os.path.join(out_dir, BAD_INPUTS_FILE),
                       source={"train": cfg.train, "val": cfg.val or ""})


def _is_current(out_dir: str, fp: str) -> bool:
    try:
        with open(os.path.join(out_dir, PREPARED_FILE)) as f:
            return json.load(f).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def _first_bad(out_dir: str) -> dict[str, Any]:
    try:
        return next(iter_jsonl(os.path.join(out_dir, BAD_INPUTS_FILE)), {})
    except OSError:
        return {}


def _check_replaceable(out_dir: str) -> None:
    """Refuse to replace a non-empty folder that is not a prepared dataset (user data)."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and \
            not os.path.isfile(os.path.join(out_dir, PREPARED_FILE)):
        raise FileExistsError(f"{out_dir}: exists and is not a prepared dataset; refusing to "
                              "replace it (choose another prepared_dir or remove it)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not a folder")

