"""Export to TorchScript / ONNX: the contract beside the file and logit parity (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnn_ray.cli import main
from cnn_ray.config import TrainConfig
from cnn_ray.export import export_checkpoint
from cnn_ray.inference import load_inference_model
from cnn_ray.models import create_model
from cnn_ray.recipe.apply import prepare_model
from cnn_ray.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of a whitened airbench (BN settings, channels_last) with random weights."""
    tmp = tmp_path_factory.mktemp("export")
    cfg = TrainConfig.from_dict({"data": {"train": str(tmp)}, "precision": {"dtype": "fp32"},
                                 "model": {"name": "airbench", "widths": [8, 16, 16],
                                           "whitening": {"enabled": True}}}, check_paths=False)
    torch.manual_seed(0)
    model = create_model("airbench", num_classes=4, widths=(8, 16, 16))
    prepare_model(model, cfg, compile=False)
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode BN is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(tmp / "checkpoint_0", model=model, epoch=1, config=cfg.to_dict(),
                           class_names=["a", "b", "c", "d"], mean=[0.49, 0.48, 0.45],
                           std=[0.25, 0.24, 0.26])


def _contract_check(result, ckpt):
    contract = json.loads(open(result.contract_path).read())
    assert contract["class_names"] == ["a", "b", "c", "d"]
    assert contract["input"]["image_size"] == 32 and contract["input"]["channels"] == 3
    assert contract["input"]["mean"] == pytest.approx([0.49, 0.48, 0.45])
    assert contract["input"]["std"] == pytest.approx([0.25, 0.24, 0.26])
    assert contract["parity"]["max_abs_logit_diff"] <= 1e-4
    return contract


def test_torchscript_parity_and_contract(checkpoint, tmp_path):
    r = export_checkpoint(checkpoint, "torchscript", tmp_path)
    assert r.max_abs_diff is not None and r.max_abs_diff <= 1e-4
    _contract_check(r, checkpoint)
    # the saved file, fed the contract's preprocessing of real uint8 images, gives the
    # checkpoint's own logits (as evaluation computes them)
    im = load_inference_model(checkpoint, tta="none", precision="fp32")
    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    ts = torch.jit.load(r.model_path)
    x = im.preprocess(images).float().contiguous()
    diff = (ts(x) - im.logits(images)).abs().max().item()
    assert diff <= 1e-4
    assert im.logits(images).abs().max().item() > 1e-3  # not a degenerate all-zero model


def test_onnx_parity_and_contract(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (the export extra)")
    r = export_checkpoint(checkpoint, "onnx", tmp_path)
    assert r.max_abs_diff is not None and r.max_abs_diff <= 1e-4
    _contract_check(r, checkpoint)
    import onnxruntime as ort

    sess = ort.InferenceSession(r.model_path, providers=["CPUExecutionProvider"])
    out = sess.run(["logits"], {"input": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out.shape == (3, 4)  # dynamic batch axis


def test_export_cli_bad_input(tmp_path, capsys, checkpoint):
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "tflite"]) == 2
    assert "tflite" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path), "--format", "onnx"]) == 2
    assert "meta.json" in capsys.readouterr().err
