"""The generated bad inputs of :mod:`cnn_ray.testing` (the cases ``benchmarks/faults.py`` reports on)
through the entry points a user hits: decoding, ``prepare_dataset`` under both ``bad_input``
policies, recipe loading; and checkpoints cut short by SIGKILLs."""

from __future__ import annotations

import re

import pytest

from cnn_ray.config_io import load_train_config
from cnn_ray.config import ConfigError, DataConfig
from cnn_ray.data.decode import BadInputError, decode_image
from cnn_ray.data.prepare import prepare_dataset
from cnn_ray.data.sources import SourceError
from cnn_ray.io import read_jsonl
from cnn_ray.testing import (bad_images, kill_during_save, write_bad_configs, write_bad_manifests,
                             write_image_tree, write_wrong_schema_parquet)

BAD = ("truncated_jpeg", "zero_byte", "text_as_jpg")
CONVERTED = ("cmyk_jpeg", "png_16bit", "rgba_png", "grayscale", "image_6000x4000")
CONFIGS = {"config_typo": "optim.lrr", "config_negative_lr": "optim.lr",
           "config_zero_workers": "scaling.num_workers", "config_missing_data_path": "data.train",
           "config_wrong_type": "optim.epochs"}


@pytest.fixture(scope="module")
def images():
    return bad_images()


def test_the_generated_cases_are_the_documented_ones(images, tmp_path):
    assert {n: im.expected for n, im in images.items()} == {**{n: "bad" for n in BAD},
                                                           **{n: "converted" for n in CONVERTED}}
    src = write_image_tree(tmp_path / "src")
    assert {n: c.key for n, c in write_bad_configs(tmp_path, {"data": {"train": str(src)}}).items()} \
        == CONFIGS
    assert set(write_bad_manifests(tmp_path, src)) == {"manifest_missing_file",
                                                       "manifest_unknown_label"}


@pytest.mark.parametrize("name", BAD + CONVERTED)
def test_decode_refuses_bad_images_by_name_and_converts_odd_ones(images, name):
    image = images[name]
    if image.expected == "bad":
        with pytest.raises(BadInputError, match=re.escape(image.filename) + ": "):
            decode_image(image.data, size=32, path=image.filename)
    else:
        out = decode_image(image.data, size=32, path=image.filename)
        assert out.shape == (32, 32, 3) and out.dtype.name == "uint8"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", BAD + CONVERTED)
def test_prepare_skips_or_converts_each_bad_image(ray_session, images, tmp_path, name):
    """Among 8 good JPEGs: a bad file is skipped and listed (``skip``) or named in a
    ``BadInputError`` (``fail``); an odd one is converted under both policies."""
    image = images[name]
    src = write_image_tree(tmp_path / "src", {f"cat/{image.filename}": image.data})
    cfg = DataConfig(train=str(src), val_fraction=0.25, shard_size=100, bad_input="skip",
                     max_bad_fraction=1.0)  # one bad image in a handful, skipped on purpose
    data = prepare_dataset(cfg, str(tmp_path / "skip"), progress=False)
    fail = cfg.model_copy(update={"bad_input": "fail"})
    if image.expected == "bad":
        listed = read_jsonl(tmp_path / "skip" / "bad_inputs.jsonl")
        assert data.bad_count == 1 and len(listed) == 1 and name in listed[0]["path"]
        with pytest.raises(BadInputError, match=re.escape(image.filename)):
            prepare_dataset(fail, str(tmp_path / "fail"), progress=False)
    else:
        assert data.bad_count == 0 and data.num_train + data.num_val == 9
        assert prepare_dataset(fail, str(tmp_path / "fail"), progress=False).bad_count == 0


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_empty_class_folder_is_kept_and_listed(ray_session, tmp_path):
    src = write_image_tree(tmp_path / "src", empty_class="zebra")
    data = prepare_dataset(DataConfig(train=str(src), shard_size=100), str(tmp_path / "out"),
                           progress=False)
    assert "zebra" in data.class_names
    listed = read_jsonl(tmp_path / "out" / "bad_inputs.jsonl")
    assert [b["reason"] for b in listed if b["path"].endswith("zebra")]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", ["manifest_missing_file", "manifest_unknown_label"])
def test_bad_manifest_row_is_skipped_or_named(ray_session, tmp_path, name):
    manifest = write_bad_manifests(tmp_path, write_image_tree(tmp_path / "src"))[name]
    cfg = DataConfig(**manifest.data, val_fraction=0.25, shard_size=100, bad_input="skip",
                     max_bad_fraction=1.0)
    data = prepare_dataset(cfg, str(tmp_path / "skip"), progress=False)
    assert data.bad_count == 1 and len(read_jsonl(tmp_path / "skip" / "bad_inputs.jsonl")) == 1
    with pytest.raises(BadInputError, match=re.escape(manifest.culprit)):
        prepare_dataset(cfg.model_copy(update={"bad_input": "fail"}), str(tmp_path / "fail"),
                        progress=False)


def test_wrong_parquet_schema_is_refused_naming_the_file(tmp_path):
    """Refused while listing the inputs, before any decoding: no Ray needed."""
    src = write_wrong_schema_parquet(tmp_path / "in")
    with pytest.raises(SourceError, match=r"part-0\.parquet: wrong schema"):
        prepare_dataset(DataConfig(train=str(src), shard_size=100), str(tmp_path / "out"),
                        progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bad_recipe_is_a_config_error_naming_the_key_and_leaves_runs_alone(tmp_path, name):
    ckpt = tmp_path / "runs" / "keep" / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    (ckpt / "model.pt").write_bytes(b"weights")
    base = {"data": {"train": str(write_image_tree(tmp_path / "src"))},
            "run": {"name": "keep", "storage_path": str(tmp_path / "runs")}}
    bad = write_bad_configs(tmp_path, base)[name]
    with pytest.raises(ConfigError, match=re.escape(bad.key)):
        load_train_config(str(bad.path))
    assert (ckpt / "model.pt").read_bytes() == b"weights"


@pytest.mark.slow
def test_kill_during_save_keeps_the_newest_complete_checkpoint(tmp_path):
    """Real SIGKILLs of a process writing checkpoints: nothing complete is lost or corrupted."""
    res = kill_during_save(tmp_path / "kills", kills=3)
    assert res["survived"] and res["checkpoints_lost"] == 0 and res["partial_looked_complete"] == 0
    assert res["newest_loaded_after_kill"] == 3
