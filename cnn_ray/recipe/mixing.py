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

from typing import Optional

import torch
import torch.nn.functional as F


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
    from torchvision.transforms import v2  # here: importing torchvision costs seconds

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


class BatchMixer:
    """``(x, labels) -> (mixed x, soft targets)`` with its own seeded random stream.

    Calls :func:`mix_batch` (one of MixUp/CutMix per batch with probability 0.5 each when both
    alphas are > 0, as ``torchvision.transforms.v2.RandomChoice`` and timm's ``switch_prob=0.5``)
    inside ``torch.random.fork_rng``, seeded from ``seed`` and carried from call to call: the
    draws (Beta lambda, CutMix box, the choice; all on the CPU generator, whatever the batch's
    device) are a function of ``seed`` and the call count, and torch's global generator (model
    init, dropout) is left untouched. The fork holds
    :data:`cnn_ray.data.photo.CPU_RNG_LOCK`, so a memory-cache batch being augmented with
    torchvision's per-image policies in the background thread never sees this stream. The
    stream starts afresh when the object is rebuilt (a resumed run draws the first epoch's
    values again).

    Args:
        num_classes: K.
        mixup_alpha, cutmix_alpha: Beta(alpha, alpha) parameters, >= 0, not both 0.
        seed: the stream's seed (give each DDP rank its own, e.g. ``run.seed + rank``).
    Raises:
        ValueError: a negative alpha, both alphas 0, or ``num_classes < 2``.
    """

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float, seed: int):
        if mixup_alpha < 0 or cutmix_alpha < 0 or mixup_alpha == cutmix_alpha == 0:
            raise ValueError(f"need alphas >= 0, not both 0; got mixup {mixup_alpha}, "
                             f"cutmix {cutmix_alpha}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self._rng_state = torch.Generator().manual_seed(int(seed)).get_state()

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(N, C, H, W)`` float, ``labels`` ``(N,)`` int64 -> ``(x', (N, K) float32)``
        with target rows summing to 1, on ``labels``' device."""
        from cnn_ray.data.photo import forked_cpu_rng  # lazy: data imports recipe

        with forked_cpu_rng():
            torch.set_rng_state(self._rng_state)
            out = mix_batch(x, labels, self.num_classes, self.mixup_alpha, self.cutmix_alpha)
            self._rng_state = torch.get_rng_state()
        return out


def mixing_transform(augment_cfg, num_classes: int, seed: int) -> Optional[BatchMixer]:
    """The step loop's ``StepHooks.batch_transform`` for ``augment.mixup`` / ``augment.cutmix``.

    Args:
        augment_cfg: :class:`cnn_ray.config.AugmentConfig` (``mixup.enabled/alpha``,
            ``cutmix.enabled/alpha`` are read).
        num_classes: K, the width of the soft targets.
        seed: seed of the mixing draws (see :class:`BatchMixer`).
    Returns:
        None when both are off; else a :class:`BatchMixer` (both on: one of the two per batch,
        each with probability 0.5).
    """
    mixup = augment_cfg.mixup.alpha if augment_cfg.mixup.enabled else 0.0
    cutmix = augment_cfg.cutmix.alpha if augment_cfg.cutmix.enabled else 0.0
    if mixup == 0 and cutmix == 0:
        return None
    return BatchMixer(num_classes, mixup, cutmix, seed)


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
