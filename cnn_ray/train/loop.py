"""The numeric core of training: one epoch of steps, evaluation, and metric counts.

No Ray here: batches are any iterable of ``{"image": uint8 (N, H, W, C), "label": int64 (N,)}``
torch tensors (Ray's ``iter_torch_batches`` in production, plain lists in tests). Distributed
aggregation is a ``reduce_sum`` callable (:func:`distributed_reduce` on the Ray path, which is
the identity on one process), so the same code runs at any world size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnn_ray.data.augment import normalize_batch
from cnn_ray.train.techniques import autocast_context, maybe_no_sync, unwrap_model


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses/gradients more often than ``optim.max_bad_steps``."""


ReduceFn = Callable[[torch.Tensor], torch.Tensor]


def distributed_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (``torch.distributed.all_reduce``) when a group is set up."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


@dataclass
class StepSettings:
    """Per-run constants of the step loop (built once from the config).

    Attributes:
        device: training device. precision: ``fp32 | bf16 | fp16``.
        mean, std: per-channel normalisation in [0, 1] units (length C).
        channels_last: feed NHWC-strided inputs. label_smoothing: in [0, 1).
        grad_accum_steps: micro-batches per optimiser step. grad_clip_norm: max global L2 norm
        or None. max_bad_steps: non-finite steps tolerated before :class:`NonFiniteLossError`.
    """

    device: torch.device
    precision: str
    mean: Sequence[float]
    std: Sequence[float]
    channels_last: bool = True
    label_smoothing: float = 0.0
    grad_accum_steps: int = 1
    grad_clip_norm: Optional[float] = None
    max_bad_steps: int = 3
    log_every: int = 0

    @property
    def input_dtype(self) -> torch.dtype:
        # Inputs are produced directly in the autocast dtype: conv runs in it anyway, and the
        # float conversion is then a single pass over the batch.
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)


@dataclass
class EpochStats:
    """Counts of one epoch on one rank; ``reduce`` sums them over ranks.

    ``loss_sum`` is the sum of per-image losses, ``correct1/correct5`` counts, ``num_images``
    images seen, ``wall_s`` wall time (seconds), ``data_wait_s`` time blocked on the input
    iterator, ``steps`` optimiser steps, ``bad_steps`` skipped non-finite steps.
    """

    loss_sum: float = 0.0
    correct1: int = 0
    correct5: int = 0
    num_images: int = 0
    wall_s: float = 0.0
    data_wait_s: float = 0.0
    steps: int = 0
    bad_steps: int = 0
    extra: dict = field(default_factory=dict)

    def reduce(self, reduce_sum: ReduceFn, device: torch.device | str = "cpu") -> "EpochStats":
        """Sum counts over ranks; times are averaged (every rank runs the same wall time).

        The vector handed to ``reduce_sum`` is created on ``device``: pass the training device,
        because a NCCL process group (Ray Train with ``use_gpu=True``) reduces CUDA tensors
        only ("No backend type associated with device type cpu" otherwise).
        """
        vec = torch.tensor(
            [self.loss_sum, self.correct1, self.correct5, self.num_images, self.wall_s,
             self.data_wait_s, self.steps, self.bad_steps, 1.0], dtype=torch.float64,
            device=device,
        )
        out = reduce_sum(vec).tolist()
        ranks = max(1.0, out[8])
        return EpochStats(out[0], int(out[1]), int(out[2]), int(out[3]), out[4] / ranks,
                          out[5] / ranks, int(round(out[6] / ranks)), int(out[7]), dict(self.extra))

    def summary(self, prefix: str, num_classes: int) -> dict[str, float]:
        """``{prefix}loss``, ``{prefix}top1`` (and ``top5`` for >= 10 classes) as floats."""
        n = max(1, self.num_images)
        out = {f"{prefix}loss": self.loss_sum / n, f"{prefix}top1": self.correct1 / n}
        if num_classes >= 10:
            out[f"{prefix}top5"] = self.correct5 / n
        return out


@dataclass
class TrainProgress:
    """Where training stands between epochs: ``start_epoch`` epochs done when this (re)start
    began, the best ``val_top1`` so far (None before the first evaluation) and ``stale``
    epochs since it last improved (for early stopping); ``budget``: the checkpoint's budget
    plan (``optim.budget_s``; :mod:`cnn_ray.train.budget_run`), None without one."""

    start_epoch: int = 0
    best: Optional[float] = None
    stale: int = 0
    budget: Optional[dict] = None

    def update(self, val_top1: float) -> dict[str, float]:
        """Record one epoch's ``val_top1``; returns ``best_val_top1`` and
        ``epochs_without_improvement`` for the epoch's metrics."""
        improved = self.best is None or val_top1 > self.best
        self.best = val_top1 if improved else self.best
        self.stale = 0 if improved else self.stale + 1
        return {"best_val_top1": self.best, "epochs_without_improvement": self.stale}

    def should_stop(self, patience: Optional[int]) -> bool:
        """Early stopping: ``val_top1`` has not improved for ``patience`` epochs (None: never)."""
        return patience is not None and self.stale >= patience


def prepare_inputs(batch: dict, s: StepSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC batch -> normalised (N, C, H, W) tensor on the device, and int64 labels."""
    images = batch["image"].to(s.device, non_blocking=True)
    labels = batch["label"].to(s.device, non_blocking=True).long()
    x = normalize_batch(images, s.mean, s.std, dtype=s.input_dtype, channels_last=s.channels_last)
    return x, labels


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(top-1 correct, top-5 correct) counts for (N, K) logits and (N,) labels."""
    top1, top5 = _hits(logits, labels)
    return int(top1), int(top5)


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1, top-5) hit counts as 0-d tensors on the logits' device (no host sync)."""
    k = min(5, logits.shape[1])
    hit = logits.topk(k, dim=1).indices == labels[:, None]
    return hit[:, 0].sum(), hit.any(dim=1).sum()


class DeviceCounts:
    """An epoch's loss sum, top-1/top-5 hits and non-finite steps, kept on the training device.

    Adding a batch launches a few small kernels and never waits for the device (a ``float()``
    or ``int()`` per step would stall a GPU's queue every step); :meth:`into` reads them once.
    """

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, bad
        self.num_images = 0

    def add(self, loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: ``loss_sum`` (0-d, sum of its per-image losses), (N, K) logits and
        (N,) int64 labels."""
        top1, top5 = _hits(logits, labels)
        self.sums[0] += loss_sum.detach().to(torch.float64)
        self.sums[1] += top1
        self.sums[2] += top5
        self.num_images += labels.shape[0]

    def add_bad(self, bad: torch.Tensor) -> None:
        """Count a step as non-finite when the 0-d bool ``bad`` is true."""
        self.sums[3] += bad

    def bad_steps(self) -> int:
        """Non-finite steps so far (one host sync)."""
        return int(self.sums[3])

    def into(self, stats: EpochStats) -> EpochStats:
        """Copy the counts into ``stats`` (one host sync) and return it."""
        loss, top1, top5, bad = self.sums.tolist()
        stats.loss_sum, stats.correct1, stats.correct5 = loss, int(top1), int(top5)
        stats.num_images, stats.bad_steps = self.num_images, int(bad)
        return stats


@dataclass
class StepHooks:
    """Recipe techniques acting inside the step loop, so the loop has no ``if`` per trick.

    Attributes:
        batch_transform: ``(x, labels) -> (x, target)`` after normalisation; ``target`` is
            (N,) int64 labels or (N, K) float class probabilities (MixUp/CutMix). None: identity.
        after_step: callables run after every optimiser step with the epoch's step count
            (e.g. updating an EMA of the weights).
    """

    batch_transform: Optional[Callable[[torch.Tensor, torch.Tensor], tuple]] = None
    after_step: Sequence[Callable[[int], None]] = ()


def _timed(iterable: Iterable) -> Iterable[tuple[float, object]]:
    it = iter(iterable)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield time.perf_counter() - t0, item


def train_one_epoch(
    model: nn.Module, batches: Iterable[dict], optimizer: torch.optim.Optimizer, s: StepSettings,
    *, scheduler=None, scheduler_per_step: bool = True,
    scaler: Optional[torch.amp.GradScaler] = None, max_steps: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None, hooks: Optional[StepHooks] = None,
) -> EpochStats:
    """Train for one pass over ``batches`` and return this rank's :class:`EpochStats`.

    Gradient accumulation: the loss of each micro-batch is divided by ``grad_accum_steps``;
    DDP gradient sync happens only on the micro-batch that steps (``no_sync`` otherwise); a
    trailing partial cycle still steps. Every micro-batch runs forward and backward on every
    rank (so DDP ranks stay in lock-step). Counts stay on the device (:class:`DeviceCounts`);
    the host reads them every ``log_every`` steps and at the end of the epoch.

    Args:
        max_steps: stop after this many optimiser steps (smoke runs); None = whole pass.
        hooks: :class:`StepHooks` of the recipe (MixUp, EMA, ...); None = none.
    Raises:
        NonFiniteLossError: see :func:`_optimizer_step`.
    """
    model.train()
    hooks = hooks or StepHooks()
    stats, counts = EpochStats(), DeviceCounts(s.device)
    params = [p for p in model.parameters() if p.requires_grad]
    t_start = time.perf_counter()
    micro = 0
    optimizer.zero_grad(set_to_none=True)
    iterator = iter(_timed(batches))
    nxt = next(iterator, None)
    while nxt is not None:
        wait, batch = nxt
        stats.data_wait_s += wait
        x, y = prepare_inputs(batch, s)
        nxt = next(iterator, None)
        micro += 1
        stepping = micro % s.grad_accum_steps == 0 or nxt is None
        loss, logits = _forward_backward(model, x, y, s, scaler, hooks, skip_sync=not stepping)
        with torch.no_grad():
            counts.add(loss * y.shape[0], logits, y)
        if not stepping:
            continue
        _optimizer_step(optimizer, params, s, scaler, counts)  # also zeroes the gradients
        if scheduler is not None and scheduler_per_step:
            scheduler.step()
        stats.steps += 1
        for fn in hooks.after_step:
            fn(stats.steps)
        if s.log_every and stats.steps % s.log_every == 0:
            _check_bad_steps(counts, s, scaler)
            if log:
                log(f"step {stats.steps}: loss {float(loss):.4f} "
                    f"lr {optimizer.param_groups[0]['lr']:.4g}")
        if max_steps is not None and stats.steps >= max_steps:
            break  # right after a step: no partial gradients are left behind
    _check_bad_steps(counts, s, scaler)
    stats.wall_s = time.perf_counter() - t_start
    return counts.into(stats)


def _forward_backward(model, x, y, s: StepSettings, scaler, hooks: StepHooks, *, skip_sync: bool):
    """Forward, loss (on ``hooks.batch_transform``'s target) and backward of one micro-batch;
    returns the 0-d mean loss and the (N, K) logits (detached)."""
    target = y
    if hooks.batch_transform is not None:
        x, target = hooks.batch_transform(x, y)
    with maybe_no_sync(model, skip_sync=skip_sync):
        with autocast_context(s.device, s.precision):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), target, label_smoothing=s.label_smoothing)
        scaled = loss / s.grad_accum_steps
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return loss.detach(), logits.detach()


def _optimizer_step(optimizer, params, s: StepSettings, scaler, counts: DeviceCounts) -> None:
    """Clip, step and zero the gradients without waiting for the device.

    A step whose (all-reduced) gradient norm is not finite is neutralised: with fp16 the
    GradScaler skips it (its found-inf check); otherwise its gradients are zeroed on the device
    (``nan_to_num`` then multiplied by the finite flag, so only momentum and weight decay move
    the weights) and it is counted in ``counts`` for :func:`_check_bad_steps`.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        optimizer.zero_grad(set_to_none=True)
        return
    norm = torch.nn.utils.get_total_norm(grads)
    if s.grad_clip_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, s.grad_clip_norm, norm)
    finite = torch.isfinite(norm)
    counts.add_bad(~finite)
    if scaler is not None:
        scaler.step(optimizer)  # skips the step itself on inf/nan gradients
        scaler.update()
    else:
        for g in grads:
            g.nan_to_num_(0.0, 0.0, 0.0).mul_(finite)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _check_bad_steps(counts: DeviceCounts, s: StepSettings, scaler) -> None:
    """Raise :class:`NonFiniteLossError` once more than ``max_bad_steps`` steps of the epoch
    were non-finite (read every ``log_every`` steps and at the epoch end, so training stops
    within ``log_every`` steps of the limit). With fp16 the GradScaler's own overflow skips
    count only once its scale has fallen below 1 (it lowers the scale on each overflow)."""
    bad = counts.bad_steps()
    if bad <= s.max_bad_steps or (scaler is not None and scaler.get_scale() >= 1.0):
        return
    raise NonFiniteLossError(
        f"non-finite loss/gradients in {bad} steps (optim.max_bad_steps={s.max_bad_steps}). "
        "Lower optim.lr, set optim.grad_clip_norm, or use precision bf16.")


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[dict], s: StepSettings, *, max_batches: Optional[int] = None,
    collect_predictions: bool = False,
    predict: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None,
) -> EpochStats:
    """Loss and top-1/top-5 counts of ``model`` over ``batches`` (this rank's share).

    The bare module is used (never the DDP wrapper), so ranks may see different numbers of
    batches. ``predict(net, x) -> (N, K) logits`` replaces ``net(x)`` (test-time augmentation).
    With ``collect_predictions`` the (N,) int64 predictions and labels are returned in
    ``stats.extra["pred"]`` / ``stats.extra["label"]`` (for confusion matrices).
    """
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    stats, counts = EpochStats(), DeviceCounts(s.device)
    preds, labels = [], []
    t0 = time.perf_counter()
    for i, (wait, batch) in enumerate(_timed(batches)):
        if max_batches is not None and i >= max_batches:
            break
        stats.data_wait_s += wait
        x, y = prepare_inputs(batch, s)
        with autocast_context(s.device, s.precision):
            logits = (predict(net, x) if predict is not None else net(x)).float()
        counts.add(F.cross_entropy(logits, y, reduction="sum"), logits, y)
        if collect_predictions:
            preds.append(logits.argmax(1).cpu())
            labels.append(y.cpu())
    stats.wall_s = time.perf_counter() - t0
    if collect_predictions:
        stats.extra["pred"] = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
        stats.extra["label"] = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    net.train(was_training)
    return counts.into(stats)
