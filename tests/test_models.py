"""The model registry: every registered model builds, runs forward/backward in fp32 and in
channels-last + bf16 autocast on CPU; knobs, errors, FLOP counting, local pretrained loading;
torchvision's networks at torchvision's size (issue 25), the small-input stems and their
``auto`` switch, timm models, the model table. No Ray. Small inputs (batch 2, 32x32) keep the
file fast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnn_ray.config import ConfigError, ModelConfig, TrainConfig
from cnn_ray.models import (classifier_head, count_flops, create_model, list_models,
                            load_pretrained, min_input_size, model_knobs, register_model)

NUM_CLASSES = 7

# Documented FLOPs per 32x32 image of resnet9 at width_mult=1 (0.76 GFLOP = 0.38 G multiply-adds).
RESNET9_GFLOP_RANGE = (0.6, 0.9)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Batch-2 tensors gain nothing from intra-op threads, and OpenMP threads that spin-wait
    make the file many times slower when the CPUs are shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_fp32(name):
    model = create_model(name, num_classes=NUM_CLASSES, in_channels=3)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", list_models())
def test_channels_last_bf16_autocast_one_channel(name):
    """Also covers ``in_channels=1`` (grayscale): the stem is rebuilt for it. Batch 2 because
    bf16 convolutions take PyTorch's slow reference path on CPUs without AVX512-BF16/AMX."""
    model = create_model(name, num_classes=NUM_CLASSES, in_channels=1)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits.float()).all()
    nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1])).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", list_models())
def test_eval_on_other_sizes(name):
    """Adaptive pooling: the smallest supported size (16; ConvNeXt 32) and a non-square larger
    one work."""
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    low = min_input_size(name)
    with torch.no_grad():
        assert model(torch.randn(1, 3, low, low)).shape == (1, NUM_CLASSES)
        assert model(torch.randn(1, 3, 48, 40)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", list_models())
def test_count_flops_positive_int(name):
    flops = count_flops(create_model(name, num_classes=10))
    assert isinstance(flops, int) and flops > 0


def test_resnet9_flops_in_documented_range():
    model = create_model("resnet9", num_classes=10, width_mult=1.0)
    gflop = count_flops(model, (1, 3, 32, 32)) / 1e9
    assert RESNET9_GFLOP_RANGE[0] <= gflop <= RESNET9_GFLOP_RANGE[1]
    assert count_flops(model, (2, 3, 32, 32)) == int(gflop * 1e9)  # per image, not per batch
    assert model.training  # mode restored
    assert count_flops(create_model("resnet9", 10, width_mult=0.5)) < gflop * 1e9 / 3


@pytest.mark.parametrize("name", [n for n in list_models() if "width_mult" in model_knobs(n)])
def test_width_mult_changes_params(name):
    wide = 2.0 if name == "shufflenet_v2" else 1.5
    assert _params(create_model(name, 10, width_mult=wide)) > _params(create_model(name, 10))


@pytest.mark.parametrize("name", [n for n in list_models() if "depth" in model_knobs(n)])
def test_depth_changes_blocks(name):
    def n_convs(model):
        return sum(isinstance(m, nn.Conv2d) for m in model.modules())

    assert n_convs(create_model(name, 10, depth=3)) > n_convs(create_model(name, 10, depth=1))


@pytest.mark.parametrize("name", [n for n in list_models() if "kernel_size" in model_knobs(n)])
def test_kernel_size_knob(name):
    model = create_model(name, 10, kernel_size=5)
    assert any(isinstance(m, nn.Conv2d) and m.kernel_size == (5, 5) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", [n for n in list_models() if "separable" in model_knobs(n)])
def test_separable_knob(name):
    plain, sep = create_model(name, 10), create_model(name, 10, separable=True)
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in sep.modules())
    assert _params(sep) < _params(plain)


def _gmac(model, size: int) -> float:
    return count_flops(model, (1, 3, size, size)) / 2e9  # count_flops: 2 FLOPs per multiply-add


def test_torchvision_resnets_have_torchvision_params_and_gmac():
    """Issue 25's targets: ResNet-50 25.6 M parameters and 4.1 GMAC at 224 px, ResNet-18 1.8
    (torchvision's weights.meta: 25,557,032 params, _ops 4.089 and 1.814)."""
    resnet50 = create_model("resnet50", 1000)
    assert _params(resnet50) == 25_557_032
    assert _gmac(resnet50, 224) == pytest.approx(4.089, abs=0.005)
    assert _gmac(create_model("resnet18", 1000), 224) == pytest.approx(1.814, abs=0.005)
    cifar = create_model("resnet18_cifar", 1000)  # ours keeps its name and its 27 GMAC
    assert _gmac(cifar, 224) == pytest.approx(27.2, abs=0.1)


def test_small_input_stems():
    """resnets: 3x3 stride-1 first conv, no max-pool (16x the compute); MobileNetV2: stride-1
    first conv (4x: 1.20 vs 0.30 GMAC at 224 px); ShuffleNet: both. False is the ImageNet stem."""
    imagenet, small = create_model("resnet50", 10), create_model("resnet50", 10, small_input=True)
    assert (imagenet.conv1.kernel_size, imagenet.conv1.stride) == ((7, 7), (2, 2))
    assert (small.conv1.kernel_size, small.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(small.maxpool, nn.Identity) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert _gmac(small, 32) / _gmac(imagenet, 32) == pytest.approx(16, rel=0.1)
    mobile = create_model("mobilenet_v2", 1000, small_input=True)
    assert mobile.features[0][0].stride == (1, 1)
    assert _gmac(mobile, 224) == pytest.approx(1.20, abs=0.01)
    assert _gmac(create_model("mobilenet_v2", 1000), 224) == pytest.approx(0.30, abs=0.01)
    assert isinstance(create_model("shufflenet_v2", 10, small_input=True).maxpool, nn.Identity)
    assert "small_input" not in model_knobs("convnext_tiny")  # no small form of the patchify stem


def test_small_input_auto_follows_the_image_size():
    """``model.small_input: auto`` is the small stem below 96 px for the families that have one,
    and is left out for the others; true/false is passed as set."""
    def knobs(name, size, **model):
        cfg = TrainConfig.from_dict({"data": {"train": "x", "image_size": size},
                                     "model": {"name": name, **model}}, check_paths=False)
        return cfg.model.build_knobs(cfg.data.image_size)

    assert knobs("resnet18", 32) == {"small_input": True}
    assert knobs("resnet18", 95)["small_input"] and not knobs("resnet18", 96)["small_input"]
    assert knobs("efficientnet_b0", 224) == {"small_input": False}
    assert knobs("resnet9", 32) == {} and knobs("convnext_tiny", 32) == {}
    assert knobs("resnet18", 224, small_input=True) == {"small_input": True}
    assert ModelConfig(name="resnet18").knobs() == {}  # knobs(): only what is set
    with pytest.raises(ConfigError, match=r"model\.small_input=true: model 'resnet9' has no"):
        knobs("resnet9", 32, small_input=True)
    with pytest.raises(ConfigError, match=r"model\.small_input=false: model 'timm/test_resnet'"):
        knobs("timm/test_resnet", 224, small_input=False)


def test_torchvision_families_keep_torchvision_keys():
    """The entries not built by torchvision's own builder have its state-dict keys and shapes,
    so torchvision's weights load into them."""
    import torchvision.models as tvm

    for name, builder in [("efficientnet_b0", "efficientnet_b0"),
                          ("shufflenet_v2", "shufflenet_v2_x1_0")]:
        ours = create_model(name, 1000, dropout=0.1).state_dict()
        theirs = tvm.get_model(builder, weights=None).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_timm_model_builds_by_name():
    """Any timm model as ``timm/<name>``: timm sets the head and the input channels; the head
    helper finds timm's classifier; dropout is timm's drop_rate."""
    model = create_model("timm/convnext_nano", num_classes=NUM_CLASSES, in_channels=1,
                         dropout=0.1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, NUM_CLASSES)
    assert classifier_head(model)[0] == "head.fc"
    assert set(model_knobs("timm/convnext_nano")) == {"dropout"}
    assert "timm/convnext_nano" not in list_models()
    with pytest.raises(ValueError, match="does not accept"):
        create_model("timm/test_resnet", 10, width_mult=2.0)


def test_unknown_timm_name_and_missing_timm_are_named(monkeypatch):
    with pytest.raises(ValueError, match=r"timm has no model 'convnext_nan'.*timm/convnext_nano"):
        create_model("timm/convnext_nan", 10)
    with pytest.raises(ConfigError, match=r"model\.name: timm has no model 'convnext_nan'"):
        TrainConfig.from_dict({"data": {"train": "x"}, "model": {"name": "timm/convnext_nan"}},
                              check_paths=False)
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ConfigError, match=r'model\.name: .*pip install -e "\.\[timm\]"'):
        TrainConfig.from_dict({"data": {"train": "x"}, "model": {"name": "timm/convnext_nano"}},
                              check_paths=False)


def test_model_table_row_and_docs_page():
    """``cnn-ray models``: a row has params and GMAC per size with auto's stem; docs/models.md
    (generated by it) lists every registered model, and its resnet50 row has the targets."""
    from pathlib import Path

    from cnn_ray.models.table import model_row, to_markdown

    row = model_row("resnet18", sizes=(32, 224))
    assert row["params_m"] == pytest.approx(11.69, abs=0.01) and row["source"] == "torchvision"
    assert row["gmac"][224] == pytest.approx(1.814, abs=0.005)
    assert row["small_input"] == {32: True, 224: False}
    assert row["gmac"][32] == pytest.approx(0.556, abs=0.005)  # the small stem at 32 px
    assert row["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert "| `resnet18` | torchvision | 11.69 | 0.556 | 1.814 | yes |" in to_markdown([row],
                                                                                 (32, 224))
    page = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    listed = [line.split("`")[1] for line in page.splitlines() if line.startswith("| `")]
    assert listed == list_models(), "docs/models.md is stale: python jobs/models.py --markdown " \
                                    "docs/models.md"
    assert "| `resnet50` | torchvision | 25.56 | 1.300 | 1.337 | 4.089 |" in page


def test_models_command_prints_json_and_names_unknown_models(capsys):
    import json

    from cnn_ray.cli import main

    assert main(["models", "simple_cnn", "--json", "--sizes", "32"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "simple_cnn" and row["gmac"]["32"] == pytest.approx(0.011, abs=0.001)
    assert main(["models", "no_such_net"]) == 2
    assert "cnn-ray models: unknown model 'no_such_net'" in capsys.readouterr().err


def test_dropout_knob():
    model = create_model("resnet9", 10, dropout=0.3)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    shuffle = create_model("shufflenet_v2", 10, dropout=0.3)
    assert any(isinstance(m, nn.Dropout2d) for m in shuffle.modules())


def test_none_knobs_are_dropped():
    model = create_model("mobilenet_v2", 10, width_mult=None, depth=None, kernel_size=None,
                         separable=None, dropout=None)
    assert _params(model) == _params(create_model("mobilenet_v2", 10))


def test_unknown_knob_names_model_and_knob():
    with pytest.raises(ValueError, match=r"mobilenet_v2.*kernel_size"):
        create_model("mobilenet_v2", 10, kernel_size=5)


def test_unknown_model_lists_names():
    with pytest.raises(ValueError, match="no_such_net") as err:
        create_model("no_such_net", 10)
    assert "resnet9" in str(err.value) and "simple_cnn" in str(err.value)


@pytest.mark.parametrize("name,knobs", [("resnet9", {"width_mult": 0}),
                                        ("resnet9", {"dropout": 1.0}),
                                        ("simple_cnn", {"depth": 0}),
                                        ("shufflenet_v2", {"width_mult": 0.75})])
def test_bad_knob_values(name, knobs):
    with pytest.raises(ValueError, match=name):
        create_model(name, 10, **knobs)


def test_list_models_sorted_and_complete():
    names = list_models()
    assert names == sorted(names)
    expected = {"simple_cnn", "dwsep_cnn", "resnet18_cifar", "resnet9", "airbench",
                "mobilenet_v2", "shufflenet_v2", "efficientnet_b0", "resnet18", "resnet34",
                "resnet50", "resnet101", "wide_resnet50_2", "resnext50_32x4d", "convnext_tiny",
                "convnext_small", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
                "efficientnet_v2_s", "mobilenet_v3_small", "mobilenet_v3_large",
                "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf"}
    assert expected <= set(names)


def test_register_model_with_explicit_name():
    @register_model(name="_test_tiny_net")
    def _tiny(num_classes: int, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(in_channels, num_classes))

    try:
        assert "_test_tiny_net" in list_models()
        model = create_model("_test_tiny_net", 4, 2, width_mult=None)
        assert model(torch.randn(1, 2, 16, 16)).shape == (1, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_model(_tiny, name="_test_tiny_net")
    finally:
        from cnn_ray.models import registry
        registry._REGISTRY.pop("_test_tiny_net", None)


def test_load_pretrained_skips_head_when_classes_differ(tmp_path):
    source = create_model("resnet9", num_classes=100, width_mult=0.25)
    path = tmp_path / "weights.pt"
    torch.save({"model": {"module." + k: v for k, v in source.state_dict().items()}}, path)

    target = create_model("resnet9", num_classes=10, width_mult=0.25)
    skipped = load_pretrained(target, path)
    head = [n for n, m in target.named_modules() if isinstance(m, nn.Linear)][-1]
    assert skipped == [head + ".weight"]  # resnet9's linear has no bias
    stem_key = "0.0.weight"
    assert torch.equal(target.state_dict()[stem_key], source.state_dict()[stem_key])


def test_load_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_pretrained(create_model("simple_cnn", 10), tmp_path / "missing.pt")
    path = tmp_path / "other.pt"
    torch.save(create_model("resnet9", 10, width_mult=0.25).state_dict(), path)
    with pytest.raises(ValueError, match="other.pt"):
        load_pretrained(create_model("resnet9", 10, width_mult=0.5), path)  # body shapes differ


def test_airbench_widths_knob_overrides_width_mult():
    """``widths=(64, 128, 128)`` is airbench93's net: those group widths, ~0.11 GFLOP/image."""
    model = create_model("airbench", 10, widths=(64, 128, 128), width_mult=2.0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sorted({c.out_channels for c in convs[1:]}) == [64, 128]
    assert 0.09 <= count_flops(model) / 1e9 <= 0.12
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert (bn.momentum, bn.eps, bn.weight.requires_grad) == (0.1, 1e-5, True)  # defaults kept
    with pytest.raises(ValueError, match="airbench.*widths"):
        create_model("airbench", 10, widths=(64, 128))
