"""Issue 14: manifests as they come and no silent loss of data.

The data layer's user-facing errors reach the user as one message with exit status 2 (no
traceback); a split with more than ``data.max_bad_fraction`` bad inputs stops the job before
training, with a summary; a file the driver listed but the decoding node cannot open is an error
naming the node. The ``ray``-marked tests run prepare/train on tiny generated data.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import yaml

from cnn_ray.data.bad_inputs import check_bad_fraction, split_summary
from cnn_ray.data.errors import InputNotVisibleError, SourceError, TooManyBadInputsError, user_error
from cnn_ray.testing import good_jpeg, write_id_manifest, write_mostly_missing_manifest


def _problems(n_missing: int, n_bad: int) -> list[dict]:
    return ([{"path": f"/d/m{i}.jpg", "reason": "file not found", "row": i, "kind": "missing"}
             for i in range(n_missing)]
            + [{"path": f"/d/b{i}.jpg", "reason": "corrupt", "row": 100 + i, "kind": "undecodable"}
               for i in range(n_bad)]
            + [{"path": "/d/empty", "reason": "empty class folder", "row": None}])


def test_bad_fraction_above_the_limit_stops_with_a_summary():
    summary = split_summary(_problems(90, 2), 100)
    assert summary["bad"] == 92 and summary["by_kind"] == {"missing": 90, "undecodable": 2}
    with pytest.raises(TooManyBadInputsError) as info:
        check_bad_fraction({"train": summary}, 0.01, "/out/bad_inputs.jsonl",
                           source={"train": "/data/list.csv"})
    msg = str(info.value)
    assert "92 of 100 train inputs (92.0%) are bad" in msg and "90 missing, 2 undecodable" in msg
    assert "/d/m0.jpg (file not found)" in msg and "/d/m5.jpg" not in msg  # the first few only
    assert "full list: /out/bad_inputs.jsonl" in msg and "data.train (/data/list.csv)" in msg
    assert "data.max_bad_fraction=" in msg


def test_bad_fraction_at_or_below_the_limit_warns_once_per_split(capsys):
    lines = check_bad_fraction({"train": split_summary(_problems(1, 0), 100),
                                "val": split_summary([], 10)}, 0.01, "/out/bad_inputs.jsonl")
    assert lines == ["warning: 1 of 100 train inputs (1.00%) left out as bad (1 missing); "
                     "list: /out/bad_inputs.jsonl"]
    assert capsys.readouterr().err.strip() == lines[0]
    assert check_bad_fraction({"train": split_summary([], 5)}, 0.0, "x") == []


def test_user_error_unwraps_ray_task_errors():
    err = InputNotVisibleError("/data/a.jpg", "abc123")
    assert "node abc123" in str(err) and "/data/a.jpg" in str(err)

    class Wrapped(Exception):  # what ray.exceptions.RayTaskError carries
        cause = err

    assert user_error(Wrapped()) is err and user_error(RuntimeError("x")) is None
    assert isinstance(user_error(SourceError("f.csv: no column")), SourceError)


def test_decode_task_tells_a_missing_file_from_a_bad_one(tmp_path):
    """A file missing where it is decoded is marked with the node (not a bad input); the raw
    path then stops naming the node and the file."""
    from cnn_ray.config import AugmentConfig
    from cnn_ray.data.pipeline import _RawBatches
    from cnn_ray.data.decode_tasks import decode_block, node_name

    (tmp_path / "a.jpg").write_bytes(good_jpeg())
    (tmp_path / "b.jpg").write_bytes(b"junk")
    batch = pa.table({"path": [str(tmp_path / n) for n in ("a.jpg", "b.jpg", "gone.jpg")],
                      "label": [0, 1, 0], "rid": [0, 1, 2]})
    (out,) = decode_block(batch, rows_per_block=16, size=8, channels=3, encoding="file",
                          src_shape=None)
    assert out.column("node").to_pylist() == [None, None, node_name()]
    assert out.column("reason")[1].as_py().startswith("not an image")
    with pytest.raises(InputNotVisibleError, match=r"gone\.jpg: listed on the driver but not found"):
        _RawBatches(AugmentConfig(), image_shape=(8, 8, 3), seed=0, train=False, policy="skip")(out)


# --------------------------------------------------------------------------------- with Ray
def _no_traceback(err: str) -> bool:
    """No Python traceback around our message (Ray's own log lines before it are not ours)."""
    ours = err.split("cnn-ray ", 1)[-1]
    return "Traceback" not in ours and "Error:" not in ours


def _config(tmp_path, data: dict) -> str:
    cfg = {"data": {"shard_size": 100, "image_size": 16, "val_fraction": 0.25,
                    "prepared_dir": str(tmp_path / "prepared"), **data},
           "model": {"name": "simple_cnn"}, "optim": {"batch_size": 4, "epochs": 1},
           "precision": {"dtype": "fp32"}, "scaling": {"num_workers": 1, "cpus_per_worker": 1},
           "run": {"name": "r", "storage_path": str(tmp_path / "runs")}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.ray
def test_mostly_missing_manifest_stops_prepare_unless_allowed(ray_session, tmp_path, capsys):
    from cnn_ray.cli import main

    recipe = _config(tmp_path, {"train": str(write_mostly_missing_manifest(tmp_path / "src"))})
    assert main(["prepare", "--config", recipe]) == 2
    out = capsys.readouterr()
    assert "\ncnn-ray prepare: 36 of 40 train" in "\n" + out.err and _no_traceback(out.err)
    assert "36 missing" in out.err and "0004.jpg (manifest row 4: file not found)" in out.err
    assert f"full list: {tmp_path / 'prepared' / 'bad_inputs.jsonl'}" in out.err
    assert "prepare train: 4/4 images (100%)" in out.out and "36 bad (36 left out at listing" in out.out
    listed = [json.loads(line) for line in open(tmp_path / "prepared" / "bad_inputs.jsonl")]
    assert len(listed) == 36 and {b["kind"] for b in listed} == {"missing"}

    # allowed: the same (cached) data passes with a warning line naming the count and the list
    assert main(["prepare", "--config", recipe, "data.max_bad_fraction=1.0"]) == 0
    err = capsys.readouterr().err
    assert "warning: 36 of 40 train inputs (90.00%) left out as bad (36 missing)" in err


@pytest.mark.ray
def test_file_vanished_after_listing_stops_prepare_naming_node_and_file(ray_session, tmp_path,
                                                                        monkeypatch, capsys):
    import cnn_ray.data.prepare_build as build_mod
    from cnn_ray.cli import main

    root = tmp_path / "src"
    write_mostly_missing_manifest(root, present=8, missing=0)
    victim = root / "img" / "0003.jpg"
    listed_then_decoded = build_mod.decoded_blocks

    def vanish_then_decode(*args, **kwargs):  # the driver has listed it; now it is gone
        victim.unlink()
        yield from listed_then_decoded(*args, **kwargs)

    monkeypatch.setattr(build_mod, "decoded_blocks", vanish_then_decode)
    assert main(["prepare", "--config", _config(tmp_path, {"train": str(root / "list.csv")})]) == 2
    err = capsys.readouterr().err
    node = ray_session.get_runtime_context().get_node_id()
    assert f"{victim}: listed on the driver but not found on node {node}" in err
    assert "\ncnn-ray prepare: " in "\n" + err and "cluster/README.md" in err and _no_traceback(err)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_id_breed_manifest_trains_with_two_keys(ray_session, tmp_path, capsys):
    from cnn_ray.cli import main

    csv = write_id_manifest(tmp_path / "kaggle", per_class=6)
    recipe = _config(tmp_path, {"train": str(csv), "label_column": "breed",
                                "path_template": "images/{id}.jpg"})
    assert main(["train", "--config", recipe]) == 0
    assert '"final_metrics"' in capsys.readouterr().out
    names = json.loads((tmp_path / "runs" / "r" / "class_names.json").read_text())
    assert names["class_names"] == ["beagle", "pug"]
    # without the two keys: one message naming the file, the columns and the keys to set
    bare = _config(tmp_path, {"train": str(csv)})
    assert main(["prepare", "--config", bare]) == 2
    err = capsys.readouterr().err
    assert "labels.csv: manifest has no column 'path', 'label'" in err and _no_traceback(err)


# ------------------------------------------------------------------------------ resume safety
def _run_with_checkpoint(tmp_path, **changes):
    """A run dir holding a checkpoint of resnet9 on 32 px data; returns the new run's config."""
    from cnn_ray.config import TrainConfig
    from cnn_ray.train.checkpoint import FORMAT_VERSION

    base = {"data": {"train": str(tmp_path / "data")}, "model": {"name": "resnet9"},
            "run": {"name": "r", "storage_path": str(tmp_path / "runs")}}
    old = TrainConfig.from_dict(base, check_paths=False)
    ckpt = tmp_path / "runs" / "r" / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"format": FORMAT_VERSION, "epoch": 3,
                                                "config": old.to_dict(), "class_names": ["a", "b"]}))
    new = {s: dict(v) for s, v in base.items()} | {"optim": {}}
    for key, value in changes.items():
        section, name = key.split("__")
        new[section][name] = value
    return TrainConfig.from_dict(new, check_paths=False), str(ckpt)


def test_resume_of_the_same_run_passes_and_a_different_one_names_the_keys(tmp_path):
    from cnn_ray.config import ConfigError
    from cnn_ray.runs import run_dir
    from cnn_ray.train.launch import check_resume

    same, ckpt = _run_with_checkpoint(tmp_path, optim__epochs=40)  # schedule changes are fine
    assert check_resume(same, run_dir(same), ["a", "b"]) == ckpt
    cfg, _ = _run_with_checkpoint(tmp_path / "x", model__name="resnet18", data__image_size=64)
    with pytest.raises(ConfigError) as info:
        check_resume(cfg, run_dir(cfg), ["a", "b", "c"])
    msg = str(info.value)
    assert "model.name: 'resnet9' -> 'resnet18'" in msg and "data.image_size: 32 -> 64" in msg
    assert "class names: ['a', 'b'] -> ['a', 'b', 'c']" in msg and "another run.name" in msg
    assert "data.channels" not in msg  # only what differs
    # the optimiser's state must fit too: its kind, and the switches that split its groups
    cfg, _ = _run_with_checkpoint(tmp_path / "m", optim__optimizer="muon")
    with pytest.raises(ConfigError, match=r"optim.optimizer: 'sgd' -> 'muon'"):
        check_resume(cfg, run_dir(cfg), ["a", "b"])
    cfg, _ = _run_with_checkpoint(tmp_path / "b", model__batchnorm={"bias_lr_mult": 64})
    with pytest.raises(ConfigError, match=r"model.batchnorm.bias_lr_mult: 1.0 -> 64.0"):
        check_resume(cfg, run_dir(cfg), ["a", "b"])
    cfg, _ = _run_with_checkpoint(tmp_path / "f", model__batchnorm={"freeze_scale": True})
    with pytest.raises(ConfigError, match=r"model.batchnorm.freeze_scale: False -> True"):
        check_resume(cfg, run_dir(cfg), ["a", "b"])
    fresh, _ = _run_with_checkpoint(tmp_path / "y")
    assert check_resume(fresh.model_copy(update={"run": fresh.run.model_copy(
        update={"name": "new"})}), str(tmp_path / "y" / "runs" / "new"), ["z"]) is None
