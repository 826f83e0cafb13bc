"""Multi-band tiles: reading .npy/.npz/TIFF, the band transform (scaling + PCA), its config
errors, and one end-to-end run (prepare with PCA, train, predict, evaluate, export)."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.data.bands import BandTransform, fit_band_transform, read_array
from cnn_ray.data.decode import BadInputError
from cnn_ray.datasets import write_hyperspectral

CLASSES = ("a", "b", "c")


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _tiles(n: int = 8, side: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_read_array_layouts_and_errors(tmp_path):
    hwc = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    assert np.array_equal(read_array(_npy(hwc), "t.npy", 6), hwc)
    chw = np.ascontiguousarray(np.moveaxis(hwc, 2, 0))  # band-first, as GeoTIFF readers give it
    assert np.array_equal(read_array(_npy(chw), "t.npy", 6), hwc)
    assert read_array(_npy(hwc[:, :, 0].astype(np.float32)), "t.npy", 1).shape == (4, 5, 1)
    buf = io.BytesIO()
    np.savez(buf, image=hwc, other=np.zeros(3))
    assert np.array_equal(read_array(buf.getvalue(), "t.npz", 6), hwc)
    buf = io.BytesIO()
    np.savez(buf, x=hwc, y=hwc)
    with pytest.raises(BadInputError, match="none is named 'image'"):
        read_array(buf.getvalue(), "two.npz", 6)
    with pytest.raises(BadInputError, match=r"has 6 bands, expected 32 \(data.channels\)"):
        read_array(_npy(hwc), "six.npy", 32)
    with pytest.raises(BadInputError, match="not a real number type"):
        read_array(_npy(np.zeros((4, 4, 6), bool)), "b.npy", 6)
    with pytest.raises(BadInputError, match="cannot read array"):
        read_array(b"not an npy file", "junk.npy", 6)
    with pytest.raises(BadInputError, match="empty file"):
        read_array(b"", "e.npy", 6)
    import tifffile  # the geo extra (in dev): band-first multi-band GeoTIFF-style pages

    tif = io.BytesIO()
    tifffile.imwrite(tif, chw, photometric="minisblack", planarconfig="separate")
    assert np.array_equal(read_array(tif.getvalue(), "t.tif", 6), hwc)


def test_band_transform_scaling_pca_and_round_trip():
    rng = np.random.default_rng(1)
    # 32 correlated bands from 3 latent channels plus a little noise: PCA finds 3 components
    latent = rng.uniform(0, 1, (4000, 3))
    mix = rng.uniform(0.2, 1.0, (32, 3))
    raw = np.clip(latent @ mix.T * 20000 + rng.normal(0, 100, (4000, 32)), 0, 65535).astype(np.uint16)
    plain = fit_band_transform(raw, "uint16")
    assert plain.out_bands == 32 and plain.components is None and plain.explained_variance == 1.0
    out = plain.apply(raw.reshape(40, 100, 32))
    assert out.dtype == np.uint8 and out.shape == (40, 100, 32)
    assert 0.0 < (out == 255).mean() < 0.01  # the 99.9th percentile saturates ~0.1% per band
    pca = fit_band_transform(raw, "uint16", explained_variance=0.99)
    assert pca.out_bands == 3 and pca.explained_variance >= 0.99
    three = fit_band_transform(raw, "uint16", components=3)
    assert np.allclose(pca.components, three.components)
    tile = raw[:256].reshape(16, 16, 32)
    z = pca.apply(tile)
    assert z.shape == (16, 16, 3) and z.dtype == np.uint8
    again = BandTransform.from_dict(json.loads(json.dumps(pca.to_dict())))
    assert np.array_equal(again.apply(tile), z)
    # the stored components keep the pixels apart: reconstruction from 3 bytes per pixel
    scaled = (tile.reshape(-1, 32) - pca.lo) / (pca.hi - pca.lo)
    back = (z.reshape(-1, 3) / 255.0 * (pca.out_hi - pca.out_lo) + pca.out_lo) @ pca.components
    assert np.abs(back + pca.pca_mean - scaled).mean() < 0.02
    # uint8 tiles keep their values when not reduced
    u8 = rng.integers(0, 256, (8, 8, 5), dtype=np.uint8)
    assert np.array_equal(fit_band_transform(u8.reshape(-1, 5), "uint8").apply(u8), u8)
    with pytest.raises(ValueError, match="tiles have 32 bands"):
        fit_band_transform(raw, "uint16", components=40)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_band_transform(np.array([[np.nan], [1.0]]), "float32")
    with pytest.raises(ValueError, match="shape 16, 16, 32|expects 32 bands"):
        pca.apply(np.zeros((16, 16, 31)))


@pytest.mark.parametrize("data, augment, match", [
    ({"pca": {"components": 3, "explained_variance": 0.9}}, {}, "exactly one of components"),
    ({"pca": {}}, {}, "exactly one of components"),
    ({"channels": 32}, {"color_jitter": {"enabled": True}},
     "color_jitter.enabled=true is defined for 3-band RGB"),
    ({"channels": 32, "pca": {"components": 4}}, {"color_jitter": {"enabled": True}},
     "stored images have 4 bands"),
    ({"channels": 32, "use_raw": True}, {}, "needs data.use_raw=false"),
])
def test_band_config_errors(data, augment, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict({"data": {"train": "x", **data}, "augment": augment},
                              check_paths=False)
    # RGB with PCA to 3 components may jitter colours (stored bands: 3)
    TrainConfig.from_dict({"data": {"train": "x", "pca": {"components": 3}},
                           "augment": {"color_jitter": {"enabled": True}}}, check_paths=False)


def test_write_hyperspectral_tiles(tmp_path):
    images = _tiles(6)
    out = write_hyperspectral(images, np.arange(6) % 3, tmp_path / "hs", bands=8, class_names=CLASSES)
    files = sorted(out.rglob("*.npy"))
    assert [f.parent.name for f in files] == ["a", "a", "b", "b", "c", "c"]
    tile = np.load(files[0])
    assert tile.shape == (16, 16, 8) and tile.dtype == np.uint16
    # the bands are strongly correlated (mixes of R, G, B): the first PCA component dominates
    t = fit_band_transform(tile.reshape(-1, 8), "uint16", components=3)
    assert t.explained_variance > 0.9


@pytest.mark.ray
@pytest.mark.slow
def test_multiband_pca_end_to_end(ray_session, tmp_path, capsys):
    """32-band uint16 tiles with PCA to 4 components: prepare (one bad tile listed), train one
    epoch, then predict / evaluate / export apply the checkpoint's transform to raw tiles."""
    from cnn_ray.cli import main
    from cnn_ray.train.checkpoint import read_meta
    from cnn_ray.train.launch import run_training

    rng = np.random.default_rng(0)
    labels = np.arange(48) % 3
    images = _tiles(48)
    images[:, :, :, 0] = np.where(labels[:, None, None] == 0, 230, images[:, :, :, 0])  # learnable
    root = write_hyperspectral(images, labels, tmp_path / "tiles", class_names=CLASSES)
    np.save(root / "a" / "wrong.npy", rng.integers(0, 9, (16, 16, 31), dtype=np.uint16))
    cfg = TrainConfig.from_dict({
        "data": {"train": str(root), "channels": 32, "image_size": 16, "pca": {"components": 4},
                 "max_bad_fraction": 0.1, "cache": "memory", "shard_size": 20},
        "model": {"name": "simple_cnn"},
        "optim": {"batch_size": 16, "epochs": 1, "lr": 0.05},
        "precision": {"dtype": "fp32"},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1},
        "run": {"name": "bands", "storage_path": str(tmp_path / "runs")},
    })
    result = run_training(cfg)
    printed = "".join(capsys.readouterr())
    assert "32 x uint16 -> 4 PCA components" in printed and "(16.0x fewer)" in printed
    assert "1 of 49 train inputs" in printed  # the 31-band tile: a warning, below the limit
    meta = read_meta(result.checkpoint.path)
    assert meta["bands"]["out_bands"] == 4 and len(meta["mean"]) == 4
    prepared = next((tmp_path / "runs" / "prepared").iterdir())
    shard = pq.read_table(next((prepared / "train").glob("*.parquet")))
    assert shard.column("image").type.byte_width == 16 * 16 * 4
    bad = [json.loads(line) for line in open(prepared / "bad_inputs.jsonl")]
    assert [b["path"].endswith("wrong.npy") and "31 bands, expected 32" in b["reason"] for b in bad] == [True]

    out = tmp_path / "pred.parquet"
    assert main(["predict", "--checkpoint", result.checkpoint.path, "--data", str(root),
                 "--out", str(out)]) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 48  # every good tile, through the checkpoint's transform
    assert main(["evaluate", "--config", str(tmp_path / "runs" / "bands" / "config.yaml"),
                 "--checkpoint", result.checkpoint.path, "--data", str(root),
                 "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    top1 = np.mean([r["pred_index"] == r["label"] for r in rows])
    assert f"top1 {100 * top1:.2f}% on 48 images" in printed
    assert main(["export", "--checkpoint", result.checkpoint.path, "--format", "torchscript",
                 "--out", str(tmp_path / "export")]) == 0
    contract = json.loads(next((tmp_path / "export").glob("*.json")).read_text())
    assert contract["input"]["channels"] == 4 and contract["bands"]["out_bands"] == 4
    again = BandTransform.from_dict(contract["bands"])
    tile = np.load(next((root / "b").glob("*.npy")))
    assert again.apply(tile).shape == (16, 16, 4)


@pytest.mark.ray
def test_parquet_tensors_of_uint16_and_float32(ray_session, tmp_path):
    """Raw-array Parquet of 32 uint16 bands (PCA to 3) and of float32 bands (8-bit scaling)."""
    import pyarrow as pa

    from cnn_ray.data.prepare import prepare_dataset
    from cnn_ray.data.shards import read_shard_images

    images, labels = _tiles(40), np.arange(40) % 2
    root = write_hyperspectral(images, labels, tmp_path / "hs", class_names=("a", "b"))
    tiles = np.stack([np.load(f) for f in sorted(root.rglob("*.npy"))])  # (40, 16, 16, 32) uint16
    ys = np.array([0 if f.parent.name == "a" else 1 for f in sorted(root.rglob("*.npy"))])
    for dtype, pca, out_bands in (("uint16", {"components": 3}, 3), ("float32", None, 32)):
        values = tiles.astype(dtype) / (65535.0 if dtype == "float32" else 1)
        flat = pa.array(values.astype(dtype).reshape(-1))
        col = pa.FixedSizeListArray.from_arrays(flat, 16 * 16 * 32)
        table = pa.table({"image": col, "label": pa.array(ys)}).replace_schema_metadata(
            {"cnn_ray": json.dumps({"image_shape": [16, 16, 32], "class_names": ["a", "b"]})})
        (tmp_path / dtype).mkdir()
        pq.write_table(table, tmp_path / dtype / "part-0.parquet", row_group_size=16)
        cfg = TrainConfig.from_dict({"data": {"train": str(tmp_path / dtype), "channels": 32,
                                              "image_size": 16, **({"pca": pca} if pca else {})}})
        data = prepare_dataset(cfg.data, str(tmp_path / f"prep-{dtype}"), progress=False)
        assert data.image_shape == (16, 16, out_bands) and data.num_train + data.num_val == 40
        assert data.bands["source_dtype"] == dtype and data.bands["out_bands"] == out_bands
        stored, _, _ = read_shard_images(pq.read_table(data.train_files[0]))
        assert stored.dtype == np.uint8 and stored.shape[1:] == (16, 16, out_bands)
        assert stored.std() > 10  # the 8-bit range is used, not a constant
