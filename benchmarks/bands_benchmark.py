"""Multi-band data with and without PCA: the same recipe on all bands and on k components.

    python benchmarks/bands_benchmark.py                          # 32 bands vs PCA-4, 10 epochs
    python benchmarks/bands_benchmark.py --per-class 1000 --val-per-class 200 --epochs 10 \\
        --bands 32 --components 4 --json results/bands.json
    python benchmarks/bands_benchmark.py --smoke                  # a minute: 30/10 per class, 1 epoch

Builds a hyperspectral-style tile set offline (:func:`cnn_ray.datasets.write_hyperspectral`):
a seeded subset of the CIFAR-10 JPEGs (``--per-class`` training images per class from the
training split, ``--val-per-class`` from the test split) expanded to ``--bands`` uint16 bands
by a fixed random positive mixing of R, G, B plus per-band offsets and Gaussian noise, stored
as ``.npy`` tiles in class folders under ``--work``. Then trains ``--config`` (the fast recipe,
colour jitter off) through the real job path (:func:`cnn_ray.train.launch.run_training`:
prepare step, Ray Train) twice with the same seed and epochs: on all bands
(``data.channels=<bands>``, each band scaled to 8 bits) and with ``data.pca.components=<k>``.

Prints, per variant: validation top-1 per epoch and at the end, the stored input bytes per
image (prepared shards), the prepare time and the median training seconds per epoch; then the
differences, the machine and its pure-compute images/s for the recipe's network on each input
band count (:func:`cnn_ray.benchmark.synthetic_images_per_sec`, measured in this process one
after the other). Targets (issue 14): PCA top-1 within 1 point of all bands, >= 3x fewer input
bytes per image, faster epochs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "jobs" / "configs" / "cifar10.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the recipe (YAML)")
    p.add_argument("--per-class", type=int, default=1000, help="training images per class")
    p.add_argument("--val-per-class", type=int, default=200, help="validation images per class")
    p.add_argument("--bands", type=int, default=32, help="bands per tile (2..64)")
    p.add_argument("--components", type=int, default=4, help="PCA components kept")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(Path.home() / ".cache" / "cnn_ray" / "bands"),
                   help="where the tiles, prepared data and runs go (not in git)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="recipe overrides")
    p.add_argument("--compute-steps", type=int, default=5,
                   help="timed steps of each pure-compute images/s (0: skip)")
    p.add_argument("--smoke", action="store_true", help="30/10 images per class, 1 epoch")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def build_tiles(work: Path, per_class: int, val_per_class: int, bands: int, seed: int,
                log=print) -> dict[str, Path]:
    """The tile set (made once per settings; a ``.complete`` marker is written last)."""
    import numpy as np

    from cnn_ray.datasets import CIFAR10_CLASSES, cifar10_arrays, write_hyperspectral

    root = work / f"tiles-{bands}b-{per_class}pc-{val_per_class}v-seed{seed}"
    if (root / ".complete").exists():
        return {"train": root / "train", "val": root / "val"}
    t0 = time.perf_counter()
    for split, src, n in (("train", "train", per_class), ("val", "test", val_per_class)):
        x, y = cifar10_arrays(src)
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        pick = np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False)
                               for c in range(len(CIFAR10_CLASSES))])
        write_hyperspectral(x[pick], y[pick], root / split, bands=bands, seed=seed)
    (root / ".complete").touch()
    log(f"[bands] wrote {10 * (per_class + val_per_class)} tiles of {bands} uint16 bands to "
        f"{root} in {time.perf_counter() - t0:.0f} s")
    return {"train": root / "train", "val": root / "val"}


def run_variant(name: str, base: list[str], extra: list[str], args, log=print) -> dict:
    """Prepare + train one variant through the job path; its figures from metrics.jsonl."""
    import pyarrow.parquet as pq

    from cnn_ray.config_io import load_train_config
    from cnn_ray.io import read_jsonl_at
    from cnn_ray.data.prepare import prepare_data
    from cnn_ray.runs import run_dir
    from cnn_ray.train.launch import run_training

    cfg = load_train_config(args.config, base + extra + [f"run.name=bands_{name}"])
    t0 = time.perf_counter()
    prepared = prepare_data(cfg, force=True)
    prepare_s = time.perf_counter() - t0
    run_training(cfg, prepared=prepared)
    rows = read_jsonl_at(run_dir(cfg), "metrics.jsonl")
    stored = pq.read_schema(prepared.train_files[0]).field("image").type.byte_width
    out = {"variant": name, "overrides": extra, "val_top1": rows[-1]["val_top1"],
           "curve": [round(r["val_top1"], 4) for r in rows], "stored_bytes_per_image": stored,
           "prepare_s": round(prepare_s, 1),
           "epoch_s_median": round(statistics.median(r["epoch_s"] for r in rows), 2),
           "images_per_sec_median": round(statistics.median(r["images_per_sec"] for r in rows)),
           "bands": prepared.bands and {k: prepared.bands[k] for k in
                                        ("in_bands", "out_bands", "source_dtype")},
           "explained_variance": (sum(prepared.bands["explained_variance_ratio"])
                                  if prepared.bands and prepared.bands.get("explained_variance_ratio")
                                  else None)}
    log(f"[bands] {name}: val top-1 {out['val_top1']:.4f} (curve {out['curve']}), stored "
        f"{stored} bytes/image, prepare {prepare_s:.0f} s, epoch {out['epoch_s_median']} s median")
    return out


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.smoke:
        args.per_class, args.val_per_class, args.epochs = 30, 10, 1
    if not 2 <= args.bands <= 64 or not 1 <= args.components <= args.bands:
        print(f"error: --bands must be in [2, 64] and --components in [1, --bands], got "
              f"{args.bands} and {args.components}", file=sys.stderr)
        return 2
    import ray

    from cnn_ray.benchmark import hardware_summary, synthetic_images_per_sec
    from cnn_ray.config import ConfigError
    from cnn_ray.config_io import load_train_config

    work = Path(args.work).expanduser()
    tiles = build_tiles(work, args.per_class, args.val_per_class, args.bands, args.seed)
    base = [f"data.train={tiles['train']}", f"data.val={tiles['val']}",
            f"data.channels={args.bands}", "augment.color_jitter.enabled=false",
            f"optim.epochs={args.epochs}", f"run.seed={args.seed}",
            f"run.storage_path={work / 'runs'}", f"data.shard_size={10 * args.per_class}",
            *args.set]
    if args.smoke:
        base += ["optim.batch_size=64", "model.whitening.samples=200"]
    variants = [("all_bands", []), (f"pca{args.components}",
                                    [f"data.pca.components={args.components}"])]
    try:
        for _, extra in variants:  # validate both before any work
            load_train_config(args.config, base + extra)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ray.init()
    results = [run_variant(name, base, extra, args) for name, extra in variants]
    full, pca = results
    compute = {}
    if args.compute_steps:
        for r in results:
            cfg = load_train_config(args.config, base + r["overrides"])
            c = r["bands"]["out_bands"] if r["bands"] else args.bands
            compute[r["variant"]] = round(synthetic_images_per_sec(
                cfg.model_copy(update={"data": cfg.data.model_copy(update={"channels": c})}),
                10, steps=args.compute_steps))
    doc = {"results": results, "machine": hardware_summary(), "pure_compute_images_per_sec": compute,
           "settings": {k: getattr(args, k) for k in ("per_class", "val_per_class", "bands",
                                                       "components", "epochs", "seed", "set")},
           "top1_difference_points": round(100 * (pca["val_top1"] - full["val_top1"]), 2),
           "bytes_ratio": round(full["stored_bytes_per_image"] / pca["stored_bytes_per_image"], 2),
           "raw_bytes_per_image": 32 * 32 * args.bands * 2,
           "epoch_time_ratio": round(full["epoch_s_median"] / pca["epoch_s_median"], 2)}
    print(f"| variant | val top-1 | stored bytes/image | prepare s | epoch s (median) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {100 * r['val_top1']:.2f}% | {r['stored_bytes_per_image']} | "
              f"{r['prepare_s']} | {r['epoch_s_median']} |")
    print(f"PCA-{args.components} minus all bands: {doc['top1_difference_points']:+.2f} points; "
          f"{doc['bytes_ratio']}x fewer stored bytes per image ({doc['raw_bytes_per_image']} raw "
          f"uint16 bytes); epochs {doc['epoch_time_ratio']}x faster; "
          f"explained variance {pca['explained_variance']:.4f}")
    print(f"machine: {doc['machine']}; pure-compute images/s {compute}; "
          f"{args.per_class}/{args.val_per_class} per class, {args.epochs} epochs, seed {args.seed}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
