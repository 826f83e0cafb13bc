"""BlurPool (``model.blurpool``, cnn_ray/recipe/blurpool.py): which convs it wraps, what the blur
does to an image, that gradients reach the wrapped weights, that state dicts load across the
switch, and the config key through ``prepare_model`` and a YAML round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.config_io import merge_dotted
from cnn_ray.models import create_model
from cnn_ray.recipe.apply import prepare_model
from cnn_ray.recipe.blurpool import BlurPoolConv2d, apply_blurpool, binomial_kernel

RESNET18_STRIDED = ["layer2.0.conv1", "layer2.0.downsample.0", "layer3.0.conv1",
                    "layer3.0.downsample.0", "layer4.0.conv1", "layer4.0.downsample.0"]


def _resnet18(seed: int = 0, **knobs) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=5, in_channels=3, **knobs)


def test_resnet18_gets_its_six_strided_convs_wrapped_not_the_stem():
    model = _resnet18()
    names = apply_blurpool(model)
    assert names == RESNET18_STRIDED
    wrapped = [n for n, m in model.named_modules() if isinstance(m, BlurPoolConv2d)]
    assert wrapped == RESNET18_STRIDED
    assert type(model.conv1) is nn.Conv2d  # the RGB stem: 3 input channels < 16
    assert apply_blurpool(model) == []  # a converted model is left as it is
    # the small-input stem has no stride-2 conv1 either; the same six convs are wrapped
    assert apply_blurpool(_resnet18(small_input=True)) == RESNET18_STRIDED


def test_output_shape_and_state_dict_unchanged_and_checkpoints_load_either_way():
    plain, blurred = _resnet18(seed=0), _resnet18(seed=0)
    x = torch.randn(2, 3, 64, 64)
    before = plain.state_dict()
    apply_blurpool(blurred)
    after = blurred.state_dict()  # the blur buffer is not persistent: same keys and tensors
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert blurred(x).shape == plain(x).shape == (2, 5)
    assert not torch.allclose(blurred.eval()(x), plain.eval()(x))  # the blur does change it
    other = _resnet18(seed=1)
    apply_blurpool(other)
    other.load_state_dict(before)  # saved without BlurPool -> loads into a BlurPool model
    _resnet18(seed=2).load_state_dict(after)  # and back
    assert torch.equal(other.layer2[0].conv1.weight, plain.layer2[0].conv1.weight)


def test_blur_keeps_a_constant_image_constant_and_equals_blur_then_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, stride=2, padding=1, bias=True)
    wrapped = BlurPoolConv2d.from_conv(conv)
    assert wrapped.weight is conv.weight and wrapped.bias is conv.bias  # shared, not copied
    assert not any(n == "blur_filter" for n, _ in wrapped.named_parameters())
    kernel = binomial_kernel(16)
    assert kernel.shape == (16, 1, 3, 3) and torch.allclose(kernel.sum((1, 2, 3)),
                                                            torch.ones(16))
    const = torch.full((1, 16, 9, 9), 0.7)
    blurred = F.conv2d(F.pad(const, (1, 1, 1, 1), mode="reflect"), wrapped.blur_filter,
                       groups=16)
    assert torch.allclose(blurred, const)  # borders included (reflect padding)
    assert torch.allclose(wrapped(const), conv(const), atol=1e-6)  # blur of a constant: a no-op
    x = torch.randn(2, 16, 10, 10)
    expected = conv(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=16))
    assert torch.allclose(wrapped(x), expected, atol=1e-6)
    # an impulse spreads as the binomial kernel: its centre keeps 4/16 of the mass
    impulse = torch.zeros(1, 16, 5, 5)
    impulse[..., 2, 2] = 1.0
    spread = F.conv2d(F.pad(impulse, (1, 1, 1, 1), mode="reflect"), kernel, groups=16)
    assert spread[0, 0, 2, 2].item() == pytest.approx(0.25)
    assert spread[0, 0, 1, 1].item() == pytest.approx(1 / 16)
    one_pixel = torch.randn(1, 16, 1, 1)  # reflect cannot pad a 1x1 map: replicated instead
    assert wrapped(one_pixel).shape == conv(one_pixel).shape


def test_gradients_reach_the_wrapped_weights_not_the_blur():
    model = _resnet18()
    apply_blurpool(model)
    x = torch.randn(2, 3, 64, 64)
    F.cross_entropy(model(x), torch.tensor([0, 3])).backward()
    for name in RESNET18_STRIDED:
        conv = model.get_submodule(name)
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
        assert not conv.blur_filter.requires_grad


def _cfg(**dotted) -> TrainConfig:
    base = {"data": {"train": "unused", "image_size": 64},
            "model": {"name": "resnet18", "small_input": False}}
    return TrainConfig.from_dict(merge_dotted(base, dotted), check_paths=False)


def test_config_key_round_trip_and_prepare_model(tmp_path):
    import yaml

    from cnn_ray.config_io import load_train_config

    assert _cfg().model.blurpool is False  # off by default
    cfg = _cfg(**{"model.blurpool": True})
    assert TrainConfig.from_dict(cfg.to_dict(), check_paths=False) == cfg
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_train_config(path, check_paths=False).model.blurpool is True
    assert load_train_config(path, ["model.blurpool=false"], check_paths=False).model.blurpool \
        is False
    model = prepare_model(_resnet18(), cfg)  # blur, then channels_last (the buffer follows)
    wrapped = [m for m in model.modules() if isinstance(m, BlurPoolConv2d)]
    assert len(wrapped) == 6
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert not any(isinstance(m, BlurPoolConv2d) for m in prepare_model(_resnet18(), _cfg())
                   .modules())
    with pytest.raises(ConfigError, match="model.blurpool"):
        _cfg(**{"model.blurpool": "sometimes"})
