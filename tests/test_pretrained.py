"""Pretrained weights by name (issue 25, item 2): ``model.pretrained: imagenet``, torchvision
weights names and timm tags, read from temporary caches (``TORCH_HOME``, ``HF_HUB_CACHE``)
where the tests place a state dict under the exact file name torchvision/timm expect. Nothing
is downloaded: ``HF_HUB_OFFLINE=1`` and the download functions raise. The last test fine-tunes
a cached ResNet-18 through ``jobs/train.py`` (its own local Ray, ``ray`` and ``slow``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.config_io import merge_dotted
from cnn_ray.models import WeightsError, create_model, load_named_weights, resolve_weights
from cnn_ray.testing import place_resnet18_weights
from cnn_ray.train.finetune import keep_pretrained_normalization, pretrained_preprocessing
from cnn_ray.train.inputs import DataSummary
from cnn_ray.train.parts import begin_epoch, build_parts

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BASE = {"data": {"train": "unused", "image_size": 16},
        "model": {"name": "resnet18", "pretrained": "imagenet", "channels_last": False},
        "optim": {"schedule": "constant", "epochs": 2, "batch_size": 4, "lr": 0.05},
        "precision": {"dtype": "fp32"}, "scaling": {"torch_threads": 1}}


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty torch.hub and Hugging Face caches, offline; any download attempt fails the test."""
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError(f"a test tried to download: {args[:2]}")

    out = SimpleNamespace(torch=tmp_path / "torch", hf=tmp_path / "hf")
    monkeypatch.setenv("TORCH_HOME", str(out.torch))
    monkeypatch.setenv("HF_HUB_CACHE", str(out.hf))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    return out


def _place_resnet18(torch_home: Path) -> tuple[dict, Path]:
    """A seeded torchvision ResNet-18 state dict where torchvision looks for IMAGENET1K_V1."""
    state, path = place_resnet18_weights(torch_home)
    # torchvision's file name carries the SHA-256 prefix torch.hub checks on download; a file
    # already in the cache is loaded without re-hashing, so a placed one is read as it is
    assert path.name == "resnet18-f37072fd.pth"
    return state, path


def _cfg(**dotted) -> TrainConfig:
    return TrainConfig.from_dict(merge_dotted(BASE, dotted), check_paths=False)


def _summary(classes: int, channels: int = 3) -> DataSummary:
    return DataSummary(class_names=[f"c{i}" for i in range(classes)], mean=[0.5] * channels,
                       std=[0.25] * channels, num_train=16, num_val=4,
                       image_shape=(16, 16, channels))


# ------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("spec", ["imagenet", "ResNet18_Weights.IMAGENET1K_V1", "IMAGENET1K_V1"])
def test_named_torchvision_weights_load_from_the_cache_with_a_new_head(caches, spec):
    state, path = _place_resnet18(caches.torch)
    model = create_model("resnet18", num_classes=10)
    w, report = load_named_weights(model, "resnet18", spec)
    assert (w.name, w.file, w.source) == ("ResNet18_Weights.IMAGENET1K_V1", str(path),
                                          "torchvision")
    own = model.state_dict()
    backbone = [k for k in own if not k.startswith("fc.")]
    assert backbone and all(torch.equal(own[k], state[k]) for k in backbone)
    assert model.fc.out_features == 10 and report["skipped"] == ["fc.bias", "fc.weight"]
    assert not torch.equal(own["fc.weight"], state["fc.weight"][:10])  # fresh, not a slice


def test_small_input_stem_stays_fresh_and_other_channels_are_adapted(caches):
    """``small_input``'s 3x3 stem cannot take the 7x7 filters: left fresh, the rest loads;
    one input channel: the stem's RGB filters are summed (timm's adapt_input_conv)."""
    state, _ = _place_resnet18(caches.torch)
    small = create_model("resnet18", num_classes=10, small_input=True)
    _, report = load_named_weights(small, "resnet18", "imagenet", {"small_input": True})
    assert report["skipped"] == ["conv1.weight", "fc.bias", "fc.weight"]
    assert torch.equal(small.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    grey = create_model("resnet18", num_classes=10, in_channels=1)
    _, report = load_named_weights(grey, "resnet18", "imagenet")
    assert report["adapted"] == ["conv1.weight"]
    assert torch.allclose(grey.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_missing_weights_offline_name_the_file_and_where_to_get_it(caches, tmp_path, capsys):
    w = resolve_weights("resnet18", "imagenet")
    expected = caches.torch / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert w.file == str(expected)
    from cnn_ray.models.weights import load_weights

    with pytest.raises(WeightsError) as info:
        load_weights(w)
    msg = str(info.value)
    assert str(expected) in msg and w.url in msg and "HF_HUB_OFFLINE" in msg
    # the config check on the driver: before any data is prepared or Ray started
    data = tmp_path / "data"
    data.mkdir()
    raw = merge_dotted(BASE, {"data.train": str(data)})
    with pytest.raises(ConfigError, match=r"model\.pretrained: ResNet18_Weights") as info:
        TrainConfig.from_dict(raw)
    assert str(expected) in str(info.value)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    from cnn_ray.cli import main

    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnn-ray train: ") and str(expected) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_weights_names_are_checked_against_the_family(caches):
    with pytest.raises(WeightsError, match=r"not weights of 'resnet18'.*ResNet18_Weights"):
        resolve_weights("resnet18", "ResNet50_Weights.IMAGENET1K_V2")
    with pytest.raises(WeightsError, match=r"no weights 'IMAGENET1K_V9'.*IMAGENET1K_V1"):
        resolve_weights("resnet18", "IMAGENET1K_V9")
    with pytest.raises(WeightsError, match=r"'resnet9' has none published"):
        resolve_weights("resnet9", "imagenet")
    with pytest.raises(WeightsError, match="timm tag"):
        resolve_weights("resnet18", ".in1k")
    assert resolve_weights("resnet50", "imagenet").name == "ResNet50_Weights.IMAGENET1K_V2"
    assert resolve_weights("shufflenet_v2", "imagenet", {"width_mult": 0.5}).name == \
        "ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1"
    assert _cfg(**{"model.pretrained": True}).model.pretrained == "imagenet"  # timm's spelling
    with pytest.raises(ConfigError, match=r"model\.pretrained.*not a URL"):
        _cfg(**{"model.pretrained": "https://download.pytorch.org/models/x.pth"})


def test_weights_preprocessing_replaces_the_data_stats_unless_configured():
    """No file needed: the mean/std come from ``weights.transforms()``; the resize/crop sizes
    are exposed for the data side (:func:`pretrained_preprocessing`)."""
    cfg = _cfg()
    summary = keep_pretrained_normalization(cfg, _summary(4))
    assert (summary.mean, summary.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert pretrained_preprocessing(cfg) == {
        "weights": "ResNet18_Weights.IMAGENET1K_V1", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        "resize_size": 256, "crop_size": 224, "interpolation": "bilinear"}
    v2 = pretrained_preprocessing(_cfg(**{"model.name": "resnet50"}))
    assert (v2["resize_size"], v2["crop_size"]) == (232, 224)  # IMAGENET1K_V2's own
    data_stats = _cfg(**{"model.normalization": "data"})
    assert keep_pretrained_normalization(data_stats, _summary(4)) == _summary(4)
    grey = _summary(4, channels=1)  # the weights' stats are RGB: a 1-channel run keeps its own
    assert keep_pretrained_normalization(cfg, grey) == grey
    assert pretrained_preprocessing(_cfg(**{"model.pretrained": None})) is None


def test_freeze_backbone_lr_and_ema_work_with_named_weights(caches):
    """The fine-tuning keys act on named weights as on a file: backbone frozen for epoch 1
    (only the new head moves), backbone lr x 0.1, EMA of the loaded weights; the report says
    what was loaded and which normalisation and preprocessing apply."""
    state, _ = _place_resnet18(caches.torch)
    cfg = _cfg(**{"model.freeze": "backbone", "model.unfreeze_epoch": 2,
                  "optim.backbone_lr_mult": 0.1, "optim.ema.enabled": True,
                  "optim.ema.every_steps": 1})
    summary = keep_pretrained_normalization(cfg, _summary(4))
    parts = build_parts(cfg, summary, 0, 1, device=CPU)
    report = parts.finetune.report
    assert (report.kind, report.weights) == ("named", "ResNet18_Weights.IMAGENET1K_V1")
    assert report.skipped == ["conv1.weight", "fc.bias", "fc.weight"]  # 16 px: small stem
    assert "weights' mean/std" in report.normalization and parts.settings.mean == IMAGENET_MEAN
    assert report.preprocessing["crop_size"] == 224
    assert torch.equal(parts.ema.module.state_dict()["layer4.1.bn2.weight"],
                       state["layer4.1.bn2.weight"])
    lrs = {g["name"]: g["lr"] for g in parts.optimizer.param_groups}
    assert lrs["group0.frozen"] == pytest.approx(0.1 * lrs["group0"])  # the weights group

    from cnn_ray.train.loop import train_one_epoch

    begin_epoch(parts, cfg, 0, 1, lambda msg: None)
    before = {k: v.detach().clone() for k, v in parts.model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8, generator=g),
                "label": torch.randint(0, 4, (4,), generator=g)} for _ in range(2)]
    train_one_epoch(parts.model, batches, parts.optimizer, parts.settings,
                    scheduler=parts.scheduler, scheduler_per_step=parts.per_step)
    moved = {k for k, v in parts.model.named_parameters() if not torch.equal(before[k], v)}
    assert moved == {"fc.weight", "fc.bias"}


# ------------------------------------------------------------------------------ timm
def _place_timm(hf_cache: Path, name: str) -> dict:
    """A timm model's state dict where the Hugging Face cache keeps ``timm/<name>``'s
    model.safetensors (``refs/main`` names the snapshot)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    state = timm.create_model(name, pretrained=False).state_dict()
    repo = hf_cache / f"models--timm--{name}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    return state


@pytest.mark.parametrize("name,spec", [("timm/test_resnet", "imagenet"),
                                       ("timm/test_resnet", ".r160_in1k"),
                                       ("timm/test_resnet.r160_in1k", "true")])
def test_timm_pretrained_tags_load_from_the_hugging_face_cache(caches, name, spec):
    state = _place_timm(caches.hf, "test_resnet.r160_in1k")
    model = create_model(name, num_classes=3, in_channels=3)
    w, report = load_named_weights(model, name, spec)
    assert w.name == "timm/test_resnet.r160_in1k" and w.crop_size == 160
    head = model.pretrained_cfg["classifier"]
    own = model.state_dict()
    assert report["skipped"] == [f"{head}.bias", f"{head}.weight"]
    assert all(torch.equal(own[k], state[k]) for k in own if not k.startswith(head + "."))


def test_timm_errors_are_named(caches):
    with pytest.raises(WeightsError, match=r"models--timm--test_resnet\.r160_in1k.*huggingface"):
        from cnn_ray.models.weights import load_weights

        load_weights(resolve_weights("timm/test_resnet", "imagenet"))
    with pytest.raises(WeightsError, match=r"no pretrained weights tag 'nope'.*r160_in1k"):
        resolve_weights("timm/test_resnet", ".nope")
    with pytest.raises(WeightsError, match="imagenet/true .* or a pretrained tag"):
        resolve_weights("timm/test_resnet", "IMAGENET1K_V1")


@pytest.mark.parametrize("timm_installed", [True, False])
def test_timm_name_errors_exit_2_naming_the_key(tmp_path, capsys, monkeypatch, timm_installed):
    """An unknown timm name, or timm/ without timm: exit status 2, the message names
    model.name and what to do, no traceback (and no Ray: the config is checked first)."""
    from cnn_ray.cli import main

    if not timm_installed:
        monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    (tmp_path / "data").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"train": str(tmp_path / "data")},
                                      "model": {"name": "timm/convnext_nan"}}))
    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "model.name: " in err and "Traceback" not in err
    assert ("close matches: ['timm/convnext_nano'" in err if timm_installed
            else 'pip install -e ".[timm]"' in err)


# ------------------------------------------------------------------------------ end to end
@pytest.mark.ray  # jobs/train.py starts its own local Ray (not the shared session)
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cached_resnet18_fine_tunes_through_jobs_train(tmp_path):
    """``python jobs/train.py`` with ``model.pretrained: imagenet``: the driver finds the file in
    ``$TORCH_HOME`` (the Ray workers it starts inherit the variable), the run trains, records
    the weights and their preprocessing, and its checkpoint keeps ImageNet's mean/std."""
    from cnn_ray.testing import write_image_tree

    torch_home = tmp_path / "torch"
    _place_resnet18(torch_home)
    data = write_image_tree(tmp_path / "data", per_class=8)
    recipe = merge_dotted(BASE, {
        "data.train": str(data), "data.val_fraction": 0.25, "data.image_size": 32,
        "data.prepared_dir": str(tmp_path / "prepared"), "model.freeze": "backbone",
        "optim.epochs": 1, "run.name": "ft", "run.storage_path": str(tmp_path / "runs"),
        "run.smoke": True, "scaling.num_workers": 1, "scaling.cpus_per_worker": 1})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TORCH_HOME=str(torch_home), HF_HUB_OFFLINE="1", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    proc = subprocess.run([sys.executable, "jobs/train.py", "--config", str(path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "runs" / "ft"
    report = json.loads((run / "pretrained.json").read_text())
    assert (report["kind"], report["weights"]) == ("named", "ResNet18_Weights.IMAGENET1K_V1")
    assert report["preprocessing"]["resize_size"] == 256 and report["applied"] is True
    meta = json.loads(next(run.glob("checkpoint_*/meta.json")).read_text())
    assert meta["mean"] == pytest.approx(IMAGENET_MEAN)
