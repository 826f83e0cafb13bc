"""BlurPool: low-pass filter before every strided convolution (anti-aliased downsampling).

Card
----
What: a strided conv samples its input every ``stride`` pixels, so a one-pixel shift of the
image can change the output a lot (aliasing). BlurPool first filters the conv's input with a
fixed depthwise 3x3 binomial kernel ``[1, 2, 1]^T [1, 2, 1] / 16`` (stride 1, reflect padding,
replicate on a 1-pixel map: the output has the input's size, a constant image stays
constant), then runs the original strided conv. The kernel is a registered, non-persistent
buffer (not a parameter, not in the state dict): a checkpoint or pretrained state dict loads
with or without BlurPool, and the parameter names do not change. Applied to each
``nn.Conv2d`` with a stride above 1 and at least 16 input channels, i.e. not the RGB stem: on
torchvision's ResNet-18 the first conv of layers 2-4 and their 1x1 downsample convs (6 convs);
max-pools are left alone.
Values that work: FFCV's ImageNet ResNet-18/50 configs train with it on (``blurpool: 1``); it
costs one depthwise 3x3 per strided conv. Whether it pays on a short low-resolution run is for
the ablation to show (``benchmarks/ablate.py --recipe photo``, variant ``no_blurpool``).
Source: Richard Zhang, "Making Convolutional Networks Shift-Invariant Again" (ICML 2019,
adobe/antialiased-cnns, reflect padding); applied as in libffcv/ffcv-imagenet
``BlurPoolConv2d`` (blur before the strided conv, ``in_channels >= 16``) and MosaicML
Composer's ``BlurPool`` (``blur_first``, ``min_channels=16``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_CHANNELS = 16  # FFCV / Composer: convs on fewer input channels (the RGB stem) are left alone


def binomial_kernel(channels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``(channels, 1, 3, 3)`` depthwise binomial filter ``[1,2,1]^T [1,2,1] / 16`` (each
    channel's 3x3 kernel sums to 1)."""
    row = torch.tensor([1.0, 2.0, 1.0], dtype=dtype)
    k = torch.outer(row, row) / 16.0
    return k.expand(channels, 1, 3, 3).contiguous()


class BlurPoolConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose input is first blurred by :func:`binomial_kernel` (depthwise,
    stride 1, reflect padding); otherwise the same conv, with the same parameter names.

    Input ``(N, C_in, H, W)`` float (any memory format); output as the plain conv's. Build it
    from an existing conv with :meth:`from_conv` (shares that conv's parameters).
    """

    blur_filter: torch.Tensor

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "BlurPoolConv2d":
        """A BlurPool conv with ``conv``'s hyperparameters and its very weight/bias tensors
        (no copy), the blur buffer on the weight's device and dtype.

        Raises:
            ValueError: ``conv`` is already a :class:`BlurPoolConv2d` or has a non-zeros
                ``padding_mode`` (the blur would meet it twice).
        """
        if isinstance(conv, BlurPoolConv2d):
            raise ValueError("conv is already a BlurPoolConv2d")
        if conv.padding_mode != "zeros":
            raise ValueError(f"BlurPool needs padding_mode='zeros', got {conv.padding_mode!r}")
        with torch.device("meta"):  # no throw-away allocation: the parameters are replaced
            new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                      bias=conv.bias is not None)
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        new.register_buffer("blur_filter", binomial_kernel(conv.in_channels).to(
            conv.weight.device, conv.weight.dtype), persistent=False)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.blur_filter.to(x.dtype)
        # reflect (Zhang's default) needs 2+ pixels; a 1x1 map (tiny inputs) is replicated
        mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode=mode), k, groups=self.in_channels)
        return super().forward(blurred)


def apply_blurpool(model: nn.Module, min_channels: int = MIN_CHANNELS) -> list[str]:
    """Replace, in place, every ``nn.Conv2d`` of ``model`` with a stride above 1 and at least
    ``min_channels`` input channels by a :class:`BlurPoolConv2d` sharing its parameters.

    The state dict keeps its keys and tensors (the blur buffer is not persistent), so weights
    saved with or without BlurPool load either way. Call before ``channels_last``, DDP and
    ``torch.compile``. Returns the dotted names of the replaced convs (empty: nothing to do,
    e.g. a model without strided convs or one already converted).
    """
    targets = [(name, m) for name, m in model.named_modules()
               if type(m) is nn.Conv2d and max(m.stride) > 1 and m.in_channels >= min_channels
               and m.padding_mode == "zeros"]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, BlurPoolConv2d.from_conv(conv))
    return [name for name, _ in targets]
