"""Raw data at storage URIs: ImageFolder trees and manifests listed and decoded through pyarrow
filesystems (``file://`` here; ``s3://``/``gs://`` take the same code path)."""

from __future__ import annotations

import os

import pytest

from cnn_ray.config import TrainConfig
from cnn_ray.data import remote
from cnn_ray.data.errors import InputNotVisibleError
from cnn_ray.data.sources import discover
from cnn_ray.testing import good_jpeg


def _tree(root, per_class: int = 4):
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            (root / cls / f"{i}.jpg").write_bytes(good_jpeg(seed=10 * c + i))
    (root / "dog" / ".hidden.jpg").write_bytes(b"x")  # hidden: never listed
    (root / "README.txt").write_text("not a class")
    return "file://" + str(root)


def test_folder_and_manifest_at_a_uri(tmp_path):
    uri = _tree(tmp_path / "imgs")
    src = discover(uri)
    assert src.kind == "folder" and src.class_names == ["cat", "dog"]
    assert [r.label for r in src.records] == [0] * 4 + [1] * 4
    assert all(r.path.startswith("file://") for r in src.records)
    assert remote.read_bytes(src.records[0].path) == (tmp_path / "imgs" / "cat" / "0.jpg").read_bytes()
    before = src.listing_digest
    (tmp_path / "imgs" / "cat" / "0.jpg").write_bytes(good_jpeg(seed=99))
    os.utime(tmp_path / "imgs" / "cat" / "0.jpg", ns=(1, 1))
    assert discover(uri).listing_digest != before  # the cache key sees the change

    (tmp_path / "imgs" / "list.csv").write_text(
        "file,breed\ncat/1.jpg,cat\ndog/2.jpg,dog\ndog/gone.jpg,dog\n")
    spec_cfg = TrainConfig.from_dict({"data": {"train": uri + "/list.csv", "path_column": "file",
                                               "label_column": "breed"}})
    from cnn_ray.data.sources import ManifestSpec

    man = discover(uri + "/list.csv", manifest=ManifestSpec.of(spec_cfg.data))
    assert man.kind == "manifest" and [r.path for r in man.records] == [
        uri + "/cat/1.jpg", uri + "/dog/2.jpg"]
    assert [(p["kind"], p["path"]) for p in man.problems] == [("missing", uri + "/dog/gone.jpg")]


@pytest.mark.ray
def test_prepare_reads_a_uri_and_a_vanished_file_names_the_node(ray_session, tmp_path, monkeypatch):
    import cnn_ray.data.prepare as prepare_mod
    import cnn_ray.data.prepare_build as build_mod

    uri = _tree(tmp_path / "imgs", per_class=6)
    cfg = TrainConfig.from_dict({"data": {"train": uri, "image_size": 16}})
    data = prepare_mod.prepare_dataset(cfg.data, str(tmp_path / "prep"), progress=False)
    assert data.num_train + data.num_val == 12 and data.bad_count == 0 and data.class_names == ["cat", "dog"]

    victim = tmp_path / "imgs" / "dog" / "3.jpg"
    listed_then_decoded = build_mod.decoded_blocks

    def vanish_then_decode(*args, **kwargs):  # listed at the URI; gone when a task reads it
        victim.unlink()
        yield from listed_then_decoded(*args, **kwargs)

    monkeypatch.setattr(build_mod, "decoded_blocks", vanish_then_decode)
    node = ray_session.get_runtime_context().get_node_id()
    with pytest.raises(InputNotVisibleError, match=rf"3.jpg: listed on the driver but not found on node {node}"):
        prepare_mod.prepare_dataset(cfg.data, str(tmp_path / "prep2"), progress=False)
