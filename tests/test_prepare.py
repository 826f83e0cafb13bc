"""The prepare step on real CIFAR-10 JPEGs and on generated bad/odd inputs (shares one Ray session)."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cnn_ray.config import DataConfig
from cnn_ray.data.decode import BadInputError, decode_image
from cnn_ray.data.prepare import prepare_dataset
from cnn_ray.data.shards import load_prepared, read_shard_images
from cnn_ray.data.sources import SourceError


def _read_split(files):
    parts = [read_shard_images(pq.read_table(f)) for f in files]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


@pytest.fixture(scope="module")
def cifar_prepared(ray_session, cifar_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "cifar"
    cfg = DataConfig(train=str(cifar_small["train"]), val_fraction=0.1, shard_size=100)
    return cfg, prepare_dataset(cfg, str(out), seed=0)


@pytest.mark.ray
@pytest.mark.slow
def test_prepare_cifar_shards_and_metadata(cifar_prepared, cifar_small):
    cfg, data = cifar_prepared
    classes = sorted(p.name for p in cifar_small["train"].iterdir())
    assert data.class_names == classes and data.image_shape == (32, 32, 3)
    assert (data.num_train, data.num_val, data.bad_count) == (360, 40, 0)
    assert [pq.read_metadata(f).num_rows for f in data.train_files] == [100, 100, 100, 60]
    assert [os.path.basename(f) for f in data.train_files][0] == "part-00000.parquet"
    assert np.allclose(data.mean, [0.49, 0.48, 0.45], atol=0.04)
    assert np.allclose(data.std, [0.25, 0.24, 0.26], atol=0.04)

    schema = pq.read_schema(data.val_files[0])
    assert schema.field("image").type == pa.binary(32 * 32 * 3)
    assert schema.field("label").type == pa.int64() and schema.field("idx").type == pa.int64()
    meta = json.loads(schema.metadata[b"cnn_ray"])
    assert meta["split"] == "val" and meta["num_rows"] == 40 and meta["image_shape"] == [32, 32, 3]
    assert meta["mean"] == data.mean and meta["class_names"] == classes  # train stats everywhere

    with open(os.path.join(data.root, "prepared.json")) as f:
        summary = json.load(f)
    assert summary["counts"] == {"train": 360, "val": 40} and len(summary["fingerprint"]) == 64
    assert load_prepared(data.root) == data

    for files, n in ((data.train_files, 360), (data.val_files, 40)):
        _, labels, idx = _read_split(files)
        assert sorted(idx.tolist()) == list(range(n))  # unique, dense, per split
    _, val_labels, _ = _read_split(data.val_files)
    assert np.bincount(val_labels, minlength=10).tolist() == [4] * 10  # stratified
    _, train_labels, _ = _read_split(data.train_files[:1])
    assert len(set(train_labels.tolist())) == 10  # rows are shuffled: a shard holds every class


@pytest.mark.ray
@pytest.mark.slow
def test_read_shard_images_matches_pil(cifar_prepared, cifar_small):
    _, data = cifar_prepared
    images, labels, idx = _read_split(data.train_files + data.val_files)
    assert images.dtype == np.uint8 and images.shape == (400, 32, 32, 3)
    direct = {}
    for label, cls in enumerate(data.class_names):
        for f in sorted((cifar_small["train"] / cls).iterdir()):
            arr = np.asarray(Image.open(f).convert("RGB"))
            direct[arr.tobytes()] = label
    assert len(direct) == 400
    got = {img.tobytes(): int(lab) for img, lab in zip(images, labels)}
    assert got == direct  # every image decoded exactly once, pixel-identical, right label

    table = pq.read_table(data.train_files[0])
    imgs, _, all_idx = read_shard_images(table)
    buf = table.column("image").chunk(0).buffers()[1]
    assert imgs.__array_interface__["data"][0] == buf.address  # a view of the Arrow buffer
    sliced, _, sidx = read_shard_images(table.slice(10, 5), image_shape=data.image_shape)
    assert np.array_equal(sliced, imgs[10:15]) and np.array_equal(sidx, all_idx[10:15])


@pytest.mark.ray
@pytest.mark.slow
def test_second_run_is_noop_and_force_rebuilds(cifar_prepared, capsys):
    cfg, data = cifar_prepared
    mtimes = [os.stat(f).st_mtime_ns for f in data.train_files]
    again = prepare_dataset(cfg, data.root, seed=0)
    assert again == data and "skipping" in capsys.readouterr().out
    assert [os.stat(f).st_mtime_ns for f in data.train_files] == mtimes
    rebuilt = prepare_dataset(cfg, data.root, seed=0, force=True, progress=False)
    assert [os.stat(f).st_mtime_ns for f in rebuilt.train_files] != mtimes
    assert rebuilt.fingerprint == data.fingerprint and rebuilt.mean == data.mean
    assert not [p for p in os.listdir(os.path.dirname(data.root)) if ".tmp-" in p or ".old-" in p]


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def odd_folder(cifar_small, tmp_path_factory):
    """Two classes: 6 real CIFAR JPEGs + odd-mode images (usable) + 3 broken files."""
    root = tmp_path_factory.mktemp("odd") / "data"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for f in sorted((cifar_small["train"] / cls).iterdir())[:3]:
            shutil.copy(f, root / cls / f.name)
    good = Image.open(next((cifar_small["train"] / "cat").iterdir())).convert("RGB")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :16, 3] = 255  # left half opaque grey, right half transparent -> black
    gradient = np.linspace(0, 255, 6000, dtype=np.uint8)[None, :, None].repeat(4000, 0).repeat(3, 2)
    files = {
        "cat/truncated.jpg": _jpeg(good.resize((64, 64)))[:300],
        "cat/empty.jpg": b"",
        "dog/text.jpg": b"this is not an image\n",
        "cat/cmyk.jpg": _jpeg(good.convert("CMYK")),
        "dog/deep16.png": _png(Image.fromarray(np.full((40, 40), 40000, np.uint16))),
        "dog/alpha.png": _png(Image.fromarray(rgba, "RGBA")),
        "dog/gray.png": _png(good.convert("L")),
        "cat/huge.jpg": _jpeg(Image.fromarray(gradient), quality=70),
    }
    for rel, blob in files.items():
        (root / rel).write_bytes(blob)
    return root


@pytest.mark.ray
@pytest.mark.slow
def test_bad_inputs_skip_and_odd_modes(ray_session, odd_folder, tmp_path):
    cfg = DataConfig(train=str(odd_folder), val_fraction=0.2, shard_size=8, bad_input="skip",
                     max_bad_fraction=1.0)
    data = prepare_dataset(cfg, str(tmp_path / "out"), progress=False)
    assert data.bad_count == 3 and data.num_train + data.num_val == 6 + 5
    bad = [json.loads(line) for line in open(tmp_path / "out" / "bad_inputs.jsonl")]
    reasons = {os.path.basename(b["path"]): b["reason"] for b in bad}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "text.jpg"}
    assert "truncated" in reasons["truncated.jpg"] and "0 bytes" in reasons["empty.jpg"]
    assert "not an image" in reasons["text.jpg"] and {b["split"] for b in bad} == {"train"}
    with pytest.raises(BadInputError, match=r"\.jpg: "):  # up to date, but fail still fails
        prepare_dataset(cfg.model_copy(update={"bad_input": "fail"}), data.root, progress=False)

    # odd modes were converted, not skipped: look for their signature pixels
    images, _, _ = _read_split(data.train_files + data.val_files)
    flat = images.reshape(len(images), -1, 3)
    assert any((f == 156).all() for f in flat)  # 16-bit 40000 -> 156 (scaled by 255/65535, not clipped)
    alpha = [img for img in images if (img[:, :16] == 200).all()]
    assert len(alpha) == 1 and (alpha[0][:, 16:] == 0).all()  # transparent -> black
    assert any((img[..., 0] == img[..., 1]).all() and img.std() > 5 for img in images)  # grayscale
    big = decode_image((odd_folder / "cat" / "huge.jpg").read_bytes(), size=32)
    assert any(np.array_equal(img, big) for img in images)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("data", [{"cache": "memory"}, {"use_raw": True, "data_cpus": 0.5}],
                         ids=["prepared", "use_raw"])
def test_training_over_bad_inputs_counts_and_lists_them(ray_session, odd_folder, tmp_path, data):
    """Bad files never reach (or stop) training: the run finishes, every epoch's metrics count
    the left-out records, and the run directory lists them with their reasons - also when
    training decodes the raw files every epoch (each file listed once, not once per epoch)."""
    from cnn_ray.config import TrainConfig
    from cnn_ray.train.launch import run_training

    cfg = TrainConfig.from_dict({
        "data": {"train": str(odd_folder), "val_fraction": 0.2, "shard_size": 8,
                 "prepared_dir": str(tmp_path / "prepared"), "max_bad_fraction": 1.0, **data},
        "model": {"name": "simple_cnn"}, "optim": {"batch_size": 4, "epochs": 2},
        "precision": {"dtype": "fp32"}, "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "run": {"name": "dirty", "storage_path": str(tmp_path / "runs")},
    })
    result = run_training(cfg)
    assert result.metrics["epoch"] == 2 and result.metrics["bad_inputs"] == 3
    listed = [json.loads(line) for line in open(tmp_path / "runs" / "dirty" / "bad_inputs.jsonl")]
    assert sorted(os.path.basename(b["path"]) for b in listed) == ["empty.jpg", "text.jpg",
                                                                  "truncated.jpg"]
    assert all(b["reason"] and b["split"] in ("train", "val") for b in listed)


@pytest.mark.ray
@pytest.mark.slow
def test_bad_inputs_fail_names_file(ray_session, odd_folder, tmp_path):
    cfg = DataConfig(train=str(odd_folder), shard_size=8, bad_input="fail")
    with pytest.raises(BadInputError, match=r"(truncated|empty|text)\.jpg: "):
        prepare_dataset(cfg, str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written left behind
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@pytest.mark.ray
@pytest.mark.slow
def test_manifest_bad_records_and_explicit_val(ray_session, cifar_small, tmp_path):
    train_dir = cifar_small["train"]
    rows = ["path,label"]
    for cls in ("cat", "dog", "ship"):
        rows += [f"{f},{cls}" for f in sorted((train_dir / cls).iterdir())[:5]]
    rows += [f"{train_dir}/cat/missing.jpg,cat", f"{sorted((train_dir / 'cat').iterdir())[0]},unicorn"]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = DataConfig(train=str(tmp_path / "train.csv"), val=str(cifar_small["test"]),
                     shard_size=100, image_size=16, max_bad_fraction=1.0)
    data = prepare_dataset(cfg, str(tmp_path / "out"), progress=False)
    assert data.class_names == ["cat", "dog", "ship", "unicorn"]  # sorted unique names
    # "unicorn" is a class of its own (names come from the labels); the missing file is bad,
    # and so are the val images of the 7 classes the training manifest does not have
    assert data.num_train == 16 and data.bad_count == 1 + 70
    assert data.image_shape == (16, 16, 3)
    bad = [json.loads(line) for line in open(tmp_path / "out" / "bad_inputs.jsonl")]
    assert any("missing.jpg" in b["path"] and "file not found" in b["reason"] for b in bad)
    assert sum(b["split"] == "val" for b in bad) == 70 and data.num_val == 30


@pytest.mark.ray
def test_parquet_arrays_keep_channels(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    n, h, w, c = 30, 12, 12, 4
    pix = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    pix[:, :, :, 3] = 77  # a constant plane stays constant through the resize
    table = pa.table({"image": pa.array([p.tobytes() for p in pix], pa.binary(h * w * c)),
                      "label": pa.array(np.arange(n) % 3, pa.int64())})
    meta = {b"cnn_ray": json.dumps({"image_shape": [h, w, c], "class_names": ["a", "b", "c"]}).encode()}
    (tmp_path / "in").mkdir()
    pq.write_table(table.slice(0, 20).replace_schema_metadata(meta), tmp_path / "in" / "p0.parquet")
    pq.write_table(table.slice(20).replace_schema_metadata(meta), tmp_path / "in" / "p1.parquet")

    cfg = DataConfig(train=str(tmp_path / "in"), image_size=12, channels=4, val_fraction=0.2)
    data = prepare_dataset(cfg, str(tmp_path / "same"), progress=False)
    assert data.image_shape == (12, 12, 4) and data.class_names == ["a", "b", "c"]
    images, labels, _ = _read_split(data.train_files + data.val_files)
    assert (data.num_train, data.num_val) == (24, 6)
    by_bytes = {p.tobytes(): i % 3 for i, p in enumerate(pix)}
    assert all(by_bytes[img.tobytes()] == lab for img, lab in zip(images, labels))  # unchanged
    assert data.mean[3] == pytest.approx(77 / 255)

    cfg8 = cfg.model_copy(update={"image_size": 8})
    small = prepare_dataset(cfg8, str(tmp_path / "small"), progress=False)
    images, _, _ = _read_split(small.train_files)
    assert images.shape[1:] == (8, 8, 4) and (images[..., 3] == 77).all()

    with pytest.raises(SourceError, match="4 channels but data.channels is 3"):
        prepare_dataset(cfg.model_copy(update={"channels": 3}), str(tmp_path / "x"), progress=False)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_prepare_while_other_work_holds_cpus(ray_session, odd_folder, tmp_path):
    """Decode tasks reserve 0.25 CPU: prepare still runs when only half a CPU is free."""
    hog = ray_session.remote(num_cpus=3.5)(type("Hog", (), {"ping": lambda self: 1})).remote()
    try:
        ray_session.get(hog.ping.remote())
        cfg = DataConfig(train=str(odd_folder), image_size=8, max_bad_fraction=1.0)
        data = prepare_dataset(cfg, str(tmp_path / "out"), progress=False)
        assert data.num_train + data.num_val == 11
    finally:
        ray_session.kill(hog)


def test_decode_image_guards(monkeypatch):
    ok = _png(Image.new("RGB", (40, 40), (1, 2, 3)))
    assert decode_image(ok, size=None).shape == (40, 40, 3)
    assert decode_image(ok, size=16, channels=1).shape == (16, 16, 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: over the limit -> bad input
    with pytest.raises(BadInputError, match=r"big\.png: image too large"):
        decode_image(ok, size=16, path="big.png")


def test_decode_block_marks_bad_files_and_fail_raises(tmp_path):
    """The decode task of prepare and of the raw path: a bad file gets a zero image and a
    reason; the raw path's ``fail`` policy then raises naming it."""
    from cnn_ray.config import AugmentConfig
    from cnn_ray.data.pipeline import _RawBatches
    from cnn_ray.data.decode_tasks import decode_block

    ok = _png(Image.new("RGB", (8, 8), (9, 9, 9)))
    for name, blob in (("a.png", ok), ("b.png", b""), ("c.png", ok)):
        (tmp_path / name).write_bytes(blob)
    batch = pa.table({"path": [str(tmp_path / n) for n in ("a.png", "b.png", "c.png")],
                      "label": [0, 1, 0], "rid": [0, 1, 2]})
    (out,) = decode_block(batch, rows_per_block=16, size=4, channels=3, encoding="file",
                          src_shape=None)
    images, labels, _ = read_shard_images(out.rename_columns(
        ["idx" if c == "rid" else c for c in out.column_names]), (4, 4, 3))
    assert labels.tolist() == [0, 1, 0] and (images[[0, 2]] == 9).all() and (images[1] == 0).all()
    assert out.column("reason").to_pylist() == [None, "empty file (0 bytes)", None]
    assert out.column("path").to_pylist() == [None, str(tmp_path / "b.png"), None]
    with pytest.raises(BadInputError, match=r"b\.png: empty file"):
        _RawBatches(AugmentConfig(), image_shape=(4, 4, 3), seed=0, train=False, policy="fail")(out)


@pytest.mark.ray
@pytest.mark.slow
def test_many_tiny_shards_all_get_metadata(ray_session, odd_folder, tmp_path, monkeypatch):
    import cnn_ray.data.shards as shards_mod

    monkeypatch.setattr(shards_mod, "_MAX_OPEN_SHARDS", 2)  # force the close-early + rewrite path
    cfg = DataConfig(train=str(odd_folder), image_size=8, shard_size=2, val_fraction=0.2,
                     max_bad_fraction=1.0)
    data = prepare_dataset(cfg, str(tmp_path / "out"), progress=False)
    assert len(data.train_files) == (data.num_train + 1) // 2
    for f in data.train_files + data.val_files:
        meta = json.loads(pq.read_schema(f).metadata[b"cnn_ray"])
        assert meta["mean"] == data.mean and meta["num_rows"] == pq.read_metadata(f).num_rows
    _, _, idx = _read_split(data.train_files)
    assert idx.tolist() == list(range(data.num_train))  # written in order across shards
