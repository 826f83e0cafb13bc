"""torchvision architectures in the registry: ``mobilenet_v2``, ``shufflenet_v2``,
``efficientnet_b0``.

Always built with ``weights=None``: nothing is ever downloaded (use
:func:`cnn_ray.models.load_pretrained` with a local file for transfer learning). Each is adapted to
``num_classes`` (torchvision's own head, resized) and ``in_channels`` (the first conv is rebuilt
when ``in_channels != 3``).

Small images: with ``small_input=True`` (the default, since the project's design point is 32x32)
the stem downsamples less, so a 32x32 image is not shrunk to 1x1 before the last stage; this costs
4x (16x for ShuffleNet) the FLOPs of the ImageNet stem at the same resolution. Pass
``small_input=False`` for images of about 96 px and larger to keep the ImageNet stem.

torchvision is imported when one of these models is built, not when the registry is: importing
``torchvision.models`` pulls in ``torchvision.ops`` and ``torch._dynamo`` (about 1-2 s on a 2-core
box), which every Train worker and trial process of the small families would otherwise pay.
"""

from __future__ import annotations

import math

from torch import nn

from .registry import register_model


def _adapt_stem(conv: nn.Conv2d, in_channels: int, small_input: bool) -> nn.Conv2d:
    """``conv`` with stride 1 when ``small_input``, rebuilt for ``in_channels`` when it differs."""
    stride = (1, 1) if small_input else conv.stride
    if in_channels == conv.in_channels:
        conv.stride = stride
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride, conv.padding,
                    bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out")  # torchvision's conv init
    return new


def _check_dropout(name: str, dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")


@register_model
def mobilenet_v2(num_classes: int, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2, small_input: bool = True) -> nn.Module:
    """MobileNetV2 (Sandler et al., 2018, arXiv:1801.04381), ``torchvision.models.mobilenet_v2``.

    ``small_input``: the stem conv has stride 1 instead of 2 (total downsampling 16x, a 32x32
    image ends at 2x2). Knobs: ``width_mult`` > 0 (1.0; torchvision rounds channels to multiples
    of 8), ``dropout`` in [0, 1) before the classifier (0.2, torchvision's default).
    FLOPs at 32x32, defaults: ~0.05 GFLOP/image (2.2 M params at 10 classes).

    Raises:
        ValueError: a knob is out of range.
    """
    if not width_mult > 0:
        raise ValueError(f"mobilenet_v2: width_mult must be > 0, got {width_mult}")
    _check_dropout("mobilenet_v2", dropout)
    import torchvision.models as tvm

    model = tvm.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult,
                             dropout=dropout)
    stem = model.features[0]
    stem[0] = _adapt_stem(stem[0], in_channels, small_input)
    return model


_SHUFFLENET = {0.5: "shufflenet_v2_x0_5", 1.0: "shufflenet_v2_x1_0", 1.5: "shufflenet_v2_x1_5",
               2.0: "shufflenet_v2_x2_0"}  # width_mult -> torchvision builder


@register_model
def shufflenet_v2(num_classes: int, in_channels: int = 3, width_mult: float = 1.0,
                  dropout: float = 0.0, small_input: bool = True) -> nn.Module:
    """ShuffleNet V2 (Ma et al., 2018, arXiv:1807.11164), ``torchvision.models.shufflenet_v2_x*``.

    ``small_input``: stem conv stride 1 and no stem max-pool (total downsampling 8x, a 32x32
    image ends at 4x4). Knobs: ``width_mult`` one of 0.5, 1.0, 1.5, 2.0 (torchvision's x0_5 ...
    x2_0; 1.0), ``dropout`` in [0, 1) on the pooled features (0.0; applied as channel dropout
    before the global average pool, which is the same thing and keeps torchvision's state-dict
    keys). FLOPs at 32x32, defaults: ~0.09 GFLOP/image (1.3 M params at 10 classes).

    Raises:
        ValueError: ``width_mult`` is not one of the four, or ``dropout`` is out of range.
    """
    _check_dropout("shufflenet_v2", dropout)
    builder = next((f for w, f in _SHUFFLENET.items() if math.isclose(w, width_mult)), None)
    if builder is None:
        raise ValueError(f"shufflenet_v2: width_mult must be one of {sorted(_SHUFFLENET)}, "
                         f"got {width_mult}")
    import torchvision.models as tvm

    model = getattr(tvm, builder)(weights=None, num_classes=num_classes)
    model.conv1[0] = _adapt_stem(model.conv1[0], in_channels, small_input)
    if small_input:
        model.maxpool = nn.Identity()
    if dropout > 0:
        # Dropout2d zeroes whole channels; the global mean that follows turns that into dropout
        # on the pooled feature vector. It has no parameters, so the keys stay torchvision's.
        model.conv5.append(nn.Dropout2d(dropout))
    return model


def _efficientnet_b0_setting(width_mult: float) -> list:
    """EfficientNet-B0's stages (Tan & Le, 2019, Table 1).

    Rows: expand ratio, kernel, stride, in channels, out channels, layers."""
    from torchvision.models.efficientnet import MBConvConfig

    rows = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
            (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
    return [MBConvConfig(*row, width_mult=width_mult, depth_mult=1.0) for row in rows]


@register_model
def efficientnet_b0(num_classes: int, in_channels: int = 3, width_mult: float = 1.0,
                    dropout: float = 0.2, small_input: bool = True) -> nn.Module:
    """EfficientNet-B0 (Tan & Le, 2019, arXiv:1905.11946), ``torchvision.models.EfficientNet``
    built from B0's stage table, with stochastic depth 0.2 as in torchvision.

    ``small_input``: the stem conv has stride 1 instead of 2 (total downsampling 16x, a 32x32
    image ends at 2x2). Knobs: ``width_mult`` > 0 (1.0 = B0; B1-B7 also scale depth and
    resolution, which this knob does not), ``dropout`` in [0, 1) before the classifier (0.2).
    FLOPs at 32x32, defaults: ~0.06 GFLOP/image (4.0 M params at 10 classes).

    Raises:
        ValueError: a knob is out of range.
    """
    if not width_mult > 0:
        raise ValueError(f"efficientnet_b0: width_mult must be > 0, got {width_mult}")
    _check_dropout("efficientnet_b0", dropout)
    from torchvision.models import EfficientNet

    model = EfficientNet(_efficientnet_b0_setting(width_mult), dropout=dropout,
                             stochastic_depth_prob=0.2, num_classes=num_classes)
    stem = model.features[0]
    stem[0] = _adapt_stem(stem[0], in_channels, small_input)
    return model
