"""Export a checkpoint to TorchScript or ONNX with its preprocessing contract, and check parity.

``jobs/export.py --checkpoint DIR --format torchscript|onnx [--out DIR]`` writes into ``--out``
(default ``<checkpoint>/export``):

* ``model.ts`` (``torch.jit.trace``) or ``model.onnx`` (``torch.onnx.export(dynamo=True)``, the
  ``torch.export``-based exporter; opset 18; dynamic batch axis). Input ``input``: ``(N, C, H, W)
  float32``, already normalised; output ``logits``: ``(N, K) float32``. The exported network is
  the plain fp32 forward of the weights evaluation uses (EMA when the run kept one), without
  test-time augmentation (a contract field says which TTA the run evaluated with);
* ``<model file>.json``, the preprocessing contract: input size, channels, layout, mean/std
  (of ``x / 255``), the resize rule (the run's validation transform: stored square, then
  resize and centre crop, ``eval_transform``), class names, and the parity result.

Parity: the exported model and the checkpoint's model (:func:`cnn_ray.inference.load_inference_model`,
fp32, no TTA) run on the same seeded batch, in the contract's preprocessing; the maximum
absolute logit difference is reported and must be <= ``tolerance`` (1e-4). ONNX parity needs
``onnxruntime`` (the ``export`` extra); without it the ONNX file is still written and the
parity field says it was not checked. No Ray.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from cnn_ray.inference import InferenceModel, load_inference_model
from cnn_ray.io import atomic_path, atomic_write_json

Format = Literal["torchscript", "onnx"]
FORMATS = ("torchscript", "onnx")
_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
ONNX_OPSET = 18
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """Export or its parity check failed (the message names the file and the figure)."""


@dataclass
class ExportResult:
    """``model_path`` and ``contract_path`` written; ``max_abs_diff`` the parity figure (max
    absolute fp32 logit difference over ``parity_images`` images; None: not checked, with the
    reason in ``parity_note``)."""

    format: str
    model_path: str
    contract_path: str
    max_abs_diff: Optional[float]
    parity_images: int
    parity_note: str = ""


def preprocessing_contract(im: InferenceModel, checkpoint: str, fmt: str) -> dict:
    """What a consumer of the exported file must do to an image (JSON-ready dict)."""
    return {
        "format": fmt, "checkpoint": str(checkpoint), "weights": im.weights,
        "input": {"name": "input", "layout": "NCHW", "dtype": "float32",
                  "shape": [None, im.channels, im.image_size, im.image_size],
                  "channels": im.channels,
                  "color": "bands" if im.bands else "RGB" if im.channels == 3 else "L",
                  "image_size": im.image_size,
                  "resize": _resize_rule(im.eval_transform),
                  "eval_transform": im.eval_transform.to_dict(),
                  "normalize": "x = (pixel / 255 - mean) / std, per channel",
                  "mean": [float(v) for v in im.settings.mean],
                  "std": [float(v) for v in im.settings.std]},
        "output": {"name": "logits", "dtype": "float32", "shape": [None, len(im.class_names)],
                   "meaning": "unnormalised class scores; softmax for probabilities"},
        "class_names": list(im.class_names),
        "evaluated_with_tta": im.tta,
        **({"bands": _bands_contract(im.bands)} if im.bands else {}),
    }


def _resize_rule(t) -> str:
    """The contract's resize steps for the validation transform ``t`` (an
    :class:`~cnn_ray.data.preprocess.EvalTransform`): as stored, then (when the sizes differ)
    torchvision's ``Resize`` + ``CenterCrop``."""
    stored = t.stored_size
    rule = ("decode with Pillow, convert to the colour mode, take the centred square (side = "
            f"shorter side) and resize it to {stored} x {stored}, bilinear (PIL "
            "Image.resize(box=..., reducing_gap=3.0)); cnn_ray.data.decode.decode_image")
    if (t.resize_size, t.image_size) != (stored, stored):
        rule += (f"; then resize that square to {t.resize_size} x {t.resize_size} (bilinear, "
                 "antialiased: torch F.interpolate(antialias=True), torchvision Resize) and keep "
                 f"the centre {t.image_size} x {t.image_size} (torchvision CenterCrop); "
                 "cnn_ray.data.preprocess.EvalTransform")
    return rule


def _bands_contract(bands: dict) -> dict:
    """The band transform of multi-band tiles, with the steps that turn a raw tile into the
    exported model's ``pixel`` values (before ``normalize``)."""
    return {"steps": ("read the tile as (H, W, in_bands) numbers; u = (x - lo) / (hi - lo) per "
                      "band; with components: u = ((u - pca_mean) @ components.T - out_lo) / "
                      "(out_hi - out_lo); pixel = round(clip(u, 0, 1) * 255); then resize as "
                      "above; cnn_ray.data.bands.BandTransform.from_dict(this).apply(tile)"),
            **bands}


def parity_batch(im: InferenceModel, n: int = 64, seed: int = 0) -> torch.Tensor:
    """``(n, C, H, W) float32`` normalised inputs from seeded uint8 images (NCHW contiguous)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, im.image_size, im.image_size, im.channels),
                           dtype=torch.uint8, generator=g)
    s = im.settings
    from cnn_ray.data.preprocess import normalize_batch

    return normalize_batch(images, s.mean, s.std, dtype=torch.float32, channels_last=False)


def export_checkpoint(checkpoint: str | os.PathLike, fmt: Format, out_dir: str | os.PathLike,
                      *, parity_images: int = 64, tolerance: float = PARITY_TOLERANCE,
                      use_ema: bool = True) -> ExportResult:
    """Export ``checkpoint`` as ``fmt`` into ``out_dir`` with its contract and a parity check.

    Files are written atomically (temp name + rename). Returns an :class:`ExportResult`.

    Raises:
        ValueError: unknown ``fmt``.
        CheckpointError: unreadable checkpoint.
        ExportError: the exporter failed, or the parity difference exceeds ``tolerance``
            (the files are kept for inspection; the message gives the figure).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    im = load_inference_model(checkpoint, tta="none", use_ema=use_ema, precision="fp32")
    model = im.model.to(memory_format=torch.contiguous_format).float().eval()
    x = parity_batch(im, parity_images)
    with torch.no_grad():
        expected = model(x).float().numpy()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / _FILES[fmt]
    runner = _export_torchscript if fmt == "torchscript" else _export_onnx
    try:
        got, note = runner(model, x, path)
    except ExportError:
        raise
    except Exception as exc:  # exporter failures: name the model and the cause
        raise ExportError(f"{checkpoint}: {fmt} export of {im.config.model.name} failed: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    diff = None if got is None else float(np.abs(got - expected).max())
    contract = preprocessing_contract(im, str(checkpoint), fmt)
    contract["parity"] = {"images": parity_images, "max_abs_logit_diff": diff,
                          "tolerance": tolerance, "note": note}
    contract_path = path.with_name(path.name + ".json")
    atomic_write_json(contract_path, contract, indent=2)
    if diff is not None and diff > tolerance:
        raise ExportError(f"{path}: parity check failed: max |logit diff| {diff:.3g} > {tolerance:g}")
    return ExportResult(format=fmt, model_path=str(path), contract_path=str(contract_path),
                        max_abs_diff=diff, parity_images=parity_images, parity_note=note)


def _export_torchscript(model: torch.nn.Module, x: torch.Tensor, path: Path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
        traced = torch.jit.trace(model, x[:2], check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.no_grad():
            return loaded(x).float().numpy(), "torch.jit.load of the saved file"


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path):
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as tmp:
        torch.onnx.export(model, (x[:2],), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), dynamo=True, opset_version=ONNX_OPSET,
                          external_data=False, verbose=False)
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "not checked: onnxruntime is not installed (pip install 'cnn_ray[export]')"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x.numpy()})[0], "onnxruntime CPUExecutionProvider"


def export_main(checkpoint: str, fmt: str, *, out: Optional[str] = None, use_ema: bool = True) -> int:
    """CLI entry: export, print the files and the parity figure. Bad input -> ConfigError
    (printed without a traceback, exit 2 by :func:`cnn_ray.cli.main`)."""
    from cnn_ray.config import ConfigError
    from cnn_ray.train.checkpoint import CheckpointError

    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if not os.path.isdir(os.path.expanduser(checkpoint)):
        raise ConfigError(f"--checkpoint: not a directory: {checkpoint!r} (expected a checkpoint_*/ "
                          "dir holding meta.json and model.pt)")
    try:
        r = export_checkpoint(os.path.expanduser(checkpoint), fmt,
                              out or os.path.join(os.path.expanduser(checkpoint), "export"),
                              use_ema=use_ema)
    except CheckpointError as exc:
        raise ConfigError(f"--checkpoint: {exc}") from None
    diff = "not checked" if r.max_abs_diff is None else f"{r.max_abs_diff:.3g}"
    print(f"{r.format}: {r.model_path}\ncontract: {r.contract_path}\n"
          f"parity: max |logit diff| {diff} over {r.parity_images} images "
          f"(tolerance {PARITY_TOLERANCE:g}; {r.parity_note})")
    return 0
