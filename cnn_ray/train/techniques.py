"""Speed and regularisation techniques, each a small function with a verb name.

Every function here is pure PyTorch (no Ray) and documented as a card: what it does, the
values that work, and where it comes from.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX-512-BF16 or AMX)."""
    from cnn_ray.compat import mkldnn_bf16_supported

    return mkldnn_bf16_supported()


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes bf16 natively (compute capability >= 8.0: A100,
    H100, ...). ``torch.cuda.is_bf16_supported()`` alone also says yes on GPUs that only
    emulate it (T4, V100), where bf16 is slow and fp16 + GradScaler is the fast path."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without the keyword
        return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision to run: ``requested`` unless it is ``auto`` (see ``PrecisionConfig``).

    ``auto``: CUDA -> ``bf16`` where native (:func:`cuda_has_native_bf16`) else ``fp16``
    (with a GradScaler); CPU -> ``bf16`` if :func:`cpu_has_fast_bf16` else ``fp32``. Resolve it
    once, where the workers' device is known, and hand the result to every rank, so a group
    never mixes precisions. An explicit ``bf16`` on a CPU without
    native bf16 is kept (the user asked for it) with a warning, because it runs far slower.
    """
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_has_native_bf16(device) else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if requested == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        import warnings

        warnings.warn("precision.dtype=bf16 on a CPU without native bf16 kernels runs on slow "
                      "reference convolutions; use precision.dtype=auto or fp32", stacklevel=2)
    return requested


def apply_channels_last(model: nn.Module) -> nn.Module:
    """Store conv weights (and, by the caller, inputs) as NHWC (``torch.channels_last``).

    What: oneDNN (CPU) and cuDNN (tensor cores) run NHWC convolutions without layout
    transposes; with bf16 autocast this made a small CIFAR net ~7x faster than fp32 NCHW on an
    AVX-512-bf16 CPU. Use with inputs produced by ``normalize_batch(channels_last=True)``.
    Source: PyTorch "Channels Last Memory Format" tutorial; Composer ``apply_channels_last``.
    Returns the same module (converted in place).
    """
    return model.to(memory_format=torch.channels_last)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` in ``{"fp32", "bf16", "fp16"}`` on ``device``.

    What: runs matmuls/convolutions in 16-bit while keeping reductions and the weights in fp32
    (automatic mixed precision). bf16 has fp32's exponent range and needs no loss scaling;
    fp16 needs :func:`make_grad_scaler`. On CPU "AMP" means bf16.
    Source: Micikevicius et al., "Mixed Precision Training", 2018; ``torch.amp``.
    Raises ``ValueError`` for an unknown precision or fp16 on CPU.
    """
    if precision not in AMP_DTYPES:
        raise ValueError(f"precision must be one of {sorted(AMP_DTYPES)}, got {precision!r}")
    dtype = AMP_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (use bf16 on CPU)")
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A ``torch.amp.GradScaler`` for fp16 on CUDA, else ``None`` (bf16/fp32 need none).

    What: multiplies the loss so fp16 gradients do not underflow, skips steps whose gradients
    overflowed and adapts the scale. Its ``state_dict`` belongs in every checkpoint.
    Source: Micikevicius et al., 2018; ``torch.amp.GradScaler``.
    """
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def split_decay_params(model: nn.Module, weight_decay: float) -> list[dict]:
    """Parameter groups with weight decay on weights only, never on norm layers or biases.

    What: decaying BatchNorm/LayerNorm scales and biases hurts accuracy and buys nothing;
    parameters with ``ndim <= 1`` (biases, norm affine parameters) go to a no-decay group.
    Source: Goyal et al., "Accurate, Large Minibatch SGD", 2017 (no bias decay); timm
    ``param_groups_weight_decay``. Returns ``[{"params": decay, "weight_decay": wd},
    {"params": no_decay, "weight_decay": 0.0}]``.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module under a DDP (or ``torch.compile``) wrapper; the model itself if none.

    Works for any world size: ``prepare_model`` wraps in DDP only when there is more than one
    worker, so never write ``model.module`` blindly.
    """
    from cnn_ray.compat import compiled_original

    return compiled_original(getattr(model, "module", model))


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on micro-batches that do not step (gradient accumulation).

    What: with ``grad_accum_steps = k`` only every k-th backward needs synchronised gradients;
    the others accumulate locally under ``DistributedDataParallel.no_sync()``, cutting
    all-reduce traffic by k. A no-op for non-DDP models or when ``skip_sync`` is False.
    Source: PyTorch DDP documentation (``no_sync``).
    """
    if skip_sync and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield
