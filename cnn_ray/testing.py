"""Deliberately bad inputs, for the tests and ``benchmarks/faults.py`` (as ``numpy.testing`` is for numpy).

Nothing binary is committed: every file is generated here, seeded, so the tests and the faults
benchmark exercise the same cases. Each generator writes files and says what a user's entry point
must make of them; judging the outcome is the caller's job.

- :func:`bad_images`: one image per kind of broken or odd file (truncated, empty, not an image,
  CMYK, 16-bit, RGBA, grayscale, 6000x4000), each marked ``bad`` (skipped with a reason, or a
  ``BadInputError`` naming the file) or ``converted`` (decoded like any RGB image);
- :func:`write_image_tree`: a small ImageFolder tree of good JPEGs to drop those files into;
  :func:`write_photo_tree`: one of non-square, learnable "photos" (data-at-resolution tests);
- :func:`write_bad_manifests`, :func:`write_wrong_schema_parquet`, :func:`write_bad_configs`: a
  manifest row naming a missing file or an unknown label, a Parquet file with the wrong columns,
  recipes with a typo or an impossible value;
- :func:`write_id_manifest`, :func:`write_mostly_missing_manifest`: manifests as they come
  (``id,breed`` columns, images at ``images/<id>.jpg``) and one whose files are 90% missing;
- :func:`kill_during_save`: checkpoints cut short by SIGKILLs of a process writing them;
- :func:`place_resnet18_weights`: a seeded ResNet-18 state dict where torchvision looks for
  its ImageNet weights, so fine-tuning runs offline.

No Ray here (numpy, Pillow, pyarrow, PyYAML; torch only in :func:`kill_during_save` and
:func:`place_resnet18_weights`).
"""

from __future__ import annotations

import io
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, NamedTuple

# The folder that holds the cnn_ray package: put on sys.path of the checkpoint-writing process.
_PACKAGE_PARENT = Path(__file__).resolve().parents[1]


class BadImage(NamedTuple):
    """One generated image file.

    ``filename``: the name to write it under (its suffix is its format's: ``.jpg`` or ``.png``);
    ``data``: the file's bytes; ``expected``: ``"bad"`` (skipped with a listed reason under
    ``bad_input: skip``, ``BadInputError`` naming ``filename`` under ``fail``) or
    ``"converted"`` (decoded to RGB under both policies).
    """

    filename: str
    data: bytes
    expected: str


def _random_rgb(seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def good_jpeg(seed: int = 0) -> bytes:
    """A valid 32x32 RGB JPEG of seeded noise (the good files around the bad ones)."""
    return _encode(_random_rgb(seed), "JPEG")


def bad_images(seed: int = 0) -> dict[str, BadImage]:
    """Every kind of broken or odd image file, by case name (see :class:`BadImage`).

    Bad: ``truncated_jpeg`` (the first 300 bytes of a JPEG), ``zero_byte``, ``text_as_jpg``.
    Converted: ``cmyk_jpeg``, ``png_16bit`` (40x40, all 40000), ``rgba_png``, ``grayscale``
    (8-bit PNG), ``image_6000x4000`` (a 24-megapixel JPEG, under Pillow's bomb limit).
    """
    import numpy as np
    from PIL import Image

    rgb = _random_rgb(seed)
    big = np.linspace(0, 255, 6000, dtype=np.uint8)[None, :, None].repeat(4000, 0).repeat(3, 2)
    cases = {
        "truncated_jpeg": ("bad", _encode(rgb.resize((64, 64)), "JPEG")[:300]),
        "zero_byte": ("bad", b""),
        "text_as_jpg": ("bad", b"this is not an image\n"),
        "cmyk_jpeg": ("converted", _encode(rgb.convert("CMYK"), "JPEG")),
        "png_16bit": ("converted",
                      _encode(Image.fromarray(np.full((40, 40), 40000, np.uint16)), "PNG")),
        "rgba_png": ("converted", _encode(rgb.convert("RGBA"), "PNG")),
        "grayscale": ("converted", _encode(rgb.convert("L"), "PNG")),
        "image_6000x4000": ("converted", _encode(Image.fromarray(big), "JPEG", quality=70)),
    }
    return {name: BadImage(f"{name}{'.png' if 'png' in name or name == 'grayscale' else '.jpg'}",
                           data, expected)
            for name, (expected, data) in cases.items()}


def write_image_tree(root: Path, extra: Mapping[str, bytes] | None = None, *,
                     classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 4,
                     empty_class: str | None = None, seed: int = 0) -> Path:
    """An ImageFolder tree ``root/<class>/ok<i>.jpg`` of :func:`good_jpeg` files.

    ``extra`` maps paths relative to ``root`` (``"cat/x.jpg"``) to bytes written after the good
    files; ``empty_class`` names a class folder created with no image in it. Returns ``root``.
    """
    root = Path(root)
    good = good_jpeg(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / cls / f"ok{i}.jpg").write_bytes(good)
    if empty_class:
        (root / empty_class).mkdir()
    for rel, blob in (extra or {}).items():
        (root / rel).write_bytes(blob)
    return root


def write_photo_tree(root: Path, *, size: tuple[int, int] = (48, 64),
                     classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6,
                     seed: int = 0) -> Path:
    """An ImageFolder tree ``root/<class>/p<i>.jpg`` of non-square ``size`` (H, W) RGB JPEGs
    (quality 95) that a tiny model can tell apart: class ``k`` is a smooth colour ramp along
    x (even ``k``) or y (odd ``k``) in its own hue, with seeded per-image brightness and a
    little noise. For the data-at-resolution tests (stored larger than trained, aspect not
    square). Returns ``root``.
    """
    import numpy as np
    from PIL import Image

    root = Path(root)
    h, w = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        ramp = xs / max(w - 1, 1) if k % 2 == 0 else ys / max(h - 1, 1)
        hue = np.array([(k * 97) % 256, (k * 57 + 80) % 256, (k * 31 + 160) % 256], np.float32)
        for i in range(per_class):
            img = ramp[..., None] * hue * rng.uniform(0.6, 1.0) + rng.normal(0, 6, (h, w, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                root / cls / f"p{i}.jpg", "JPEG", quality=95)
    return root


class BadManifest(NamedTuple):
    """A CSV manifest (``path,label``) with one bad row among good ones.

    ``data``: the ``DataConfig`` paths to use it with (``{"train": csv}``, or ``{"train":
    image_root, "val": csv}`` for a validation manifest); ``culprit``: the text an error about
    the bad row must name (the missing file, or the unknown label).
    """

    path: Path
    data: dict[str, str]
    culprit: str


def write_bad_manifests(out_dir: Path, image_root: Path) -> dict[str, BadManifest]:
    """Two manifests listing every ``*/*.jpg`` of ``image_root`` (a tree with a ``cat`` class).

    ``manifest_missing_file`` (training): plus a row for ``cat/nope.jpg``, which does not exist;
    ``manifest_unknown_label`` (validation, beside the ImageFolder training tree): plus a row
    labelled ``unicorn``, a class the training data does not have.
    """
    out_dir, image_root = Path(out_dir), Path(image_root)
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted(image_root.glob("*/*.jpg"))]
    cases = {"manifest_missing_file": ("train", f"{image_root}/cat/nope.jpg,cat", "nope.jpg"),
             "manifest_unknown_label": ("val", f"{image_root}/cat/ok0.jpg,unicorn", "unicorn")}
    out = {}
    for name, (split, row, culprit) in cases.items():
        csv = out_dir / f"{name}.csv"
        csv.write_text("\n".join(rows + [row]) + "\n")
        data = {"train": str(csv)} if split == "train" else {"train": str(image_root),
                                                             "val": str(csv)}
        out[name] = BadManifest(csv, data, culprit)
    return out


def write_id_manifest(root: Path, *, classes: tuple[str, ...] = ("beagle", "pug"),
                      per_class: int = 4, seed: int = 0) -> Path:
    """A Kaggle-style data set: ``root/labels.csv`` with columns ``id,breed`` and the images at
    ``root/images/<id>.jpg`` (ids are zero-padded digits such as ``0007``, so reading them as
    numbers would lose the zeros). Returns the CSV; it is used with
    ``data.path_template: "images/{id}.jpg"`` and ``data.label_column: breed``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["id,breed"]
    for k, cls in enumerate(classes):
        for i in range(per_class):
            ident = f"{k * per_class + i:04d}"
            (root / "images" / f"{ident}.jpg").write_bytes(good_jpeg(seed + k))
            rows.append(f"{ident},{cls}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def write_mostly_missing_manifest(root: Path, *, present: int = 4, missing: int = 36,
                                  classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    """``root/list.csv`` (``path,label``) of ``present + missing`` rows of which only
    ``present`` files exist (the unmounted-volume case: 90% missing by default). Returns it."""
    root = Path(root)
    good = good_jpeg(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = ["path,label"]
    for i in range(present + missing):
        name = f"img/{i:04d}.jpg"
        if i < present:
            (root / name).write_bytes(good)
        rows.append(f"{name},{classes[i % len(classes)]}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv"


def write_wrong_schema_parquet(directory: Path) -> Path:
    """``directory/part-0.parquet`` with columns ``pixels``/``y`` instead of an image and a label.

    Returns the folder, which as a data path must be refused with an error naming the file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"pixels": [b"x"], "y": [1]}), directory / "part-0.parquet")
    return directory


class BadConfig(NamedTuple):
    """A recipe (YAML) that must be refused with a ``ConfigError`` naming ``key``."""

    path: Path
    key: str


def write_bad_configs(out_dir: Path, base: Mapping) -> dict[str, BadConfig]:
    """Recipes = ``base`` (a valid recipe as a dict) with one bad value each, as YAML files.

    Cases: ``config_typo`` (``optim.lrr``), ``config_negative_lr``, ``config_zero_workers``,
    ``config_missing_data_path`` (``data.train`` = ``out_dir/nowhere``), ``config_wrong_type``
    (``optim.epochs: ten``).
    """
    import yaml

    out_dir = Path(out_dir)
    patches = {
        "config_typo": ({"optim": {"lrr": 0.1}}, "optim.lrr"),
        "config_negative_lr": ({"optim": {"lr": -0.1}}, "optim.lr"),
        "config_zero_workers": ({"scaling": {"num_workers": 0}}, "scaling.num_workers"),
        "config_missing_data_path": ({"data": {"train": str(out_dir / "nowhere")}}, "data.train"),
        "config_wrong_type": ({"optim": {"epochs": "ten"}}, "optim.epochs"),
    }
    out = {}
    for name, (patch, key) in patches.items():
        raw = json.loads(json.dumps(base))  # a deep copy
        for section, values in patch.items():
            raw.setdefault(section, {}).update(values)
        path = out_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        out[name] = BadConfig(path, key)
    return out


# A process that saves a resnet18 checkpoint (with optimizer state) in a loop, printing each
# epoch number after its save completes: argv = checkpoint root, folder holding cnn_ray.
_SAVER = r"""
import sys, torch, torchvision
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from cnn_ray.train.checkpoint import save_checkpoint
model = torchvision.models.resnet18(num_classes=10)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
root = Path(sys.argv[1]); epoch = len(list(root.glob("epoch_*")))
while True:
    epoch += 1
    save_checkpoint(root / f"epoch_{epoch:04d}", model=model, epoch=epoch, config={}, class_names=list("abcdefghij"),
                    mean=[0.5] * 3, std=[0.25] * 3, optimizer=opt)
    print(epoch, flush=True)
"""


def _complete(root: Path) -> list[Path]:
    """Checkpoint dirs under their final names (a save in progress is ``<name>.tmp-<random>``)."""
    return sorted(p for p in root.glob("epoch_*") if ".tmp-" not in p.name)


def kill_during_save(root: Path, kills: int = 10, seed: int = 0) -> dict:
    """SIGKILL a checkpoint-writing loop at random moments (0-1.5 s after its first save).

    After every kill the newest complete checkpoint must load and no partial one may look
    complete. Returns counts: ``kills``, ``newest_loaded_after_kill``, ``partial_looked_complete``
    (newest checkpoint that failed to load), ``checkpoints_lost`` (complete before a kill, gone
    after), ``interrupted_tmp_dirs_left``, and ``survived`` (every kill recovered, none lost).
    Each kill starts a Python process importing torch and torchvision: ~16 s a kill on 2 busy
    cores.
    """
    from cnn_ray.train.checkpoint import load_checkpoint

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    loaded, partial_visible, lost = 0, 0, 0
    for _ in range(kills):
        before = _complete(root)
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(root), str(_PACKAGE_PARENT)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        proc.stdout.readline()  # one checkpoint written: the loop is warm
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        done = _complete(root)
        lost += len(set(before) - set(done))
        try:
            load_checkpoint(done[-1])
            loaded += 1
        except Exception:  # noqa: BLE001 - counted: any failure to load is the figure reported
            partial_visible += 1
    leftovers = [p.name for p in root.iterdir() if ".tmp-" in p.name]
    return {"kills": kills, "newest_loaded_after_kill": loaded, "partial_looked_complete":
            partial_visible, "checkpoints_lost": lost, "interrupted_tmp_dirs_left": len(leftovers),
            "survived": loaded == kills and lost == 0}


def place_resnet18_weights(torch_home: Path, seed: int = 1) -> tuple[dict, Path]:
    """A seeded, randomly initialised torchvision ResNet-18 state dict saved where torchvision
    looks for ``ResNet18_Weights.IMAGENET1K_V1``: ``<torch_home>/hub/checkpoints/
    resnet18-f37072fd.pth`` (the file name of the weights' URL). torchvision checks the hash
    in the name only when it downloads, so a placed file is read as it is. Returns
    ``(state_dict, path)``."""
    import os
    from urllib.parse import urlparse

    import torch
    import torchvision.models as tvm

    name = os.path.basename(urlparse(tvm.ResNet18_Weights.IMAGENET1K_V1.url).path)
    torch.manual_seed(seed)
    state = tvm.resnet18(weights=None).state_dict()
    path = Path(torch_home) / "hub" / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state, path


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` of this checkout, loaded from its file (the scripts
    are not a package), for tests that call its functions or ``main(argv)``.

    Raises:
        FileNotFoundError: no such script.
    """
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"benchmarks/{name}.py: no such script")
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
