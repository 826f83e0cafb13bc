"""Input discovery (folder / manifest / parquet / auto) and the seeded stratified split. No Ray."""

from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cnn_ray.data.sources import (ManifestSpec, Record, SourceError, detect_format, discover,
                                  split_holdout)
from cnn_ray.testing import write_id_manifest


def _png(color=(10, 20, 30), size=(6, 5)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    """zebra/ (2 images + junk), apple/ (1 image, nested), empty/ (nothing usable), .hidden/."""
    root = tmp_path / "imgs"
    for rel in ("zebra/b.PNG", "zebra/a.jpg", "apple/sub/x.png", ".hidden/h.png", "zebra/.secret.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png())
    (root / "zebra" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    (root / "empty" / "readme.md").write_text("no images here")
    return root


def test_folder_sorted_classes_and_records(folder, caplog):
    with caplog.at_level(logging.WARNING):
        src = discover(str(folder), "folder")
    assert src.kind == "folder"
    assert src.class_names == ["apple", "empty", "zebra"]  # sorted, empty class kept
    got = [(r.path.split("imgs/")[1], r.label, r.row) for r in src.records]
    assert got == [("apple/sub/x.png", 0, 0), ("zebra/a.jpg", 2, 1), ("zebra/b.PNG", 2, 2)]
    assert [p["row"] for p in src.problems] == [None]
    assert "empty class folder" in src.problems[0]["reason"] and src.problems[0]["path"].endswith("empty")
    assert "empty class folder" in caplog.text
    assert src.num_rows == 3 and list(src.labels()) == [0, 2, 2]


def test_folder_with_given_class_names_reports_unknown_folder(folder):
    src = discover(str(folder), "folder", class_names=["zebra", "apple"])
    assert [(r.label, r.path.endswith(("a.jpg", "b.PNG", "x.png"))) for r in src.records] == [
        (1, True), (0, True), (0, True)]
    # "empty" is not a known class, but it has no files either: only the empty-folder note
    assert all(p["row"] is None for p in src.problems)


def test_listing_digest_tracks_file_changes(folder):
    d1 = discover(str(folder)).listing_digest
    assert discover(str(folder)).listing_digest == d1
    (folder / "apple" / "new.png").write_bytes(_png())
    assert discover(str(folder)).listing_digest != d1


def test_manifest_with_names_bad_rows_reported(tmp_path):
    (tmp_path / "img").mkdir()
    for n in ("a.png", "b.png", "c.png"):
        (tmp_path / "img" / n).write_bytes(_png())
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\nimg/a.png,dog\nimg/missing.png,cat\nimg/b.png,cat\n"
                   f"{tmp_path / 'img' / 'c.png'},dog\nimg/a.png,\n")
    src = discover(str(csv))
    assert src.kind == "manifest" and src.class_names == ["cat", "dog"]
    assert [(r.path, r.label, r.row) for r in src.records] == [
        (str(tmp_path / "img" / "a.png"), 1, 0), (str(tmp_path / "img" / "b.png"), 0, 2),
        (str(tmp_path / "img" / "c.png"), 1, 3)]
    bad = {p["row"]: p for p in src.problems}
    assert set(bad) == {1, 4}
    assert "file not found" in bad[1]["reason"] and bad[1]["path"].endswith("missing.png")
    assert "empty label" in bad[4]["reason"]

    # with the class list fixed (e.g. from the training set) an unseen name is a bad record
    src = discover(str(csv), class_names=["dog", "cow"])
    assert [r.row for r in src.records] == [0, 3]
    assert "unknown label 'cat'" in {p["row"]: p for p in src.problems}[2]["reason"]


def test_manifest_with_indices_and_parquet_manifest(tmp_path):
    for n in ("a.png", "b.png"):
        (tmp_path / n).write_bytes(_png())
    man = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a.png", "b.png", "a.png"], "label": [2, 0, 7]}), man)
    assert detect_format(str(man)) == "manifest"
    src = discover(str(man), class_names=["x", "y", "z"])
    assert [(r.label, r.row) for r in src.records] == [(2, 0), (0, 1)]
    assert "out of range" in src.problems[0]["reason"] and src.problems[0]["row"] == 2
    # integer labels without names: classes "0".."max"
    assert discover(str(man)).class_names == [str(i) for i in range(8)]


def test_manifest_missing_columns(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("file,cls\na.png,1\n")
    with pytest.raises(SourceError, match=r"bad\.csv: manifest has no column 'path', 'label'.*"
                       r"its columns are \['file', 'cls'\].*data\.path_column"):
        discover(str(csv))


def test_manifest_columns_and_path_template_id_breed(tmp_path):
    """Kaggle-style labels.csv (id,breed; images/<id>.jpg): two settings, no conversion."""
    csv = write_id_manifest(tmp_path)
    spec = ManifestSpec(label_column="breed", path_template="images/{id}.jpg")
    src = discover(str(csv), manifest=spec)
    assert src.kind == "manifest" and src.class_names == ["beagle", "pug"] and not src.problems
    assert [os.path.basename(r.path) for r in src.records][:2] == ["0000.jpg", "0001.jpg"]
    assert all(os.path.isfile(r.path) for r in src.records) and len(src.records) == 8
    # without the settings: one message naming the file, the columns found and the keys to set
    with pytest.raises(SourceError, match=r"labels\.csv: .*'path', 'label'.*\['id', 'breed'\]"):
        discover(str(csv))
    with pytest.raises(SourceError, match=r"path_template 'images/\{name\}\.jpg' names"):
        discover(str(csv), manifest=ManifestSpec(label_column="breed",
                                                 path_template="images/{name}.jpg"))


@pytest.mark.parametrize("ext", ["tsv", "jsonl", "parquet"])
def test_manifest_formats_and_custom_columns(tmp_path, ext):
    for n in ("a.png", "b.png"):
        (tmp_path / n).write_bytes(_png())
    rows = [("a.png", "x"), ("b.png", "y"), ("gone.png", "x")]
    man = tmp_path / f"m.{ext}"
    if ext == "tsv":
        man.write_text("file\tcls\n" + "".join(f"{p}\t{c}\n" for p, c in rows))
    elif ext == "jsonl":
        man.write_text("".join(json.dumps({"file": p, "cls": c}) + "\n" for p, c in rows))
    else:
        pq.write_table(pa.table({"file": [p for p, _ in rows], "cls": [c for _, c in rows]}), man)
    spec = ManifestSpec(path_column="file", label_column="cls")
    assert detect_format(str(man), spec) == "manifest"
    src = discover(str(man), manifest=spec)
    assert [(os.path.basename(r.path), r.label) for r in src.records] == [("a.png", 0), ("b.png", 1)]
    (bad,) = src.problems
    assert bad["kind"] == "missing" and bad["row"] == 2 and bad["path"].endswith("gone.png")


def test_bad_records_tell_missing_from_bad_labels(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\na.png,x\nnope.png,x\na.png,\n")
    kinds = {p["row"]: p["kind"] for p in discover(str(csv)).problems}
    assert kinds == {1: "missing", 2: "bad_record"}


def test_parquet_encoded_bytes(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    meta = {b"cnn_ray": json.dumps({"class_names": ["a", "b"]}).encode()}
    for i in range(2):
        t = pa.table({"image": pa.array([_png(), _png()], pa.binary()), "label": [0, 1]})
        pq.write_table(t.replace_schema_metadata(meta), d / f"s{i}.parquet")
    src = discover(str(d))
    assert src.kind == "parquet" and src.image_encoding == "bytes"
    assert src.class_names == ["a", "b"] and src.file_rows == [2, 2] and src.num_rows == 4
    assert list(src.labels()) == [0, 1, 0, 1]
    assert discover(str(d / "*.parquet")).files == src.files  # a glob works too


@pytest.mark.parametrize("kind", ["fixed_size_binary", "fixed_size_list", "list_inferred", "shape_column"])
def test_parquet_raw_arrays(tmp_path, kind):
    h, w, c = 4, 6, 2
    pix = np.arange(3 * h * w * c, dtype=np.uint8).reshape(3, -1)
    meta = {b"cnn_ray": json.dumps({"image_shape": [h, w, c]}).encode()}
    cols = {"label": pa.array([0, 1, 2], pa.int32())}
    if kind == "fixed_size_binary":
        cols["image"] = pa.array([r.tobytes() for r in pix], pa.binary(h * w * c))
    elif kind == "fixed_size_list":
        cols["image"] = pa.FixedSizeListArray.from_arrays(pa.array(pix.ravel()), h * w * c)
    else:
        cols["image"] = pa.array(list(pix), pa.list_(pa.uint8()))
    if kind == "shape_column":
        cols["shape"] = pa.array([[h, w, c]] * 3, pa.list_(pa.int32()))
    t = pa.table(cols)
    if kind in ("fixed_size_binary", "fixed_size_list"):
        t = t.replace_schema_metadata(meta)
    pq.write_table(t, tmp_path / "a.parquet")
    if kind == "list_inferred":  # 48 bytes: not a square of 2 channels -> clear error, then a square
        with pytest.raises(SourceError, match="image_shape"):
            discover(str(tmp_path / "a.parquet"), channels=2)
        src = discover(str(tmp_path / "a.parquet"), channels=3)
        assert src.image_shape == (4, 4, 3)
        return
    src = discover(str(tmp_path / "a.parquet"))
    assert src.kind == "parquet" and src.image_encoding == "array" and src.image_shape == (h, w, c)
    assert src.class_names == ["0", "1", "2"]


def test_parquet_wrong_schema_names_file(tmp_path):
    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), tmp_path / "ok_name.parquet")
    with pytest.raises(SourceError, match=r"ok_name\.parquet: wrong schema: expected columns 'image'"):
        discover(str(tmp_path), "parquet")
    pq.write_table(pa.table({"image": [b"x"], "label": ["cat"]}), tmp_path / "ok_name.parquet")
    with pytest.raises(SourceError, match=r"ok_name\.parquet.*label: string"):
        discover(str(tmp_path), "parquet")


def test_auto_detect(tmp_path, folder):
    assert detect_format(str(folder)) == "folder"
    (tmp_path / "m.csv").write_text("path,label\n")
    assert detect_format(str(tmp_path / "m.csv")) == "manifest"
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.table({"image": [b"x"], "label": [0]}), tmp_path / "shards" / "p.parquet")
    assert detect_format(str(tmp_path / "shards")) == "parquet"
    assert detect_format(str(tmp_path / "shards" / "p.parquet")) == "parquet"
    with pytest.raises(SourceError, match="does not exist"):
        detect_format(str(tmp_path / "nope"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(_png())
    with pytest.raises(SourceError, match="cannot detect"):
        detect_format(str(tmp_path / "flat"))


def test_split_holdout_stratified_and_deterministic():
    labels = np.repeat(np.arange(5), [40, 40, 20, 10, 2])
    tr, va = split_holdout(labels, 0.1, seed=3)
    tr2, va2 = split_holdout(labels, 0.1, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert not np.array_equal(va, split_holdout(labels, 0.1, seed=4)[1])
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[va], minlength=5).tolist() == [4, 4, 2, 1, 0]
    # bad rows (label -1) go to neither split; a record list and a plain count also work
    tr, va = split_holdout(np.array([0, -1, 0, 0, 1, 1]), 0.5, seed=0)
    assert 1 not in tr and 1 not in va and len(tr) + len(va) == 5
    recs = [Record(f"{i}.png", i % 2, i) for i in range(10)]
    assert len(split_holdout(recs, 0.2, 0)[1]) == 2
    assert len(split_holdout(100, 0.25, 0)[1]) == 25
