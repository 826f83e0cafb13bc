"""Batch prediction: the actor's call without Ray, and jobs/predict.py on Ray Data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cnn_ray.config import TrainConfig
from cnn_ray.data.decode import BadInputError
from cnn_ray.data.decode_tasks import decode_block
from cnn_ray.data.shards import read_shard_images
from cnn_ray.evaluate import evaluate_batches
from cnn_ray.models import create_model
from cnn_ray.predict import PredictBatches, list_inputs, top_k_predictions
from cnn_ray.testing import bad_images, good_jpeg
from cnn_ray.train.checkpoint import save_checkpoint

CLASSES = ["cat", "dog", "frog"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A seeded simple_cnn checkpoint (flip TTA) and a folder of 3 x 3 distinct JPEGs plus one
    truncated JPEG."""
    tmp = tmp_path_factory.mktemp("predict")
    root = tmp / "images"
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"img{i}.jpg").write_bytes(good_jpeg(seed=10 * c + i))
    (root / "dog" / "broken.jpg").write_bytes(bad_images()["truncated_jpeg"].data)
    cfg = TrainConfig.from_dict({"data": {"train": str(root)}, "model": {"name": "simple_cnn"},
                                 "precision": {"dtype": "fp32"}, "eval": {"tta": "flip"}},
                                check_paths=False)
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3)
    ck = save_checkpoint(tmp / "checkpoint_0", model=model, epoch=1, config=cfg.to_dict(),
                         class_names=CLASSES, mean=[0.5] * 3, std=[0.25] * 3)
    return {"root": root, "checkpoint": str(ck), "tmp": tmp}


def _decoded(source) -> pa.Table:
    items = pa.table({"path": [r.path for r in source.records],
                      "label": [r.label for r in source.records],
                      "rid": [r.row for r in source.records]})
    return next(decode_block(items, rows_per_block=64, size=32, channels=3, encoding="file",
                             src_shape=None))


def test_top_k_predictions_sorted_probabilities():
    idx, prob = top_k_predictions(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, -1.0]]), 2)
    assert idx.tolist() == [[1, 2], [0, 1]]
    e = np.exp([3.0, 0.0, -1.0])
    assert prob[0, 0] > prob[0, 1] and prob[1] == pytest.approx(e[:2] / e.sum(), abs=1e-6)


def test_actor_call_lists_bad_row_and_matches_evaluate(setup):
    source = list_inputs(str(setup["root"]), class_names=CLASSES)
    table = _decoded(source)
    fn = PredictBatches(setup["checkpoint"], tta=None, top_k=2, policy="skip",
                        image_shape=(32, 32, 3))
    out = fn(table)
    reasons = out.column("reason").to_pylist()
    assert sum(r is not None for r in reasons) == 1 and len(reasons) == 10
    bad_rid = out.column("rid")[reasons.index(next(r for r in reasons if r))].as_py()
    assert source.records[[r.row for r in source.records].index(bad_rid)].path.endswith("broken.jpg")
    good = [i for i, r in enumerate(reasons) if r is None]
    pred = np.array(out.column("top_index").to_pylist())[good, 0]
    # evaluate_batches on the same decoded images (its own loader, the checkpoint's flip TTA)
    images, labels, _ = read_shard_images(
        pa.table({"image": table.column("image"), "label": table.column("label"),
                  "idx": table.column("rid")}), (32, 32, 3))
    batches = [{"image": torch.from_numpy(images[good].copy()),
                "label": torch.from_numpy(labels[good].copy())}]
    result = evaluate_batches(setup["checkpoint"], batches)
    assert result.tta_views == 2
    assert result.confusion.sum(axis=0).tolist() == np.bincount(pred, minlength=3).tolist()
    assert result.top1 == pytest.approx(float((pred == labels[good]).mean()))
    assert len(set(pred.tolist())) > 1 or len(set(labels[good].tolist())) > 1
    with pytest.raises(BadInputError, match="broken.jpg"):
        PredictBatches(setup["checkpoint"], tta="none", top_k=2, policy="fail",
                       image_shape=(32, 32, 3))(table)


def test_list_inputs_unlabelled_layouts(setup, tmp_path):
    files = sorted(str(p) for p in setup["root"].glob("cat/*.jpg"))
    src = list_inputs(str(setup["root"] / "cat" / "*.jpg"), class_names=CLASSES)
    assert [r.path for r in src.records] == files and {r.label for r in src.records} == {-1}
    flat = list_inputs(str(setup["root"] / "cat"), class_names=CLASSES)
    assert sorted(r.path for r in flat.records) == files
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n" + "\n".join(files) + "\n")
    assert [r.path for r in list_inputs(str(manifest), class_names=CLASSES).records] == files
    labelled = tmp_path / "l.csv"
    labelled.write_text("path,label\n" + "\n".join(f"{f},cat" for f in files) + "\n")
    assert {r.label for r in list_inputs(str(labelled), class_names=CLASSES).records} == {0}


@pytest.mark.ray
@pytest.mark.slow
def test_predict_job_folder_and_manifest(setup, ray_session, capsys):
    from cnn_ray.cli import main

    out = setup["tmp"] / "pred.parquet"
    assert main(["predict", "--checkpoint", setup["checkpoint"], "--data", str(setup["root"]),
                 "--out", str(out), "--top-k", "2", "data.data_cpus=0.5"]) == 0
    printed = capsys.readouterr().out
    assert "images_per_sec" in printed and "pure forward" in printed
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 9 and all(len(r["top_classes"]) == 2 for r in rows)
    assert all(r["pred_class"] == CLASSES[r["pred_index"]] for r in rows)
    bad = [json.loads(line) for line in open(str(out) + ".bad_inputs.jsonl")]
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.jpg")
    # the same predictions as evaluation over the same folder: top-1 printed by both
    from cnn_ray.data.pipeline import build_raw_dataset
    from cnn_ray.data.sources import discover

    cfg = TrainConfig.from_dict({"data": {"train": str(setup["root"])}}, check_paths=False)
    ds = build_raw_dataset(discover(str(setup["root"]), class_names=CLASSES), cfg.data)
    result = evaluate_batches(setup["checkpoint"], ds.iter_torch_batches(batch_size=64))
    ours = np.mean([r["pred_index"] == r["label"] for r in rows])
    assert result.num_images == 9 and ours == pytest.approx(result.top1)
    assert f"top1 {100 * result.top1:.2f}%" in printed
    # a manifest without labels, written as CSV
    manifest = setup["tmp"] / "m.csv"
    manifest.write_text("path\n" + "\n".join(r["path"] for r in rows[:4]) + "\nmissing.jpg\n")
    out_csv = setup["tmp"] / "pred.csv"
    assert main(["predict", "--checkpoint", setup["checkpoint"], "--data", str(manifest),
                 "--out", str(out_csv), "eval.tta=none"]) == 0
    lines = open(out_csv).read().splitlines()
    assert lines[0].startswith("path,label,pred_index,pred_class,prob") and len(lines) == 5
    bad = [json.loads(line) for line in open(str(out_csv) + ".bad_inputs.jsonl")]
    assert len(bad) == 1 and bad[0]["path"].endswith("missing.jpg")


def test_predict_cli_bad_input(setup, tmp_path, capsys):
    from cnn_ray.cli import main

    assert main(["predict", "--checkpoint", str(tmp_path), "--data", str(setup["root"])]) == 2
    assert "meta.json" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", setup["checkpoint"], "--data",
                 str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", setup["checkpoint"], "--data", str(setup["root"]),
                 "--out", str(tmp_path / "p.txt")]) == 2
    assert "p.txt" in capsys.readouterr().err


@pytest.mark.ray
def test_predict_file_gone_after_listing_names_the_node(setup, ray_session, tmp_path, monkeypatch,
                                                         capsys):
    """A file listed by the driver but not found where it is decoded stops prediction with an
    error naming the node and the file (exit 2, nothing written), instead of a skipped row."""
    import shutil

    import cnn_ray.predict as predict_mod
    from cnn_ray.cli import main

    root = tmp_path / "copy"
    shutil.copytree(setup["root"], root)
    victim = root / "cat" / "img1.jpg"
    listed = predict_mod.list_inputs

    def list_then_remove(*args, **kwargs):
        source = listed(*args, **kwargs)
        victim.unlink()
        return source

    monkeypatch.setattr(predict_mod, "list_inputs", list_then_remove)
    out = tmp_path / "pred.parquet"
    assert main(["predict", "--checkpoint", setup["checkpoint"], "--data", str(root),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    node = ray_session.get_runtime_context().get_node_id()
    assert f"{victim}: listed on the driver but not found on node {node}" in err
    # one message, no traceback of ours (Ray's logging may print its own "Logging error" to a
    # stream pytest has already swapped out)
    assert "raise InputNotVisibleError" not in err and not out.exists()
