"""Muon for conv filters + SGD-Nesterov for the rest in one optimiser; decoupled SGD settings.

Card: Muon
----------
What: for each 2-D+ weight (a conv's ``(out, in, k, k)`` viewed as ``(out, in*k*k)``), take the
Nesterov momentum of the gradient and replace it by its nearest semi-orthogonal matrix
(a few quintic Newton-Schulz iterations in bf16), so every direction of the update has about
the same size; the other parameters (biases, BN, the linear head) use SGD-Nesterov.
Values that work (airbench94_muon, batch 2000, summed loss): Muon ``lr=0.24``,
``momentum=0.6``, 3 Newton-Schulz steps, filters renormalised to norm ``sqrt(out)`` before each
step, no weight decay; SGD ``momentum=0.85`` with BN/whitening biases at ``lr=0.053`` and the
head at ``lr=0.67``; linear decay of all rates to 0. 94% in 0.29 instead of 0.36 PFLOPs.
cnn_ray's recipe (batch 1024 = 49 steps per epoch, 11 epochs, airbench93 widths, our JPEG
CIFAR-10, seeds 0 and 1): Muon ``lr=0.12`` (0.24 x 25/49) 89.87% top-1, 0.17 89.58%, 0.24
89.48%, SGD on the filters too 89.39%; the best rate falls with the steps taken.
Source: Keller Jordan et al., "Muon: an optimizer for hidden layers" (2024 blog post),
``airbench94_muon.py``; ``torch.optim.Muon`` (2-D parameters only, hence this class).

Card: decoupled hyperparameters
-------------------------------
What: write the learning rate and weight decay "per 1024 examples" and correct for momentum,
so each can be tuned alone and keeps its meaning when the batch size or momentum changes
(under constant gradients Nesterov SGD steps ``1 + 1/(1 - momentum)`` times farther, airbench's
estimate; and torch's weight decay is multiplied by the learning rate).
Values that work (airbench94, batch 1024, label smoothing 0.2): ``lr_per_1024=11.5``,
``wd_per_1024=0.0153``, ``momentum=0.85``, BN biases at x64.
Source: David Page, "How to train your ResNet 5: hyperparameters" (2018); Keller Jordan,
airbench (``kilostep_scale`` in ``airbench94.py``).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Jordan's quintic, steepest slope at zero


def orthogonalize(grad: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the semi-orthogonal factor ``U V^T`` of ``grad = U S V^T``.

    Quintic Newton-Schulz iteration in bf16; singular values come out in about [0.5, 1.5]
    rather than exactly 1, which trains as well (Jordan). Args: ``grad`` ``(rows, cols)``.
    Returns a bf16 tensor of the same shape.
    """
    a, b, c = NS_COEFFICIENTS
    x = grad.to(torch.bfloat16)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp_min(eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class MuonSGD(torch.optim.Optimizer):
    """One optimiser, two update rules chosen per parameter group by its ``"muon"`` flag.

    ``muon=False`` groups: SGD with momentum (Nesterov by default) and L2 weight decay added to
    the gradient, the same update as ``torch.optim.SGD`` (``dampening=0``). ``muon=True``
    groups (parameters of ndim >= 2, e.g. conv filters): Muon as in airbench94_muon --
    momentum buffer ``b = m b + g``, Nesterov ``u = g + m b``, filters rescaled to norm
    ``sqrt(out)`` first when ``normalize_weights``, decoupled decay ``p *= 1 - lr * wd``,
    then ``p -= lr * s * orthogonalize(u as (out, -1))`` with ``s = sqrt(max(1, out/in))``
    when ``shape_scale`` (torch.optim.Muon's "original"), else 1.

    Being a ``torch.optim.Optimizer``, ``param_groups``, ``zero_grad``, ``state_dict`` and
    ``load_state_dict`` are the stock ones and any LR scheduler can drive it.

    Raises:
        ValueError: negative lr/momentum/weight decay, or a muon group with a 1-D parameter.
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, muon: bool = False, ns_steps: int = 3,
                 normalize_weights: bool = True, shape_scale: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, "
                             f"got {lr}, {momentum}, {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        muon=muon, ns_steps=ns_steps, normalize_weights=normalize_weights,
                        shape_scale=shape_scale)
        super().__init__(params, defaults)
        for group in self.param_groups:
            bad = [tuple(p.shape) for p in group["params"] if group["muon"] and p.ndim < 2]
            if bad:
                raise ValueError(f"muon groups take parameters with ndim >= 2, got shapes {bad}")

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._muon_step if group["muon"] else self._sgd_step)(p, group)
        return loss

    def _momentum(self, p: torch.Tensor, g: torch.Tensor, group: dict) -> torch.Tensor:
        m = group["momentum"]
        if m == 0:
            return g
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"].mul_(m).add_(g)
        return g.add(buf, alpha=m) if group["nesterov"] else buf

    def _sgd_step(self, p: torch.Tensor, group: dict) -> None:
        g = p.grad
        if group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])
        p.add_(self._momentum(p, g, group), alpha=-group["lr"])

    def _muon_step(self, p: torch.Tensor, group: dict) -> None:
        lr = group["lr"]
        update = self._momentum(p, p.grad, group)
        if group["normalize_weights"]:
            p.mul_(math.sqrt(p.shape[0]) / p.norm().clamp_min(1e-12))
        if group["weight_decay"]:
            p.mul_(1.0 - lr * group["weight_decay"])
        flat = update.reshape(p.shape[0], -1)
        scale = math.sqrt(max(1.0, flat.shape[0] / flat.shape[1])) if group["shape_scale"] else 1.0
        ortho = orthogonalize(flat, group["ns_steps"]).to(p.dtype).reshape(p.shape)
        p.add_(ortho, alpha=-lr * scale)


def split_muon_groups(groups: Iterable[dict], muon_lr: float, muon_momentum: float = 0.6,
                      min_ndim: int = 4) -> list[dict]:
    """Move parameters with ``ndim >= min_ndim`` (conv filters) out of ``groups`` into one
    ``{"name": "muon", "muon": True, "lr": muon_lr, "momentum": muon_momentum,
    "weight_decay": 0.0}`` group for :class:`MuonSGD`; the rest keep their groups (empty ones
    are dropped). The linear head (2-D) stays with SGD, as in airbench94_muon."""
    out, muon = [], []
    for g in groups:
        params = list(g["params"])
        muon += [p for p in params if p.ndim >= min_ndim]
        rest = [p for p in params if p.ndim < min_ndim]
        if rest:
            out.append({**g, "params": rest, "muon": False})
    if muon:
        out.append({"name": "muon", "params": muon, "muon": True, "lr": muon_lr,
                    "momentum": muon_momentum, "weight_decay": 0.0})
    return out


def decoupled_sgd_hparams(lr_per_1024: float, wd_per_1024: float, momentum: float,
                          batch_size: int, loss_reduction: str = "mean") -> tuple[float, float]:
    """``(lr, weight_decay)`` for ``torch.optim.SGD(nesterov=True)`` from decoupled settings.

    airbench: ``kilostep = 1024 * (1 + 1/(1 - momentum))``; with the loss summed over the batch
    ``lr = lr_per_1024 / kilostep`` and the decay per step ``lr * weight_decay =
    wd_per_1024 * batch_size / kilostep``. With the usual mean loss the gradient is
    ``batch_size`` times smaller, so ``lr`` is ``batch_size`` times larger and
    ``weight_decay = wd_per_1024 / lr_per_1024``; both forms give identical updates.

    Args:
        lr_per_1024: learning rate per 1024 examples (airbench: 11.5).
        wd_per_1024: weight decay per 1024 examples (airbench: 0.0153).
        momentum: in [0, 1) (airbench: 0.85).
        batch_size: examples per optimiser step (all workers together).
        loss_reduction: ``"mean"`` or ``"sum"`` over the batch.
    Raises:
        ValueError: a value out of range or an unknown reduction.
    """
    if lr_per_1024 <= 0 or wd_per_1024 < 0 or not 0 <= momentum < 1 or batch_size < 1:
        raise ValueError(f"need lr_per_1024 > 0, wd_per_1024 >= 0, 0 <= momentum < 1, "
                         f"batch_size >= 1; got {lr_per_1024}, {wd_per_1024}, {momentum}, "
                         f"{batch_size}")
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    if loss_reduction == "sum":
        lr = lr_per_1024 / kilostep
        return lr, wd_per_1024 * batch_size / kilostep / lr
    if loss_reduction == "mean":
        return lr_per_1024 * batch_size / kilostep, wd_per_1024 / lr_per_1024
    raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
