"""Where a run's files live under ``run.storage_path``. No Ray, no torch.

* :func:`storage_root`: ``run.storage_path`` with ``~`` expanded (a local path, or a storage URI
  such as ``s3://`` kept as is).
* :func:`run_dir`: ``<storage_path>/<run.name>``, where Ray Train keeps a run's checkpoints
  (``checkpoint_*``, :func:`cnn_ray.train.checkpoint.latest_checkpoint` finds the newest) and
  cnn_ray its ``metrics.jsonl``, ``events.jsonl``, ``config.yaml`` and friends.
* :func:`default_prepared_dir`: where the prepare step (:func:`cnn_ray.data.prepare.prepare_data`)
  writes the shards of a config's data when ``data.prepared_dir`` is not set.

A sweep's directory (``<storage_path>/<sweep name>``) is laid out by :mod:`cnn_ray.tune.plan`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from cnn_ray.config import TrainConfig


def storage_root(cfg: TrainConfig) -> str:
    """``run.storage_path`` with ``~`` expanded (URIs such as ``s3://`` are kept)."""
    p = cfg.run.storage_path
    return p if "://" in p else str(Path(os.path.expanduser(p)).resolve())


def run_dir(cfg: TrainConfig, name: Optional[str] = None) -> str:
    """``<storage_path>/<run.name>`` (or ``<storage_path>/<name>``): where Ray Train keeps
    checkpoints and we keep metrics."""
    return os.path.join(storage_root(cfg), name or cfg.run.name)


def default_prepared_dir(cfg: TrainConfig) -> str:
    """``data.prepared_dir``, else ``<storage_path>/prepared/<train folder>-<size>px-<hash>``:
    the hash (12 hex digits of a sha1) is of the data settings that change the prepared output
    and ``run.seed``; ``<size>`` is the stored side (``data.store_size``, else
    ``data.image_size``), so runs that differ only in ``data.image_size`` under one
    ``store_size`` share their prepared data."""
    if cfg.data.prepared_dir:
        return os.path.expanduser(cfg.data.prepared_dir)
    d = cfg.data
    key = json.dumps(
        [os.path.abspath(os.path.expanduser(d.train)),
         os.path.abspath(os.path.expanduser(d.val)) if d.val else None,
         d.format, d.stored_size, d.channels, d.val_fraction, d.shard_size, cfg.run.seed]
        + ([d.pca.model_dump(), d.band_sample_images] if d.pca else []),  # no pca: old names
    )
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return os.path.join(storage_root(cfg), "prepared",
                        f"{Path(d.train).name}-{d.stored_size}px-{digest}")
