"""Patch-whitening initialisation of a network's first convolution.

Card
----
What: set the first conv's filters to the eigenvectors of the (uncentred) covariance of the
``k x k`` patches of a sample of training images, each scaled by ``1 / sqrt(eigenvalue + eps)``,
and append their negatives (``+/-`` pairs, so a following ReLU/GELU keeps both signs). The
layer's output on a patch is then decorrelated with unit second moment per channel: the net
starts from whitened input, and the weight is frozen (only its bias trains, for a few epochs).
Values that work: ``kernel_size=2`` (``2 * C * 4 = 24`` filters for RGB), ``eps=5e-4`` on
inputs normalised to zero mean / unit std per channel, a sample of 5,000 training images,
bias trained for 3 epochs (then its learning rate drops to 0).
Source: Keller Jordan, airbench (``init_whitening_conv`` in ``airbench94.py``; its ablation:
without it 22 instead of 9.9 epochs to 94%), after tysam-code's hlb-CIFAR10 and David Page,
"How to train your ResNet 8" (2019).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from cnn_ray.models.registry import first_conv  # one helper, also cnn_ray.recipe.first_conv

_CHUNK = 1024  # images per chunk when accumulating the patch covariance


def _as_float_nchw(sample, mean: Optional[Sequence[float]],
                   std: Optional[Sequence[float]]) -> torch.Tensor:
    """``(N, C, H, W)`` float32: uint8 NHWC is scaled to [0, 1] and normalised with mean/std."""
    x = torch.from_numpy(np.asarray(sample)) if isinstance(sample, np.ndarray) else sample
    if not torch.is_tensor(x) or x.ndim != 4:
        raise ValueError(f"sample must be a 4-D array/tensor, got {getattr(x, 'shape', type(x))}")
    if x.dtype == torch.uint8:
        c = x.shape[3]
        x = x.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if mean is not None:
            x = x - torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1).expand(c, 1, 1)
        if std is not None:
            x = x / torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1).expand(c, 1, 1)
        return x
    if not x.is_floating_point():
        raise ValueError(f"sample must be uint8 NHWC or float NCHW, got {x.dtype}")
    return x.to(torch.float32)


def patch_second_moment(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``E[p p^T]`` over all ``k x k`` patches (stride 1, no padding) of ``x``.

    Args:
        x: ``(N, C, H, W)`` float images.
    Returns:
        ``(C*k*k, C*k*k)`` float64; patch vectors are flattened in conv-weight order
        ``(C, kh, kw)``.
    """
    k = kernel_size
    d = x.shape[1] * k * k
    acc = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for chunk in x.split(_CHUNK):
        # (n, C, H', W', k, k) -> (n, H', W', C, k, k) -> (patches, C*k*k)
        p = chunk.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, d)
        p = p.double() if p.device.type == "cpu" else p.float()  # no float64 on most GPUs
        acc += (p.T @ p).to(device="cpu", dtype=torch.float64)
        count += p.shape[0]
    if count == 0:
        raise ValueError(f"sample of shape {tuple(x.shape)} has no {k}x{k} patches")
    return acc / count


def patch_whitening_weights(sample, kernel_size: int = 2, eps: float = 5e-4, *,
                            mean: Optional[Sequence[float]] = None,
                            std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Whitening filters for a ``kernel_size`` conv from a sample of images.

    Args:
        sample: the images the first conv will see: ``(N, C, H, W)`` float (already
            normalised), or ``(N, H, W, C)`` uint8 (numpy or torch), then scaled to [0, 1] and
            normalised with ``mean``/``std`` (per channel, units of ``x / 255``) when given --
            the same normalisation as :func:`cnn_ray.data.augment.normalize_batch`.
        kernel_size: ``k`` (2 in airbench).
        eps: added to each eigenvalue before the inverse square root (limits the gain of
            near-empty directions; 5e-4 for unit-variance inputs).
    Returns:
        ``(2*C*k*k, C, k, k)`` float32 weight on the CPU: eigenvectors by decreasing eigenvalue,
        scaled by ``1/sqrt(eigval + eps)``, followed by their negatives.
    Raises:
        ValueError: the sample is not 4-D uint8/float, or too small for one patch.
    """
    x = _as_float_nchw(sample, mean, std)
    c, k = x.shape[1], kernel_size
    cov = patch_second_moment(x, k)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    eigvals, eigvecs = eigvals.flip(0).clamp_min(0.0), eigvecs.flip(1)
    filters = (eigvecs.T / torch.sqrt(eigvals + eps)[:, None]).reshape(c * k * k, c, k, k)
    return torch.cat([filters, -filters]).to(torch.float32)


def apply_patch_whitening(model: nn.Module, sample, eps: float = 5e-4, *,
                          mean: Optional[Sequence[float]] = None,
                          std: Optional[Sequence[float]] = None,
                          model_name: Optional[str] = None) -> nn.Parameter:
    """Initialise the first conv of ``model`` as a patch-whitening layer and freeze its weight.

    The kernel size is the conv's own (``k x k``, square); it needs ``groups == 1`` and at least
    ``2*C*k*k`` output channels (airbench's stem: 24 for k=2; resnet9's 3x3 prep conv: 54 of 64).
    The first ``2*C*k*k`` filters are set (:func:`patch_whitening_weights`); any further filters
    keep their initialisation. The weight gets ``requires_grad=False`` (do this before building
    the optimiser and before DDP wrapping). A conv without a bias gets a zero bias parameter, so
    the state dict gains ``<conv>.bias``: apply this before loading a checkpoint.

    Args:
        model: any module; the first ``nn.Conv2d`` in module order is used.
        sample, eps, mean, std: as :func:`patch_whitening_weights`.
        model_name: the registry name, for error messages.
    Returns:
        The conv's bias parameter, to train for the first few epochs only (put it in its own
        optimiser group and schedule its learning rate to 0, which is DDP-safe).
    Raises:
        ValueError: no conv, a grouped/non-square conv, a channel mismatch with the sample, or
            too few output channels (the message names the model and the numbers).
    """
    label = model_name or type(model).__name__
    name, conv = first_conv(model)
    kh, kw = conv.kernel_size
    c = conv.in_channels
    need = 2 * c * kh * kw
    if conv.groups != 1 or kh != kw:
        raise ValueError(f"{label}: first conv {name!r} must be square with groups=1 to whiten, "
                         f"got kernel {conv.kernel_size}, groups {conv.groups}")
    if conv.out_channels < need:
        raise ValueError(f"{label}: first conv {name!r} has {conv.out_channels} output channels, "
                         f"patch whitening with a {kh}x{kw} kernel on {c} channels needs {need}")
    weight = patch_whitening_weights(sample, kh, eps, mean=mean, std=std)
    if weight.shape[1] != c:
        raise ValueError(f"{label}: sample has {weight.shape[1]} channels, conv {name!r} takes {c}")
    with torch.no_grad():
        conv.weight[:need].copy_(weight.to(conv.weight.dtype))
    conv.weight.requires_grad_(False)
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device,
                                             dtype=conv.weight.dtype))
    return conv.bias
