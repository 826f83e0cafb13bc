"""Driver side of a training run (Ray glue): prepare data, build the ``TorchTrainer``, fit.

The data comes from :func:`cnn_ray.data.prepare.prepare_data`; the run's directories from
:mod:`cnn_ray.runs`; its checkpoints are found by
:func:`cnn_ray.train.checkpoint.latest_checkpoint`.

:func:`run_training` is what ``jobs/train.py`` and every Tune trial call, so a sweep's winning
trial is a recipe that ``jobs/train.py`` re-runs as is.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from typing import Any, Callable, Optional, Union

import yaml

import ray
import ray.train
from ray.train.torch import TorchTrainer

from cnn_ray import compat
from cnn_ray.compat import resolve_execution_options
from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.data.pipeline import AUGMENT_START_EPOCH, RAW_BAD_DIR, RawData
from cnn_ray.data.prepare import prepare_data
from cnn_ray.data.shards import PreparedData
from cnn_ray.io import is_uri, write_text
from cnn_ray.runs import run_dir, storage_root
from cnn_ray.train.budget_run import read_reported_error
from cnn_ray.train.checkpoint import CheckpointError, latest_checkpoint, read_meta
from cnn_ray.train.data_modes import training_data
from cnn_ray.train.inputs import FaultInjection, TrainingData, WorkerInputs
from cnn_ray.train.finetune import check_finetune, keep_pretrained_normalization
from cnn_ray.train.worker import train_loop_per_worker


class SplitValDataConfig(ray.train.DataConfig):
    """``ray.train.DataConfig`` that splits ``train`` equally and ``val`` without dropping rows.

    Ray's default ``streaming_split(equal=True)`` drops up to ``world_size - 1`` rows to keep
    ranks in lock-step; evaluation needs no lock-step, and the validation metric must cover the
    *whole* validation set, so ``val`` is split with ``equal=False``.


    ``start_epoch`` (a picklable callable, evaluated when the shards are made, i.e. at every
    worker-group start, after Train picked the checkpoint to resume): the number of epochs
    already trained, written on the ``train`` dataset's ``DataContext`` as
    :data:`cnn_ray.data.pipeline.AUGMENT_START_EPOCH` so the augmentation draws continue with
    the resumed epoch instead of restarting at 0 with Ray Data's execution counter.
    """

    def __init__(self, unequal: tuple[str, ...] = ("val",),
                 start_epoch: Optional[Callable[[], int]] = None):
        super().__init__(datasets_to_split="all")
        self._unequal = set(unequal)
        self._start_epoch = start_epoch

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = resolve_execution_options(self, name)
            if name == "train" and self._start_epoch is not None:
                ds.context.set_config(AUGMENT_START_EPOCH, int(self._start_epoch()))
            splits = ds.streaming_split(world_size, equal=name not in self._unequal,
                                        locality_hints=worker_node_ids)
            for i, split in enumerate(splits):
                output[i][name] = split
        return output


def resolve_group_precision(cfg: TrainConfig) -> str:
    """``precision.dtype`` resolved once for the whole worker group, on the kind of device the
    workers get, so every rank runs the same precision.

    ``auto`` with ``scaling.use_gpu``: asked on a GPU of the cluster (a one-GPU Ray task; the
    driver may have none): bf16 where native, else fp16. ``auto`` on CPUs: resolved on this
    (the driver's) CPU; on a cluster of mixed CPU generations set ``precision.dtype`` instead.
    """
    import torch

    from cnn_ray.train.techniques import resolve_precision

    if cfg.precision.dtype != "auto":
        return cfg.precision.dtype
    if not cfg.scaling.use_gpu:
        return resolve_precision("auto", torch.device("cpu"))

    @ray.remote(num_gpus=1, num_cpus=0)
    def _on_a_gpu() -> str:
        import torch as _torch

        return resolve_precision("auto", _torch.device("cuda"))

    return ray.get(_on_a_gpu.remote(), timeout=600)


def job_bundles(cfg: TrainConfig) -> list[dict[str, float]]:
    """The resource bundles a run needs at once: one per Train worker (``cpus_per_worker``
    CPUs, a GPU with ``use_gpu``) plus one of ``data.pipeline_cpus`` CPUs when streaming."""
    worker = {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1.0} if cfg.scaling.use_gpu else {})}
    data = cfg.data.pipeline_cpus
    return [dict(worker) for _ in range(cfg.scaling.num_workers)] + ([{"CPU": data}] if data else [])


def _shortfall(cfg: TrainConfig, have: dict[str, float], where: str) -> Optional[str]:
    """Why ``have`` cannot hold the run (the message names the keys to change), or None."""
    cpus = have.get("CPU", 0.0)
    need = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    data = cfg.data.pipeline_cpus
    if need + data > cpus + 1e-9:
        return (f"scaling.num_workers ({cfg.scaling.num_workers}) * scaling.cpus_per_worker "
                f"({cfg.scaling.cpus_per_worker}) + data.data_cpus ({data}, data.cache="
                f"{cfg.data.cache}) = {need + data} CPUs, but the cluster {where} {cpus}: lower "
                "scaling.cpus_per_worker (a logical reservation; threads are set by "
                "scaling.torch_threads) or add nodes")
    if cfg.scaling.use_gpu and have.get("GPU", 0) < cfg.scaling.num_workers:
        return (f"scaling.use_gpu=true with scaling.num_workers={cfg.scaling.num_workers}, but "
                f"the cluster {where} {have.get('GPU', 0)} GPUs")
    return None


def check_cluster_fits(cfg: TrainConfig, *, poll_s: float = 5.0) -> None:
    """Fail fast (before requesting resources) if the workers plus Ray Data cannot fit; on a
    cluster that can grow, ask the autoscaler for them and wait.

    Train workers reserve ``num_workers * cpus_per_worker`` CPUs; when streaming, Ray Data's
    augmentation tasks need ``data.data_cpus`` more, or the pipeline starves and the job hangs
    (``data.pipeline_cpus``; 0 with ``data.cache: memory``).

    Static cluster (no autoscaler config, :func:`cnn_ray.compat.cluster_max_resources` is
    None): the resources it has now decide. Autoscaling cluster (e.g. ``cluster/aws.yaml``
    scaled to zero, KubeRay with ``minReplicas: 0``): the resources it can grow to decide; when
    they suffice but are not up yet, :func:`ray.autoscaler.sdk.request_resources` asks for
    :func:`job_bundles` and the check polls every ``poll_s`` seconds for up to
    ``scaling.autoscale_timeout_s``, then withdraws the request (the run's own placement group
    keeps the nodes it uses).

    Raises:
        ConfigError: the run cannot fit the cluster (or its maximum), or the nodes did not come
            up within ``scaling.autoscale_timeout_s``; the message names the keys to change.
    """
    have = ray.cluster_resources()
    short = _shortfall(cfg, have, "has")
    if short is None:
        return
    most = compat.cluster_max_resources()
    if most is None:
        raise ConfigError(short)
    beyond = _shortfall(cfg, most, "can grow to (its autoscaler's maximum)")
    if beyond is not None:
        raise ConfigError(beyond)
    from ray.autoscaler.sdk import request_resources

    timeout = cfg.scaling.autoscale_timeout_s
    bundles = job_bundles(cfg)
    print(f"[cnn_ray] the cluster has {_brief(have)} now and can grow to {_brief(most)}: asked "
          f"the autoscaler for {bundles}; waiting up to {timeout:.0f} s "
          "(scaling.autoscale_timeout_s)", flush=True)
    start = time.monotonic()
    request_resources(bundles=bundles)
    try:
        while short is not None:
            if time.monotonic() - start >= timeout:
                raise ConfigError(
                    f"waited {timeout:.0f} s (scaling.autoscale_timeout_s) for the autoscaler; "
                    f"{short}. Raise scaling.autoscale_timeout_s, or see `ray status` for why "
                    "nodes did not start")
            time.sleep(min(poll_s, max(0.0, timeout - (time.monotonic() - start))))
            have = ray.cluster_resources()
            short = _shortfall(cfg, have, "has")
    finally:
        request_resources(bundles=[])
    print(f"[cnn_ray] the cluster grew to {_brief(have)} in {time.monotonic() - start:.0f} s",
          flush=True)


def _brief(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU") if k in resources
                     or k == "CPU")


def write_run_files(cfg: TrainConfig, directory: str,
                    prepared: Union[PreparedData, RawData]) -> None:
    """Save the resolved config, the class mapping and the bad-input list in the run dir (a
    local path or a storage URI, see :mod:`cnn_ray.io`)."""
    data = training_data(cfg, prepared)
    names = data.summary.class_names
    write_text(directory, "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_text(directory, "class_names.json", json.dumps(
        {"class_names": list(names), "class_to_idx": {c: i for i, c in enumerate(names)}},
        indent=2))
    for name, text in data.run_files().items():
        write_text(directory, name, text)


def put_in_memory(cfg: TrainConfig, prepared: Union[PreparedData, RawData]) -> dict[str, Any]:
    """``data.cache: memory``: read the prepared shards once and ``ray.put`` them.

    Returns ``{"train": ObjectRef, "val": ObjectRef}`` of :func:`read_prepared_arrays` dicts
    (uint8 NHWC images, int64 labels and idx). The caller owns the objects: they live while it
    holds the refs (the job driver, or the sweep driver for all its trials).

    Raises:
        ConfigError: raw data (``data.use_raw``) or a data set over ``data.cache_max_mb``.
    """
    return training_data(cfg, prepared).object_refs(cfg)


def _trainer_data(cfg: TrainConfig, data: TrainingData, directory: str,
                  memory: Optional[dict[str, Any]]):
    """``(datasets, dataset_config, memory refs)`` for the trainer: Ray Datasets to stream, or
    (``data.cache: memory``) no datasets and the object refs (``memory``, else put now)."""
    if cfg.data.cache == "memory":
        return None, None, memory or data.object_refs(cfg)
    bad_dir = None if is_uri(directory) else f"{directory}/{RAW_BAD_DIR}"
    return data.datasets(cfg, bad_dir), SplitValDataConfig(start_epoch=CheckpointEpoch(directory)), None


class CheckpointEpoch:
    """Picklable ``() -> int``: the epoch of the newest complete checkpoint in a run dir (what
    a restarted worker group resumes from), 0 when there is none. A storage URI is not read
    here: 0 (the draws then restart at epoch 0 after a resume, as before)."""

    def __init__(self, directory: str):
        self.directory = directory

    def __call__(self) -> int:
        if is_uri(self.directory) or not os.path.isdir(self.directory):
            return 0
        try:
            return int(read_meta(latest_checkpoint(self.directory)).get("epoch", 0))
        except (CheckpointError, OSError, ValueError):
            return 0


def trains_in_trial(cfg: TrainConfig) -> bool:
    """Whether a sweep trial of ``cfg`` trains in the Tune trial's own process
    (:func:`cnn_ray.train.worker.train_in_tune_trial`) instead of through a ``TorchTrainer``:
    one worker, the memory cache (no Ray Data to stream) and a local or mounted
    ``run.storage_path`` (its checkpoints are written into the run dir like a Train run's; a
    URI keeps the TorchTrainer path). That skips Train's controller and worker actors, ~13-40 s
    of start-up per trial (issue 13). ``sweep.in_trial=false`` turns it off for a sweep."""
    return (cfg.scaling.num_workers == 1 and cfg.data.cache == "memory"
            and not is_uri(storage_root(cfg)))


def worker_inputs(cfg: TrainConfig, prepared: Union[PreparedData, RawData], *,
                  name: Optional[str] = None, memory: Optional[dict[str, Any]] = None,
                  fault_injection: Optional[dict] = None):
    """``(WorkerInputs, datasets, dataset_config)`` of a run of ``cfg`` named ``name``: what
    every worker is handed (config, data summary, run dir, memory refs, resolved precision,
    whitening filters) and the Ray Datasets to stream (None with ``data.cache: memory``).
    With a cnn_ray checkpoint as ``model.pretrained`` the summary carries its mean/std
    (:func:`cnn_ray.train.finetune.keep_pretrained_normalization`); the fine-tuning keys are
    checked here (:func:`~cnn_ray.train.finetune.check_finetune`).
    See :func:`build_trainer` for ``memory`` and ``fault_injection``.

    Raises:
        ConfigError: a bad ``model.pretrained`` or ``model.freeze`` (named), or whitening on a
            model whose first conv cannot take it."""
    name = name or cfg.run.name
    data = training_data(cfg, prepared)
    summary = keep_pretrained_normalization(cfg, data.summary)
    check_finetune(cfg, summary)  # model.pretrained / model.freeze errors before any worker
    directory = run_dir(cfg, name)
    datasets, dataset_config, refs = _trainer_data(cfg, data, directory, memory)
    inputs = WorkerInputs(
        config=cfg, data=summary, run_dir=directory, memory=refs,
        fault=FaultInjection.from_dict(fault_injection) if fault_injection else None,
        precision=resolve_group_precision(cfg), stem_weights=data.stem_weights(cfg))
    return inputs, datasets, dataset_config


def build_trainer(
    cfg: TrainConfig,
    prepared: Union[PreparedData, RawData],
    *,
    name: Optional[str] = None,
    callbacks: Optional[list] = None,
    fault_injection: Optional[dict] = None,
    memory: Optional[dict[str, Any]] = None,
) -> TorchTrainer:
    """The ``TorchTrainer`` for ``cfg`` over ``prepared`` (no resources requested yet).

    ``memory``: with ``data.cache: memory``, refs from :func:`put_in_memory` to reuse (a sweep
    puts the data once for all trials); None puts them now. The trainer then gets no Ray
    Datasets: each worker ``ray.get``s the arrays and keeps its share. ``fault_injection``:
    :class:`~cnn_ray.train.inputs.FaultInjection` fields as a dict (tests). With
    ``model.whitening.enabled`` the first conv's whitening filters are computed here, once,
    from a sample of the prepared training shards, and handed to every worker.

    Raises:
        ConfigError: whitening on a model whose first conv cannot take it.
    """
    name = name or cfg.run.name
    inputs, datasets, dataset_config = worker_inputs(cfg, prepared, name=name, memory=memory,
                                                     fault_injection=fault_injection)
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=inputs.to_dict(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources, placement_strategy=cfg.scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_root(cfg),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            callbacks=callbacks or None,
        ),
        datasets=datasets,
        dataset_config=dataset_config,
    )


# Keys a resumed run must share with its checkpoint: the network's shape, the data it saw, and
# what shapes the optimiser's state (its kind and parameter groups: Muon keeps the conv filters
# in a group of their own, a BN-bias lr multiplier != 1 splits the BN biases off, whitening and
# frozen BN scales take the first conv's weight / the BN weights out of the groups).
RESUME_KEYS = tuple(f"model.{k}" for k in ("name", "width_mult", "depth", "kernel_size",
                                           "separable", "widths", "small_input")) + tuple(
    f"data.{k}" for k in ("train", "val", "format", "image_size", "store_size", "channels",
                          "path_column", "label_column", "path_template", "pca")) + (
    "optim.optimizer",)
# Settings whose value may change on resume but not whether they are on: (key, "on" test).
RESUME_SWITCHES = (("model.batchnorm.bias_lr_mult", lambda v: v not in (None, 1, 1.0)),
                   ("model.whitening.enabled", bool), ("model.batchnorm.freeze_scale", bool))


def _lookup(d: dict, key: str, default=None):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def check_resume(cfg: TrainConfig, directory: str, class_names: list[str]) -> Optional[str]:
    """Before any worker starts: when the run dir already holds a checkpoint, check that it
    belongs to this run (same :data:`RESUME_KEYS`, the :data:`RESUME_SWITCHES` on or off alike,
    same class names), so a resume never fails inside a worker on a model or optimiser state
    that does not fit. Returns the checkpoint's
    path (None: nothing to resume, or a storage URI, which is not read here).

    Raises:
        ConfigError: a key or the class names differ; the message names each (checkpoint
            value -> new value) and says how to start a new run instead (another run.name).
    """
    if is_uri(directory) or not os.path.isdir(directory):
        return None
    try:
        ckpt = latest_checkpoint(directory)
        meta = read_meta(ckpt)
    except CheckpointError:
        return None
    old, new = meta.get("config") or {}, cfg.to_dict()
    diffs = []
    for key in RESUME_KEYS:
        after = _lookup(new, key)
        before = _lookup(old, key, after)  # a key the checkpoint predates kept its default
        if before != after:
            diffs.append(f"{key}: {before!r} -> {after!r}")
    for key, is_on in RESUME_SWITCHES:
        after = _lookup(new, key)
        before = _lookup(old, key, after)
        if bool(is_on(before)) != bool(is_on(after)):
            diffs.append(f"{key}: {before!r} -> {after!r}")
    if list(meta.get("class_names") or []) != list(class_names):
        diffs.append(f"class names: {meta.get('class_names')} -> {list(class_names)}")
    if diffs:
        raise ConfigError(
            f"run.name={cfg.run.name!r}: {ckpt} is a checkpoint of a different run, so this one "
            f"cannot resume it: {'; '.join(diffs)}. Start a new run with another run.name "
            f"(e.g. run.name={cfg.run.name}-2), or restore the settings above to resume.")
    return str(ckpt)


def run_training(
    cfg: TrainConfig,
    *,
    name: Optional[str] = None,
    callbacks: Optional[list] = None,
    fault_injection: Optional[dict] = None,
    prepared: Union[PreparedData, RawData, None] = None,
) -> ray.train.Result:
    """Prepare data (a no-op when already prepared), then train with Ray Train.

    Re-running with the same ``run.name`` and ``run.storage_path`` resumes from the last
    checkpoint. Connects to the cluster in ``RAY_ADDRESS`` or starts local Ray if none is
    initialised. Returns the ``ray.train.Result`` (``metrics``, ``checkpoint``, ``path``).
    ``prepared``: what :func:`cnn_ray.data.prepare.prepare_data` returned for ``cfg`` (None: call it now);
    ``fault_injection``: see :func:`build_trainer`.

    Raises:
        ConfigError: the cluster cannot fit the workers plus the data pipeline, or the run dir
            holds a checkpoint of a different model, data or class list (:func:`check_resume`),
            or the workers found ``optim.budget_s`` too small for one epoch
            (:func:`raise_reported_error`).
        ray.train.TrainingFailedError: training failed more than ``run.max_failures`` times.
    """
    if not ray.is_initialized():
        ray.init()
    check_cluster_fits(cfg)
    prepared = prepared or prepare_data(cfg)
    directory = run_dir(cfg, name)
    check_resume(cfg, directory, training_data(cfg, prepared).summary.class_names)
    write_run_files(cfg, directory, prepared)
    trainer = build_trainer(cfg, prepared, name=name, callbacks=callbacks,
                            fault_injection=fault_injection)
    started = time.time()
    result = trainer.fit()
    raise_reported_error(directory, started)
    return result


def raise_reported_error(directory: str, since: float) -> None:
    """Raise the :class:`ConfigError` the workers of the run in ``directory`` wrote at or after
    unix time ``since`` instead of training (a budget too small for one epoch,
    :class:`cnn_ray.train.budget.BudgetTooSmall`): they write its message and end cleanly, so
    the user sees one message and no worker traceback.

    Raises:
        ConfigError: the workers wrote an error.
    """
    message = read_reported_error(directory, since)
    if message:
        raise ConfigError(message)


def prepared_summary(prepared: Union[PreparedData, RawData]) -> dict:
    """JSON-safe summary of a ``PreparedData`` (for logs)."""
    try:
        d = asdict(prepared)
    except TypeError:
        d = dict(vars(prepared))
    d.pop("train_files", None)
    d.pop("val_files", None)
    return d
