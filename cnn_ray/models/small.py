"""Our own small CNNs for small images: ``simple_cnn``, ``dwsep_cnn``, ``resnet9``,
``resnet18_cifar``, ``airbench`` (torchvision's ImageNet networks are in :mod:`.tv`).

All take ``(N, in_channels, H, W)`` float input with ``H, W >= 16`` (32x32 is the design point)
and return ``(N, num_classes)`` logits. The head pools adaptively, so any size >= 16 works.
Channel counts are ``width_mult`` times the base width, rounded to a multiple of 8 (at least 8)
so channels-last kernels vectorise well.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from .registry import register_model


def _ch(base: int, width_mult: float) -> int:
    """``base * width_mult`` rounded to a multiple of 8, at least 8."""
    return max(8, int(round(base * width_mult / 8)) * 8)


def _check(name: str, width_mult: float, depth: int, kernel_size: int, dropout: float) -> None:
    if not width_mult > 0:
        raise ValueError(f"{name}: width_mult must be > 0, got {width_mult}")
    if depth < 1:
        raise ValueError(f"{name}: depth must be >= 1, got {depth}")
    if kernel_size < 1:
        raise ValueError(f"{name}: kernel_size must be >= 1, got {kernel_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")


def _conv(c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1,
          separable: bool = False) -> nn.Module:
    """A bias-free conv; ``separable``: depthwise ``k x k`` then pointwise ``1 x 1`` (Xception).

    Stride 1 uses ``"same"`` padding (any ``kernel_size``); stride 2 pads ``(k - 1) // 2``.
    """
    pad = "same" if stride == 1 else (kernel_size - 1) // 2
    if not separable:
        return nn.Conv2d(c_in, c_out, kernel_size, stride, pad, bias=False)
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, kernel_size, stride, pad, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
    )


def _conv_bn_relu(c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1,
                  separable: bool = False) -> nn.Sequential:
    return nn.Sequential(_conv(c_in, c_out, kernel_size, stride, separable),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _head(c_in: int, num_classes: int, dropout: float, pool: nn.Module) -> nn.Sequential:
    return nn.Sequential(pool, nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))


# ------------------------------------------------------------------------------ simple_cnn
@register_model
def simple_cnn(num_classes: int, in_channels: int = 3, width_mult: float = 1.0, depth: int = 1,
               kernel_size: int = 3, dropout: float = 0.5) -> nn.Module:
    """The classic conv-pool-dense CNN of the Keras/PyTorch CIFAR-10 tutorials.

    Three stages of ``depth`` x (conv ``kernel_size`` + ReLU) then 2x2 max-pool, with
    32/64/128 x ``width_mult`` channels; then adaptive average pooling to 4x4 (the feature map
    a 32x32 input already has), flatten, dense 256 x ``width_mult`` + ReLU, dropout, dense
    ``num_classes``. No batch norm, as in the tutorials.

    Knobs: ``width_mult`` > 0 (1.0), ``depth`` >= 1 convs per stage (1; 2 is the VGG-like
    variant), ``kernel_size`` >= 1 (3), ``dropout`` in [0, 1) before the last dense layer (0.5).
    FLOPs at 32x32, defaults: ~0.02 GFLOP/image, 0.6 M params.

    Raises:
        ValueError: a knob is out of range.
    """
    _check("simple_cnn", width_mult, depth, kernel_size, dropout)
    layers: list[nn.Module] = []
    c = in_channels
    for base in (32, 64, 128):
        for _ in range(depth):
            c_out = _ch(base, width_mult)
            layers += [nn.Conv2d(c, c_out, kernel_size, padding="same"), nn.ReLU(inplace=True)]
            c = c_out
        layers.append(nn.MaxPool2d(2))
    hidden = _ch(256, width_mult)
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(c * 16, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


# ------------------------------------------------------------------------------- dwsep_cnn
class _DwSepBlock(nn.Sequential):
    """MobileNet-v1 block: depthwise k x k + BN + ReLU, pointwise 1x1 + BN + ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int):
        pad = "same" if stride == 1 else (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(c_in, c_in, kernel_size, stride, pad, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )


@register_model
def dwsep_cnn(num_classes: int, in_channels: int = 3, width_mult: float = 1.0, depth: int = 2,
              kernel_size: int = 3, dropout: float = 0.0) -> nn.Module:
    """A small MobileNet-v1-style CNN (Howard et al., 2017, arXiv:1704.04861) for small images.

    Stem: plain 3x3 conv, 32 x ``width_mult`` channels, stride 1, BN + ReLU. Then four stages of
    ``depth`` depthwise-separable blocks with 64/128/256/512 x ``width_mult`` channels; the first
    block of stages 2-4 has stride 2 (32x32 -> 4x4). Global average pool, dropout, linear.

    Knobs: ``width_mult`` > 0 (1.0), ``depth`` >= 1 blocks per stage (2), ``kernel_size`` >= 1
    of the depthwise convs (3), ``dropout`` in [0, 1) before the classifier (0.0).
    FLOPs at 32x32, defaults: ~0.06 GFLOP/image, 0.55 M params.

    Raises:
        ValueError: a knob is out of range.
    """
    _check("dwsep_cnn", width_mult, depth, kernel_size, dropout)
    c = _ch(32, width_mult)
    layers: list[nn.Module] = [_conv_bn_relu(in_channels, c, 3)]
    for i, base in enumerate((64, 128, 256, 512)):
        for j in range(depth):
            c_out = _ch(base, width_mult)
            layers.append(_DwSepBlock(c, c_out, kernel_size, 2 if (i > 0 and j == 0) else 1))
            c = c_out
    return nn.Sequential(*layers, _head(c, num_classes, dropout, nn.AdaptiveAvgPool2d(1)))


# --------------------------------------------------------------------------------- resnet9
class _Residual(nn.Module):
    """``x + f(x)``."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fn(x)


class _Scale(nn.Module):
    """Multiply by a constant (Page's 0.125 on the logits: a cooler softmax at init)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def _down(c_in: int, c_out: int, kernel_size: int, separable: bool) -> nn.Sequential:
    """conv -> 2x2 max-pool -> BN -> ReLU (airbench order: BN and ReLU run on 1/4 the pixels;
    equal to Page's conv-BN-ReLU-pool whenever the BN scale is positive)."""
    return nn.Sequential(_conv(c_in, c_out, kernel_size, 1, separable), nn.MaxPool2d(2),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _res(c: int, depth: int, kernel_size: int, separable: bool) -> _Residual:
    return _Residual(nn.Sequential(*(_conv_bn_relu(c, c, kernel_size, 1, separable)
                                     for _ in range(depth))))


@register_model
def resnet9(num_classes: int, in_channels: int = 3, width_mult: float = 1.0, depth: int = 2,
            kernel_size: int = 3, separable: bool = False, dropout: float = 0.0) -> nn.Module:
    """ResNet-9: the fast CIFAR-10 network of David Page (Myrtle.ai, "How to train your ResNet",
    2018, DAWNBench), also the ancestor of airbench (KellerJordan/cifar10-airbench).

    Layout (channels at ``width_mult=1``; k = ``kernel_size``)::

        prep    conv k 64, BN, ReLU                                  32x32
        layer1  conv k 128, maxpool 2, BN, ReLU; residual(depth x conv-BN-ReLU 128)   16x16
        layer2  conv k 256, maxpool 2, BN, ReLU                      8x8
        layer3  conv k 512, maxpool 2, BN, ReLU; residual(depth x conv-BN-ReLU 512)   4x4
        head    global max-pool, dropout, linear (no bias), x 0.125

    Differences from Page's net: max-pool sits before BN/ReLU (as in airbench; cheaper, same
    function for positive BN scales), and the final pool is adaptive so any ``H, W >= 16`` works.

    Knobs: ``width_mult`` > 0 scales 64/128/256/512 (1.0; 0.5 is ~4x cheaper, a good lighter
    choice on CPU), ``depth`` >= 1 convs per residual branch (2), ``kernel_size`` >= 1 (3),
    ``separable`` depthwise-separable convs outside the prep conv (False), ``dropout`` in [0, 1)
    before the linear layer (0.0).

    FLOPs per 32x32 image (:func:`count_flops`, 2 per multiply-add): ~0.76 GFLOP at
    ``width_mult=1`` (0.38 G multiply-adds, 6.6 M params), ~0.43 GFLOP at 0.75, ~0.19 GFLOP at
    0.5 (1.6 M params), ~0.09 GFLOP with ``separable=True``.

    Speed on 2 cores of an AMD EPYC without AVX512-BF16/AMX, batch 256, channels-last,
    forward + backward, shared machine: ~30 images/s fp32 at width 1, ~135 at width 0.5;
    bf16 autocast only ~1.5 images/s, because PyTorch then falls back to its slow reference
    convolution (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is False). Use fp32 on such CPUs.

    Raises:
        ValueError: a knob is out of range.
    """
    _check("resnet9", width_mult, depth, kernel_size, dropout)
    c1, c2, c3, c4 = (_ch(c, width_mult) for c in (64, 128, 256, 512))
    k, sep = kernel_size, separable
    return nn.Sequential(
        # prep stays plain: a separable conv on 1-3 input channels saves nothing
        _conv_bn_relu(in_channels, c1, k),
        _down(c1, c2, k, sep), _res(c2, depth, k, sep),
        _down(c2, c3, k, sep),
        _down(c3, c4, k, sep), _res(c4, depth, k, sep),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(c4, num_classes, bias=False), _Scale(0.125),
    )


# -------------------------------------------------------------------------- resnet18_cifar
class _BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016): two 3x3 conv-BN, identity or 1x1-conv shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, separable: bool):
        super().__init__()
        self.body = nn.Sequential(
            _conv(c_in, c_out, 3, stride, separable), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            _conv(c_out, c_out, 3, 1, separable), nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


@register_model
def resnet18_cifar(num_classes: int, in_channels: int = 3, width_mult: float = 1.0,
                   depth: int = 2, separable: bool = False, dropout: float = 0.0) -> nn.Module:
    """ResNet-18 (He et al., 2016, arXiv:1512.03385) in its CIFAR form: a 3x3 stride-1 stem and no
    max-pool, so a 32x32 input reaches the last stage at 4x4 (27 GMAC per 224 px image against
    the ImageNet ResNet-18's 1.8: use ``resnet18``, torchvision's, for large images).
    ``resnet18`` with ``small_input=True`` is the same layout without this family's knobs.

    Four stages of ``depth`` basic blocks with 64/128/256/512 x ``width_mult`` channels (stride 2
    at the start of stages 2-4), global average pool, dropout, linear.

    Knobs: ``width_mult`` > 0 (1.0), ``depth`` >= 1 blocks per stage (2 = ResNet-18; the
    parameter count grows linearly with it), ``separable`` depthwise-separable 3x3 convs in the
    blocks (False), ``dropout`` in [0, 1) before the classifier (0.0).
    FLOPs at 32x32, defaults: ~1.1 GFLOP/image, 11.2 M params.

    Raises:
        ValueError: a knob is out of range.
    """
    _check("resnet18_cifar", width_mult, depth, 3, dropout)
    c = _ch(64, width_mult)
    layers: list[nn.Module] = [_conv_bn_relu(in_channels, c, 3)]
    for i, base in enumerate((64, 128, 256, 512)):
        for j in range(depth):
            c_out = _ch(base, width_mult)
            layers.append(_BasicBlock(c, c_out, 2 if (i > 0 and j == 0) else 1, separable))
            c = c_out
    return nn.Sequential(*layers, _head(c, num_classes, dropout, nn.AdaptiveAvgPool2d(1)))


# -------------------------------------------------------------------------------- airbench
def _dirac_init(conv: nn.Conv2d) -> None:
    """airbench's identity init: the first ``in_channels`` filters pass their input through,
    an implicit residual for a net without skip connections."""
    if conv.groups == 1 and conv.out_channels >= conv.in_channels and conv.kernel_size[0] % 2:
        nn.init.dirac_(conv.weight.data[: conv.in_channels])


class _AirbenchGroup(nn.Sequential):
    """conv -> 2x2 max-pool -> BN -> GELU, then ``depth`` x (conv -> BN -> GELU)."""

    def __init__(self, c_in: int, c_out: int, depth: int, kernel_size: int):
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size, padding="same", bias=False),
                                   nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.GELU()]
        for _ in range(depth):
            layers += [nn.Conv2d(c_out, c_out, kernel_size, padding="same", bias=False),
                       nn.BatchNorm2d(c_out), nn.GELU()]
        super().__init__(*layers)
        for m in self:
            if isinstance(m, nn.Conv2d):
                _dirac_init(m)


@register_model
def airbench(num_classes: int, in_channels: int = 3, width_mult: float = 1.0, depth: int = 1,
             kernel_size: int = 3, dropout: float = 0.0,
             widths: Optional[Sequence[int]] = None) -> nn.Module:
    """The network of airbench94 (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single
    GPU", arXiv:2404.00498; KellerJordan/cifar10-airbench ``airbench94.py``): the lighter
    alternative to :func:`resnet9`, about 3x fewer FLOPs, with most channels at low resolution.

    Layout (channels at ``width_mult=1``)::

        stem    conv 2x2 (no padding, bias) 2*4*in_channels, GELU      32 -> 31
        group1  conv 64, maxpool 2, BN, GELU; depth x (conv 64, BN, GELU)     15x15
        group2  conv 256, ...                                                  7x7
        group3  conv 256, ...                                                  3x3
        head    global max-pool, dropout, linear (no bias), x 1/9

    Convs get airbench's identity (dirac) init. Not included, because they belong to the training
    recipe: the data-dependent whitening init of the stem (and freezing its weight), frozen BN
    scales, lookahead/EMA and test-time augmentation.

    Knobs: ``width_mult`` > 0 scales 64/256/256 (1.0), ``depth`` >= 1 convs after the pool in
    each group (1), ``kernel_size`` >= 1 of the group convs (3), ``dropout`` in [0, 1) before the
    linear layer (0.0), ``widths`` the three group widths, overriding ``width_mult`` (None;
    ``(64, 128, 128)`` is airbench93's net, ``lib_airbench93.py``). FLOPs per 32x32 image:
    ~0.24 GFLOP at defaults, 2.0 M params; ~0.11 GFLOP, 0.57 M params with
    ``widths=(64, 128, 128)``.

    BatchNorm layers keep torch's defaults (momentum 0.1, eps 1e-5, trainable scale); airbench's
    settings (momentum 0.4 in torch's convention, eps 1e-12, frozen scale) are the recipe's
    :func:`cnn_ray.recipe.configure_batchnorm`.

    Raises:
        ValueError: a knob is out of range, or ``widths`` is not three ints >= 1.
    """
    _check("airbench", width_mult, depth, kernel_size, dropout)
    c_stem = 2 * 4 * in_channels  # airbench: 2 x (channels x 2 x 2) whitening filters, +/- pairs
    if widths is None:
        c1, c2, c3 = (_ch(c, width_mult) for c in (64, 256, 256))
    else:
        if len(widths) != 3 or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(f"airbench: widths must be three ints >= 1, got {widths!r}")
        c1, c2, c3 = widths
    return nn.Sequential(
        nn.Conv2d(in_channels, c_stem, 2, bias=True), nn.GELU(),
        _AirbenchGroup(c_stem, c1, depth, kernel_size),
        _AirbenchGroup(c1, c2, depth, kernel_size),
        _AirbenchGroup(c2, c3, depth, kernel_size),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(c3, num_classes, bias=False), _Scale(1 / 9),
    )
