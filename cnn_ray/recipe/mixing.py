"""MixUp / CutMix on whole batches, and the cross entropy for their soft targets.

Card
----
What: MixUp blends each image with another of the batch, ``x = lam * x_i + (1 - lam) * x_j``,
and its one-hot target the same way; CutMix pastes a random box of ``x_j`` into ``x_i`` and
weights the targets by the box area. Both regularise long runs; on short CIFAR-10 runs
(<= ~20 epochs) they usually cost accuracy, so leave them off there.
Values that work: ``mixup_alpha=0.2`` (ImageNet) to 1.0 (CIFAR, long runs), ``cutmix_alpha=1.0``,
one of the two per batch at random (timm: ``switch_prob=0.5``), applied to every batch.
Source: Zhang et al., "mixup", ICLR 2018; Yun et al., "CutMix", ICCV 2019;
``torchvision.transforms.v2.MixUp`` / ``CutMix`` (used here, on the batch after normalisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


def mix_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
              mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp and/or CutMix one batch (one of the two at random when both alphas are > 0).

    Random draws come from torch's global generator (seed it with ``torch.manual_seed``).

    Args:
        images: ``(N, C, H, W)`` float batch on any device.
        labels: ``(N,)`` int64 class indices.
        num_classes: number of classes.
        mixup_alpha, cutmix_alpha: Beta(alpha, alpha) parameters; 0 turns a method off.
    Returns:
        ``(images, targets)``: the mixed batch (same shape/dtype) and ``(N, num_classes)``
        float soft targets whose rows sum to 1. With both alphas 0: the batch unchanged and
        one-hot targets.
    Raises:
        ValueError: a negative alpha.
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup/cutmix alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
    ops = []
    if mixup_alpha > 0:
        ops.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        ops.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not ops:
        return images, F.one_hot(labels, num_classes).to(torch.float32)
    op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)
    mixed, targets = op(images, labels)
    return mixed, targets.to(torch.float32)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                              label_smoothing: float = 0.0,
                              reduction: str = "mean") -> torch.Tensor:
    """Cross entropy of ``logits`` against soft (or one-hot) ``targets``, with label smoothing.

    The smoothed target is ``(1 - label_smoothing) * targets + label_smoothing / K``, the same
    as ``F.cross_entropy(..., label_smoothing=...)`` for one-hot targets.

    Args:
        logits: ``(N, K)`` (any float dtype; computed in float32).
        targets: ``(N, K)`` rows summing to 1.
        label_smoothing: in [0, 1) (airbench: 0.2).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    Raises:
        ValueError: shape mismatch, label_smoothing out of range or unknown reduction.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
    k = logits.shape[-1]
    t = targets.to(torch.float32) * (1.0 - label_smoothing) + label_smoothing / k
    loss = -(t * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    return loss if reduction == "none" else getattr(loss, reduction)()
