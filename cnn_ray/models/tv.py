"""torchvision's ImageNet architectures in the registry, under torchvision's own names.

``resnet18/34/50/101``, ``wide_resnet50_2``, ``resnext50_32x4d``, ``convnext_tiny/small``,
``efficientnet_b0..b3``, ``efficientnet_v2_s``, ``mobilenet_v2``, ``mobilenet_v3_small/large``,
``shufflenet_v2`` (``width_mult`` picks x0_5 ... x2_0) and ``regnet_y_400mf/800mf/1_6gf/3_2gf``.
Each is torchvision's builder (``torchvision.models.get_model(name, weights=None)``) with its
ImageNet stem and torchvision's state-dict keys, so torchvision's weights load into it
(``model.pretrained: imagenet``, :mod:`cnn_ray.models.weights`); nothing is downloaded here. The
head is torchvision's own, built for ``num_classes``; ``in_channels != 3`` rebuilds the first
conv with the same kernel and stride.

``small_input`` (default False; the config's ``model.small_input: auto`` turns it on below
96 px) swaps the stem for small images, so a 32x32 image is not shrunk to 1x1 before the last
stage. Per family:

- ResNet, Wide ResNet, ResNeXt: a 3x3 stride-1 first conv (64 channels) and no max-pool, the
  CIFAR form of He et al. 2016 (arXiv:1512.03385, section 4.2) as in ``resnet18_cifar``:
  total downsampling 8x, 16x the ImageNet stem's FLOPs at the same size. Pretrained weights
  leave that conv freshly initialised (its kernel differs), the rest loads.
- MobileNetV2/V3, EfficientNet, EfficientNetV2, RegNet: the first conv has stride 1 instead
  of 2 (16x downsampling, 4x the FLOPs); pretrained weights load unchanged.
- ShuffleNetV2: stride-1 first conv and no max-pool (8x, 16x the FLOPs).
- ConvNeXt: none (its 4x4 stride-4 patchify stem has no small form); it needs >= 32 px.

torchvision is imported when one of these models is built, not when the registry is: importing
``torchvision.models`` pulls in ``torchvision.ops`` and ``torch._dynamo`` (about 1-2 s on a 2-core
box), which every Train worker and trial process of the small families would otherwise pay.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from torch import nn

from .registry import register_model

# registry name -> the torchvision builder whose weights fit it, given the knobs
TORCHVISION_BUILDERS: dict[str, Callable[[dict], str]] = {}

_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2",
            "resnext50_32x4d")
_STRIDE_STEM = {  # family -> (builder names, dotted path of the first conv)
    "efficientnet": (("efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
                      "efficientnet_v2_s"), "features.0.0"),
    "mobilenet_v3": (("mobilenet_v3_small", "mobilenet_v3_large"), "features.0.0"),
    "regnet": (("regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf"),
               "stem.0"),
}
_SHUFFLENET = {0.5: "shufflenet_v2_x0_5", 1.0: "shufflenet_v2_x1_0", 1.5: "shufflenet_v2_x1_5",
               2.0: "shufflenet_v2_x2_0"}  # width_mult -> torchvision builder


def torchvision_builder(name: str, knobs: dict) -> Optional[str]:
    """The torchvision builder (and weights family, ``get_model_weights``) of registry model
    ``name`` built with ``knobs``; None for a model that is not torchvision's."""
    pick = TORCHVISION_BUILDERS.get(name)
    return pick(knobs) if pick else None


def _build(builder: str, num_classes: int, **kwargs) -> nn.Module:
    import torchvision.models as tvm

    return tvm.get_model(builder, weights=None, num_classes=num_classes, **kwargs)


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _conv(in_channels: int, like: nn.Conv2d, kernel=None, stride=None, padding=None) -> nn.Conv2d:
    """A fresh conv shaped like ``like`` (optionally another kernel/stride/padding)."""
    conv = nn.Conv2d(in_channels, like.out_channels, kernel or like.kernel_size,
                     stride or like.stride, like.padding if padding is None else padding,
                     bias=like.bias is not None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision's
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _stride_one_stem(model: nn.Module, path: str, in_channels: int, small_input: bool) -> None:
    """The first conv at ``path``: stride 1 when ``small_input``; rebuilt for ``in_channels``."""
    conv = _get(model, path)
    if in_channels != conv.in_channels:
        conv = _conv(in_channels, conv)
        _set(model, path, conv)
    if small_input:
        conv.stride = (1, 1)


def _check(name: str, width_mult: Optional[float] = None, dropout: Optional[float] = None) -> None:
    if width_mult is not None and not width_mult > 0:
        raise ValueError(f"{name}: width_mult must be > 0, got {width_mult}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")


def _register(name: str, factory: Callable, builder: Callable[[dict], str], doc: str,
              min_size: int = 16) -> None:
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    register_model(factory, name=name, min_size=min_size)
    TORCHVISION_BUILDERS[name] = builder


# ------------------------------------------------------------------------------ ResNets
def _add_resnet(name: str) -> None:
    def factory(num_classes: int, in_channels: int = 3, small_input: bool = False) -> nn.Module:
        model = _build(name, num_classes)
        if small_input:  # the CIFAR stem: 3x3 stride 1, no max-pool
            model.conv1 = _conv(in_channels, model.conv1, kernel=3, stride=1, padding=1)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = _conv(in_channels, model.conv1)
        return model

    _register(name, factory, lambda knobs: name, f"""``torchvision.models.{name}`` (He et al.,
    2016, arXiv:1512.03385; Wide ResNet: Zagoruyko & Komodakis 2016; ResNeXt: Xie et al. 2017)
    with its 7x7 stride-2 stem and max-pool.

    ``small_input``: a 3x3 stride-1 first conv and no max-pool (the CIFAR form; 16x the
    FLOPs at the same size). No other knobs.""")


# ------------------------------------------------------------------ stride-2 conv stems
def _add_stride_stem(name: str, path: str, source: str) -> None:
    def factory(num_classes: int, in_channels: int = 3, dropout: Optional[float] = None,
                small_input: bool = False) -> nn.Module:
        _check(name, dropout=dropout)
        model = _build(name, num_classes, **({} if dropout is None else {"dropout": dropout}))
        _stride_one_stem(model, path, in_channels, small_input)
        return model

    _register(name, factory, lambda knobs: name, f"""``torchvision.models.{name}`` ({source})
    with its stride-2 stem conv.

    ``small_input``: that conv has stride 1 (4x the FLOPs at the same size). Knobs:
    ``dropout`` in [0, 1) before the classifier (None: torchvision's default for the model).

    Raises:
        ValueError: ``dropout`` is out of range.""")


_SOURCES = {"efficientnet": "Tan & Le, 2019, arXiv:1905.11946; V2: Tan & Le, 2021, "
                            "arXiv:2104.00298",
            "mobilenet_v3": "Howard et al., 2019, arXiv:1905.02244",
            "regnet": "Radosavovic et al., 2020, arXiv:2003.13678"}
for _name in _RESNETS:
    _add_resnet(_name)
for _family, (_names, _path) in _STRIDE_STEM.items():
    for _name in _names:
        _add_stride_stem(_name, _path, _SOURCES[_family])


# ------------------------------------------------------------------------------ ConvNeXt
def _add_convnext(name: str) -> None:
    def factory(num_classes: int, in_channels: int = 3) -> nn.Module:
        model = _build(name, num_classes)
        if in_channels != 3:
            _stride_one_stem(model, "features.0.0", in_channels, False)
        return model

    _register(name, factory, lambda knobs: name, f"""``torchvision.models.{name}`` (Liu et al.,
    2022, "A ConvNet for the 2020s", arXiv:2201.03545): 4x4 stride-4 patchify stem, stochastic
    depth as torchvision sets it. No ``small_input`` (the patchify stem has no small form); the
    input must be at least 32 px. No knobs.""", min_size=32)


for _name in ("convnext_tiny", "convnext_small"):
    _add_convnext(_name)


# ------------------------------------------------------------------------------ MobileNetV2
@register_model
def mobilenet_v2(num_classes: int, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """MobileNetV2 (Sandler et al., 2018, arXiv:1801.04381), ``torchvision.models.mobilenet_v2``.

    ``small_input``: the stem conv has stride 1 instead of 2 (total downsampling 16x, a 32x32
    image ends at 2x2). Knobs: ``width_mult`` > 0 (1.0; torchvision rounds channels to multiples
    of 8; its weights fit 1.0 only), ``dropout`` in [0, 1) before the classifier (0.2,
    torchvision's default). At 32x32 with ``small_input``: ~0.05 GFLOP/image (2.2 M params at
    10 classes).

    Raises:
        ValueError: a knob is out of range.
    """
    _check("mobilenet_v2", width_mult, dropout)
    model = _build("mobilenet_v2", num_classes, width_mult=width_mult, dropout=dropout)
    _stride_one_stem(model, "features.0.0", in_channels, small_input)
    return model


TORCHVISION_BUILDERS["mobilenet_v2"] = lambda knobs: "mobilenet_v2"


# ------------------------------------------------------------------------------ ShuffleNetV2
@register_model
def shufflenet_v2(num_classes: int, in_channels: int = 3, width_mult: float = 1.0,
                  dropout: float = 0.0, small_input: bool = False) -> nn.Module:
    """ShuffleNet V2 (Ma et al., 2018, arXiv:1807.11164), ``torchvision.models.shufflenet_v2_x*``.

    ``small_input``: stem conv stride 1 and no stem max-pool (total downsampling 8x, a 32x32
    image ends at 4x4). Knobs: ``width_mult`` one of 0.5, 1.0, 1.5, 2.0 (torchvision's x0_5 ...
    x2_0; 1.0), ``dropout`` in [0, 1) on the pooled features (0.0; applied as channel dropout
    before the global average pool, which is the same thing and keeps torchvision's state-dict
    keys). At 32x32 with ``small_input``: ~0.09 GFLOP/image (1.3 M params at 10 classes).

    Raises:
        ValueError: ``width_mult`` is not one of the four, or ``dropout`` is out of range.
    """
    _check("shufflenet_v2", dropout=dropout)
    builder = _shufflenet_builder({"width_mult": width_mult})
    if builder is None:
        raise ValueError(f"shufflenet_v2: width_mult must be one of {sorted(_SHUFFLENET)}, "
                         f"got {width_mult}")
    model = _build(builder, num_classes)
    _stride_one_stem(model, "conv1.0", in_channels, small_input)
    if small_input:
        model.maxpool = nn.Identity()
    if dropout > 0:
        # Dropout2d zeroes whole channels; the global mean that follows turns that into dropout
        # on the pooled feature vector. It has no parameters, so the keys stay torchvision's.
        model.conv5.append(nn.Dropout2d(dropout))
    return model


def _shufflenet_builder(knobs: dict) -> Optional[str]:
    width = knobs.get("width_mult", 1.0)
    return next((f for w, f in _SHUFFLENET.items() if math.isclose(w, width)), None)


TORCHVISION_BUILDERS["shufflenet_v2"] = _shufflenet_builder


# ------------------------------------------------------------------------------ EfficientNet-B0
def _efficientnet_b0_setting(width_mult: float) -> list:
    """EfficientNet-B0's stages (Tan & Le, 2019, Table 1).

    Rows: expand ratio, kernel, stride, in channels, out channels, layers."""
    from torchvision.models.efficientnet import MBConvConfig

    rows = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
            (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
    return [MBConvConfig(*row, width_mult=width_mult, depth_mult=1.0) for row in rows]


@register_model
def efficientnet_b0(num_classes: int, in_channels: int = 3, width_mult: float = 1.0,
                    dropout: float = 0.2, small_input: bool = False) -> nn.Module:
    """EfficientNet-B0 (Tan & Le, 2019, arXiv:1905.11946), ``torchvision.models.EfficientNet``
    built from B0's stage table, with stochastic depth 0.2 as in torchvision (at
    ``width_mult=1`` the same network and keys as ``torchvision.models.efficientnet_b0``).

    ``small_input``: the stem conv has stride 1 instead of 2 (total downsampling 16x, a 32x32
    image ends at 2x2). Knobs: ``width_mult`` > 0 (1.0 = B0; B1-B7 also scale depth and
    resolution, which this knob does not), ``dropout`` in [0, 1) before the classifier (0.2).
    At 32x32 with ``small_input``: ~0.06 GFLOP/image (4.0 M params at 10 classes).

    Raises:
        ValueError: a knob is out of range.
    """
    _check("efficientnet_b0", width_mult, dropout)
    from torchvision.models import EfficientNet

    model = EfficientNet(_efficientnet_b0_setting(width_mult), dropout=dropout,
                         stochastic_depth_prob=0.2, num_classes=num_classes)
    _stride_one_stem(model, "features.0.0", in_channels, small_input)
    return model


TORCHVISION_BUILDERS["efficientnet_b0"] = lambda knobs: "efficientnet_b0"
