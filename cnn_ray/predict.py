"""Batch prediction with a checkpoint on Ray Data: ``jobs/predict.py --checkpoint DIR --data PATH``.

Pipeline: the input listing (:func:`list_inputs`) -> ``from_items`` -> decode in Ray Data tasks
(:func:`cnn_ray.data.pipeline.decode_raw_dataset`, the decoding ``jobs/evaluate.py --data``
uses) -> ``map_batches(PredictBatches, concurrency=N)``: a pool of actors, each loading the
checkpoint once (:func:`cnn_ray.inference.load_inference_model`, the loader evaluation uses, so
normalisation, EMA weights, precision and TTA are evaluation's) and asking for one GPU when the
cluster has GPUs -> rows streamed to the driver and written to one Parquet or CSV file
(temp name + rename).

Output rows (in the order batches finish, not the input order): ``path`` (file; for Parquet
inputs ``<file> (row R)``), ``label`` (true class index from the input, -1 when unlabelled),
``pred_index``, ``pred_class``, ``prob`` (softmax of the TTA-averaged logits), ``top_classes``
and ``top_probs`` (the ``top_k`` best, lists in Parquet, ``|``-joined in CSV).

Bad files follow ``data.bad_input``: ``skip`` lists them with the reason in
``<out>.bad_inputs.jsonl`` (and rows of the listing that cannot be used: missing files,
unknown labels), the job succeeds; ``fail`` stops at the first one, naming it.

The :class:`PredictBatches` call and :func:`top_k_predictions` are Ray-free and tested alone.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import torch

from cnn_ray.data.sources import (MANIFEST_EXTENSIONS, ManifestSpec, Record, Source, discover,
                                  manifest_columns, manifest_files)
from cnn_ray.data.preprocess import EvalTransform
from cnn_ray.inference import InferenceModel, eval_transform_for, load_inference_model

OUTPUT_FORMATS = (".parquet", ".csv")


# --------------------------------------------------------------------------------- inputs
def list_inputs(path: str, fmt: str = "auto", *, class_names: Sequence[str],
                channels: int = 3, manifest: Optional[ManifestSpec] = None) -> Source:
    """The images to predict at ``path`` as a :class:`~cnn_ray.data.sources.Source`.

    Besides the training layouts (ImageFolder tree, ``path,label`` manifest, Parquet shards;
    labels matched to ``class_names`` by name, as evaluation does), unlabelled inputs are read
    with label -1: a folder holding image files directly, a glob of image files
    (``"dir/*.jpg"``), and a manifest with the path column(s) of ``manifest``
    (:class:`~cnn_ray.data.sources.ManifestSpec`, default ``path``) but no label column.

    Raises:
        SourceError: nothing usable at ``path`` (the message names it).
    """
    from cnn_ray.data.listing import is_glob, is_image, list_images
    from cnn_ray.data.sources import SourceError

    path = os.path.expanduser(str(path))
    if is_glob(path):
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f) and is_image(f))
        if files:
            return _unlabelled(path, files, class_names)
        if not any(f.lower().endswith(".parquet") for f in glob.glob(path)):
            raise SourceError(f"{path}: glob matches no image or .parquet files")
    elif os.path.isdir(path) and fmt in ("auto", "folder"):
        direct = [e.path for e in os.scandir(path) if e.is_file() and is_image(e.name)
                  and not e.name.startswith(".")]
        if direct and not any(e.is_dir() for e in os.scandir(path) if not e.name.startswith(".")):
            return _unlabelled(path, [f for f, _, _ in list_images(path)], class_names)
    elif os.path.isfile(path) and path.lower().endswith(MANIFEST_EXTENSIONS) and fmt in ("auto", "manifest"):
        spec = manifest or ManifestSpec()
        cols = manifest_columns(path)
        if all(c in cols for c in spec.path_columns()) and spec.label_column not in cols:
            return _unlabelled(path, manifest_files(path, spec), class_names)
    return discover(path, fmt, class_names=list(class_names), channels=channels, manifest=manifest)


def _unlabelled(path: str, files: list[str], class_names: Sequence[str]) -> Source:
    """Unlabelled files as a source; a manifest row whose file is missing here is a listed
    problem (``kind: missing``), so a file missing where it is decoded means it is not on
    storage that node sees (an error naming the node, not a skipped row)."""
    src = Source(kind="folder", path=path, class_names=list(class_names))
    for i, f in enumerate(files):
        if os.path.isfile(f):
            src.records.append(Record(f, -1, i))
        else:
            src.problems.append({"path": f, "reason": "file not found", "row": i, "kind": "missing"})
    return src


def row_paths(source: Source) -> "RowPaths":
    """Maps row ids of ``source`` back to what the user gave (file, or ``<file> (row R)``)."""
    return RowPaths(source)


class RowPaths:
    """``rid -> path`` for the output: records' files, or Parquet file + row within it."""

    def __init__(self, source: Source):
        if source.kind == "parquet":
            self.files = list(source.files)
            self.starts = np.cumsum([0, *source.file_rows])
            self.by_rid = None
        else:
            self.by_rid = {r.row: r.path for r in source.records}

    def __call__(self, rid: int) -> str:
        if self.by_rid is not None:
            return self.by_rid[rid]
        i = int(np.searchsorted(self.starts, rid, side="right") - 1)
        return f"{self.files[i]} (row {rid - int(self.starts[i])})"


# ------------------------------------------------------------------------------- numeric
def top_k_predictions(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, K)`` logits -> ``(N, k)`` int64 class indices and float32 softmax probabilities,
    best first (``k`` capped at K)."""
    probs = torch.softmax(logits.float(), dim=1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return top.indices.cpu().numpy().astype(np.int64), top.values.cpu().numpy().astype(np.float32)


class PredictBatches:
    """``map_batches`` callable class: decoded rows -> predictions; loads the checkpoint once.

    Input: a pyarrow batch of :func:`cnn_ray.data.pipeline.decode_raw_dataset` rows (decoded
    at the stored side ``image_shape``), given the run's validation transform
    (``eval_transform``, an :meth:`EvalTransform.to_dict`; None: the checkpoint's). Output:
    ``rid`` int64, ``label`` int64, ``top_index`` ``(N, k)`` int64, ``top_prob`` ``(N, k)``
    float32, ``reason`` (string, set for a bad row whose predictions are -1 / 0), ``node`` (set
    where a listed file was not found on the decoding node).

    Args:
        checkpoint: checkpoint directory. tta: ``eval.tta`` mode (None: the checkpoint's).
        policy: ``data.bad_input``: ``skip`` keeps bad rows (with their reason) for the listing;
            ``fail`` raises :class:`~cnn_ray.data.decode.BadInputError` naming the first one.
        threads: torch intra-op threads of this actor. device: None = CUDA when visible.
    """

    def __init__(self, checkpoint: str, *, tta: Optional[str], top_k: int, policy: str,
                 image_shape: tuple[int, int, int], threads: Optional[int] = None,
                 device: Optional[str] = None, eval_transform: Optional[dict] = None):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.im: InferenceModel = load_inference_model(checkpoint, tta=tta, device=device,
                                                       threads=threads)
        self.top_k, self.policy, self.image_shape = top_k, policy, tuple(image_shape)
        self.transform = (EvalTransform.from_dict(eval_transform) if eval_transform
                          else self.im.eval_transform)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from cnn_ray.data.decode import BadInputError
        from cnn_ray.data.shards import read_shard_images

        reason = batch.column("reason")
        bad = np.asarray(reason.is_null().to_numpy(zero_copy_only=False)) == 0
        if bad.any() and self.policy == "fail":
            i = int(np.flatnonzero(bad)[0])
            raise BadInputError(batch.column("path")[i].as_py(), reason[i].as_py())
        n, k = len(batch), min(self.top_k, len(self.im.class_names))
        index = np.full((n, k), -1, np.int64)
        prob = np.zeros((n, k), np.float32)
        good = np.flatnonzero(~bad)
        if len(good):
            table = pa.table({"image": batch.column("image"), "label": batch.column("label"),
                              "idx": batch.column("rid")})
            images, _, _ = read_shard_images(table, self.image_shape)
            images = self.transform.apply(images[good])  # the run's validation transform
            index[good], prob[good] = top_k_predictions(self.im.logits(images), k)
        return pa.table({
            "rid": batch.column("rid"), "label": batch.column("label").cast(pa.int64()),
            "top_index": pa.FixedSizeListArray.from_arrays(pa.array(index.ravel()), k),
            "top_prob": pa.FixedSizeListArray.from_arrays(pa.array(prob.ravel()), k),
            "reason": reason,
            # where a listed file was not found on the decoding node (the driver stops on it)
            "node": batch.column("node") if "node" in batch.column_names
            else pa.nulls(n, pa.string()),
        })


@torch.no_grad()
def forward_images_per_sec(im: InferenceModel, batch_size: int, *, steps: int = 5,
                           warmup: int = 1, seed: int = 0) -> float:
    """Pure forward throughput (images/s) of ``im``'s network with its TTA and precision on a
    resident, already-normalised batch: the ceiling batch prediction is compared against."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, im.image_size, im.image_size, im.channels),
                           dtype=torch.uint8, generator=g)
    x = im.preprocess(images)
    from cnn_ray.train.techniques import autocast_context

    def step():
        with autocast_context(im.settings.device, im.settings.precision):
            out = im.predict(im.model, x) if im.predict is not None else im.model(x)
        out.float().sum().item()  # waits for the device

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - t0)


# -------------------------------------------------------------------------------- output
@dataclass
class PredictSummary:
    """``images`` predicted; ``bad`` rows listed; ``top1`` over labelled rows (None when none);
    ``wall_s`` from the pipeline's start to the last row; ``images_per_sec`` = images / wall_s."""

    out: str
    images: int
    bad: int
    labelled: int
    top1: Optional[float]
    wall_s: float
    images_per_sec: float
    bad_list: str = ""
    extra: dict = field(default_factory=dict)


class PredictionWriter:
    """Streams prediction rows into one ``.parquet`` or ``.csv`` file written atomically
    (``cnn_ray.io.atomic_path``: nothing appears at ``out`` until :meth:`close`)."""

    def __init__(self, out: str, class_names: Sequence[str]):
        from cnn_ray.io import atomic_path

        self.out, self.names = out, list(class_names)
        self.is_csv = out.lower().endswith(".csv")
        self._ctx = atomic_path(out)
        self._tmp = self._ctx.__enter__()
        self._parquet = None
        self._csv_file = open(self._tmp, "w", newline="") if self.is_csv else None
        self._csv = csv.writer(self._csv_file) if self.is_csv else None
        if self._csv:
            self._csv.writerow(["path", "label", "pred_index", "pred_class", "prob",
                                "top_classes", "top_probs"])

    def write(self, paths: list[str], label: np.ndarray, index: np.ndarray, prob: np.ndarray) -> None:
        """One batch: ``index``/``prob`` ``(n, k)`` best first."""
        names = [[self.names[j] for j in row] for row in index]
        if self._csv:
            for p, lab, row_i, row_names, row_p in zip(paths, label, index, names, prob):
                self._csv.writerow([p, int(lab), int(row_i[0]), row_names[0],
                                    f"{row_p[0]:.6f}", "|".join(row_names),
                                    "|".join(f"{v:.6f}" for v in row_p)])
            return
        import pyarrow.parquet as pq

        table = pa.table({
            "path": pa.array(paths, pa.string()), "label": pa.array(label, pa.int64()),
            "pred_index": pa.array(index[:, 0]), "pred_class": pa.array([r[0] for r in names]),
            "prob": pa.array(prob[:, 0]),
            "top_classes": pa.array(names, pa.list_(pa.string())),
            "top_probs": pa.array(list(prob), pa.list_(pa.float32())),
        })
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(str(self._tmp), table.schema)
        self._parquet.write_table(table)

    def close(self, ok: bool = True) -> None:
        """Finish the file and rename it into place (``ok``), or remove it."""
        if self._csv_file:
            self._csv_file.close()
        if self._parquet is not None:
            self._parquet.close()
        elif not self.is_csv and ok:  # no good rows: still a valid (empty) Parquet file
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"path": pa.array([], pa.string())}), str(self._tmp))
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def predict_main(checkpoint: str, data: str, *, overrides: Sequence[str] = (),
                 out: Optional[str] = None, top_k: int = 5, concurrency: int = 1,
                 batch_size: Optional[int] = None) -> int:
    """CLI entry (Ray glue): list, decode, predict in an actor pool, write, print throughput.

    Raises:
        ConfigError: a missing checkpoint/data path, an unknown output extension, a bad
            override (each message names it).
    """
    import ray

    from cnn_ray.config import ConfigError, TrainConfig
    from cnn_ray.config_io import apply_overrides
    from cnn_ray.data.pipeline import decode_raw_dataset
    from cnn_ray.data.sources import SourceError
    from cnn_ray.io import atomic_write_text
    from cnn_ray.train.checkpoint import CheckpointError, read_meta

    checkpoint = os.path.expanduser(checkpoint)
    try:
        meta = read_meta(checkpoint)
    except CheckpointError as exc:
        raise ConfigError(f"--checkpoint: {exc}") from None
    cfg = TrainConfig.from_dict(apply_overrides(meta["config"], overrides),
                                source=f"{checkpoint}/meta.json + overrides", check_paths=False)
    out = os.path.expanduser(out or os.path.join(checkpoint, "predictions.parquet"))
    if not out.lower().endswith(OUTPUT_FORMATS):
        raise ConfigError(f"--out: {out!r} must end in .parquet or .csv")
    if top_k < 1 or concurrency < 1:
        raise ConfigError(f"--top-k and --concurrency must be >= 1, got {top_k} and {concurrency}")
    names = list(meta["class_names"])
    try:
        source = list_inputs(data, cfg.data.format, class_names=names, channels=cfg.data.channels,
                             manifest=ManifestSpec.of(cfg.data))
    except SourceError as exc:
        raise ConfigError(f"--data: {exc}") from None
    if not ray.is_initialized():
        ray.init()
    gpus = ray.cluster_resources().get("GPU", 0) >= 1
    bands = meta.get("bands")  # multi-band tiles: the training run's band transform
    shape = (cfg.data.stored_size, cfg.data.stored_size, len(meta["mean"]))  # decoded as stored
    transform = eval_transform_for(meta, cfg)  # then the run's validation transform
    cpus = cfg.scaling.cpus_per_worker
    threads = cfg.scaling.torch_threads or max(1, int(cpus))
    bs = batch_size or cfg.optim.eval_batch_size
    t0 = time.perf_counter()
    ds = decode_raw_dataset(source, cfg.data, bands=bands).map_batches(
        PredictBatches, fn_constructor_kwargs=dict(
            checkpoint=checkpoint, tta=cfg.eval.tta, top_k=top_k, policy=cfg.data.bad_input,
            image_shape=shape, threads=threads, eval_transform=transform.to_dict()),
        batch_format="pyarrow", batch_size=bs, concurrency=concurrency,
        num_cpus=0 if gpus else cpus, num_gpus=1 if gpus else 0, zero_copy_batch=True)
    paths = RowPaths(source)
    bad = [{"path": p["path"], "reason": p["reason"]} for p in source.problems]
    writer = PredictionWriter(out, names)
    images = labelled = correct = 0
    ok = False
    first_s, first_n = None, 0  # the first batch: start-up (actor, checkpoint, Ray Data) + 1 batch
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if first_s is None:
                first_s, first_n = time.perf_counter() - t0, len(batch)
            rid = batch.column("rid").to_numpy()
            label = batch.column("label").to_numpy()
            k = batch.schema.field("top_index").type.list_size
            index = batch.column("top_index").combine_chunks().flatten().to_numpy().reshape(-1, k)
            prob = batch.column("top_prob").combine_chunks().flatten().to_numpy().reshape(-1, k)
            reasons = batch.column("reason").to_pylist()
            missing = [(r, node) for r, node in zip(rid, batch.column("node").to_pylist()) if node]
            if missing and source.kind != "parquet":  # listed here, not found where decoded
                from cnn_ray.data.errors import InputNotVisibleError

                raise InputNotVisibleError(paths(int(missing[0][0])), missing[0][1])
            good = np.array([r is None for r in reasons], dtype=bool)
            bad += [{"path": paths(int(r)), "reason": why} for r, why in zip(rid, reasons) if why]
            if good.any():
                writer.write([paths(int(r)) for r in rid[good]], label[good], index[good], prob[good])
            images += int(good.sum())
            has = good & (label >= 0)
            labelled += int(has.sum())
            correct += int((index[has, 0] == label[has]).sum())
        ok = True
    finally:
        writer.close(ok)
    wall = time.perf_counter() - t0
    bad_list = out + ".bad_inputs.jsonl"
    atomic_write_text(bad_list, "".join(json.dumps(b) + "\n" for b in bad))
    device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
    im = load_inference_model(checkpoint, tta=cfg.eval.tta, device=device, threads=threads)
    forward = forward_images_per_sec(im, min(bs, max(images, 1)))
    s = PredictSummary(out=out, images=images, bad=len(bad), labelled=labelled,
                       top1=correct / labelled if labelled else None, wall_s=wall,
                       images_per_sec=images / wall if wall > 0 else 0.0, bad_list=bad_list)
    top1 = "n/a (no labels)" if s.top1 is None else f"{100 * s.top1:.2f}% on {labelled} labelled"
    print(f"predicted {images} images -> {out} ({len(bad)} bad, listed in {bad_list}); top1 {top1}; "
          f"{im.tta_views} TTA view(s), {im.weights} weights")
    print(f"images_per_sec {s.images_per_sec:.1f} (wall {wall:.1f} s from pipeline start, "
          f"{concurrency} actor(s) x {threads} threads, {'1 GPU each' if gpus else 'CPU'}); "
          f"pure forward of this network: {forward:.1f} images/s "
          f"(ratio {s.images_per_sec / forward:.2f})")
    if first_s is not None and images > first_n and wall > first_s:
        steady = (images - first_n) / (wall - first_s)
        print(f"first batch after {first_s:.1f} s (actor start-up, checkpoint load, Ray Data "
              f"start, one batch); after it {steady:.1f} images/s (ratio {steady / forward:.2f})")
    return 0
