"""The numeric core of training: one epoch of steps, evaluation, and metric counts.

No Ray here: batches are any iterable of ``{"image": uint8 (N, H, W, C), "label": int64 (N,)}``
torch tensors (Ray's ``iter_torch_batches`` in production, plain lists in tests). Distributed
aggregation is a ``reduce_sum`` callable (:func:`distributed_reduce` on the Ray path, which is
the identity on one process), so the same code runs at any world size.
"""

from __future__ import annotations

import math
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
    images seen, ``seconds`` wall time, ``data_wait_seconds`` time blocked on the input
    iterator, ``steps`` optimiser steps, ``bad_steps`` skipped non-finite steps.
    """

    loss_sum: float = 0.0
    correct1: int = 0
    correct5: int = 0
    num_images: int = 0
    seconds: float = 0.0
    data_wait_seconds: float = 0.0
    steps: int = 0
    bad_steps: int = 0
    extra: dict = field(default_factory=dict)

    def add_batch(self, loss_sum: float, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: ``loss_sum`` (sum of its per-image losses), (N, K) logits and
        (N,) int64 labels."""
        c1, c5 = count_correct(logits, labels)
        self.loss_sum += loss_sum
        self.correct1 += c1
        self.correct5 += c5
        self.num_images += labels.shape[0]

    def reduce(self, reduce_sum: ReduceFn) -> "EpochStats":
        """Sum counts over ranks; times are averaged (every rank runs the same wall time)."""
        vec = torch.tensor(
            [self.loss_sum, self.correct1, self.correct5, self.num_images, self.seconds,
             self.data_wait_seconds, self.steps, self.bad_steps, 1.0], dtype=torch.float64,
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
    epochs since it last improved (for early stopping)."""

    start_epoch: int = 0
    best: Optional[float] = None
    stale: int = 0

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
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels[:, None]
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


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
    model: nn.Module,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    s: StepSettings,
    *,
    scheduler=None,
    scheduler_per_step: bool = True,
    scaler: Optional[torch.amp.GradScaler] = None,
    max_steps: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
) -> EpochStats:
    """Train for one pass over ``batches`` and return this rank's :class:`EpochStats`.

    Gradient accumulation: the loss of each micro-batch is divided by ``grad_accum_steps``;
    DDP gradient sync happens only on the micro-batch that steps (``no_sync`` otherwise); a
    trailing partial cycle still steps. Every micro-batch runs forward and backward on every
    rank (so DDP ranks stay in lock-step); the step is skipped when the (all-reduced) gradient
    norm is non-finite, and after more than ``max_bad_steps`` such steps in the epoch
    :class:`NonFiniteLossError` is raised. With fp16 the GradScaler's own overflow skips are
    not counted while its scale is still >= 1.

    Args:
        max_steps: stop after this many optimiser steps (smoke runs); None = whole pass.
    Raises:
        NonFiniteLossError: see above.
    """
    model.train()
    stats = EpochStats()
    params = [p for p in model.parameters() if p.requires_grad]
    accum = s.grad_accum_steps
    t_start = time.perf_counter()
    micro = 0
    optimizer.zero_grad(set_to_none=True)
    iterator = iter(_timed(batches))
    nxt = next(iterator, None)
    while nxt is not None:
        wait, batch = nxt
        stats.data_wait_seconds += wait
        x, y = prepare_inputs(batch, s)
        nxt = next(iterator, None)
        micro += 1
        stepping = micro % accum == 0 or nxt is None
        with maybe_no_sync(model, skip_sync=not stepping):
            with autocast_context(s.device, s.precision):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=s.label_smoothing)
            scaled = loss / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        with torch.no_grad():
            stats.add_batch(float(loss.detach()) * y.shape[0], logits.detach(), y)
        if not stepping:
            continue
        _optimizer_step(optimizer, params, s, scaler, stats)  # also zeroes the gradients
        if scheduler is not None and scheduler_per_step:
            scheduler.step()
        stats.steps += 1
        if log and s.log_every and stats.steps % s.log_every == 0:
            log(f"step {stats.steps}: loss {float(loss):.4f} lr {optimizer.param_groups[0]['lr']:.4g}")
        if max_steps is not None and stats.steps >= max_steps:
            break  # right after a step: no partial gradients are left behind
    stats.seconds = time.perf_counter() - t_start
    return stats


def _optimizer_step(optimizer, params, s: StepSettings, scaler, stats: EpochStats) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    max_norm = s.grad_clip_norm if s.grad_clip_norm is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
    finite = bool(torch.isfinite(grad_norm))
    if scaler is not None:
        scaler.step(optimizer)  # skips the step itself on inf/nan gradients
        scale_ok = scaler.get_scale() >= 1.0
        scaler.update()
        bad = not finite and not scale_ok
    else:
        bad = not finite
        if finite:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if bad:
        stats.bad_steps += 1
        if stats.bad_steps > s.max_bad_steps:
            raise NonFiniteLossError(
                f"non-finite loss/gradients in {stats.bad_steps} steps (optim.max_bad_steps="
                f"{s.max_bad_steps}); last gradient norm {float(grad_norm)}. Lower optim.lr, set "
                "optim.grad_clip_norm, or use precision bf16."
            )


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[dict], s: StepSettings, *, max_batches: Optional[int] = None,
    collect_predictions: bool = False,
) -> EpochStats:
    """Loss and top-1/top-5 counts of ``model`` over ``batches`` (this rank's share).

    The bare module is used (never the DDP wrapper), so ranks may see different numbers of
    batches. With ``collect_predictions`` the (N,) int64 predictions and labels are returned in
    ``stats.extra["pred"]`` / ``stats.extra["label"]`` (for confusion matrices).
    """
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    stats = EpochStats()
    preds, labels = [], []
    t0 = time.perf_counter()
    for i, (wait, batch) in enumerate(_timed(batches)):
        if max_batches is not None and i >= max_batches:
            break
        stats.data_wait_seconds += wait
        x, y = prepare_inputs(batch, s)
        with autocast_context(s.device, s.precision):
            logits = net(x).float()
        stats.add_batch(float(F.cross_entropy(logits, y, reduction="sum")), logits, y)
        if collect_predictions:
            preds.append(logits.argmax(1).cpu())
            labels.append(y.cpu())
    stats.seconds = time.perf_counter() - t0
    if collect_predictions:
        stats.extra["pred"] = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
        stats.extra["label"] = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    net.train(was_training)
    return stats
