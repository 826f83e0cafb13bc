"""BatchNorm settings of the fast CIFAR-10 recipe, and the BN-bias learning-rate multiplier.

Card
----
What: (1) running statistics that follow the recent batches closely (a high torch ``momentum``,
the weight of the newest batch), a tiny ``eps``, and BN scales frozen (at their initial value
1), so the only BN parameters that learn are the biases; (2) those biases in their own optimiser
group with the learning rate multiplied by ``bias_scaler`` (they move little per step otherwise).
Values that work: torch ``momentum=0.4`` (airbench writes 0.6 in the EMA convention,
``1 - 0.6``), ``eps=1e-12``, ``freeze_scale=True``, ``bias_scaler=64`` with SGD-Nesterov.
airbench's ablation: without frozen scales and the x64 BN-bias rate, 14.2 instead of 9.9 epochs
to 94%.
Source: Keller Jordan, airbench (``BatchNorm`` and ``bias_scaler`` in ``airbench94.py``), after
David Page, "How to train your ResNet 7" (2019: frozen BN scales, x64 bias learning rate).
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_modules(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm (1d/2d/3d/Sync) module of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, _BN_TYPES)]


def configure_batchnorm(model: nn.Module, momentum: float = 0.4, eps: float = 1e-12,
                        freeze_scale: bool = True) -> int:
    """Set ``momentum`` and ``eps`` of every BatchNorm of ``model``; optionally freeze scales.

    Args:
        momentum: torch convention, the weight of the newest batch in the running statistics,
            in (0, 1] (airbench: 0.4; torch default 0.1).
        eps: added to the variance (airbench: 1e-12; torch default 1e-5).
        freeze_scale: ``requires_grad=False`` on the BN weights (scales), which keep their
            current value (1 on a fresh model). Call before building the optimiser / DDP.
    Returns:
        The number of BatchNorm modules changed.
    Raises:
        ValueError: ``momentum`` not in (0, 1] or ``eps`` < 0.
    """
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"batchnorm momentum must be in (0, 1] (torch convention), got {momentum}")
    if eps < 0:
        raise ValueError(f"batchnorm eps must be >= 0, got {eps}")
    mods = batchnorm_modules(model)
    for m in mods:
        m.momentum, m.eps = momentum, eps
        if freeze_scale and m.weight is not None:
            m.weight.requires_grad_(False)
    return len(mods)


def bn_bias_params(model: nn.Module) -> list[nn.Parameter]:
    """The trainable BatchNorm biases of ``model`` (``requires_grad`` only), in module order."""
    return [m.bias for m in batchnorm_modules(model)
            if m.bias is not None and m.bias.requires_grad]


def bn_bias_param_groups(model: nn.Module, lr: float, weight_decay: float,
                         bias_scaler: float = 64.0, *, decay_bn_bias: bool = False,
                         exclude: Iterable[nn.Parameter] = ()) -> list[dict]:
    """Optimiser parameter groups: weights, other 1-D parameters, and BN biases at x``bias_scaler``.

    Groups (each carries a ``"name"`` key, which torch optimisers keep):
    ``decay`` -- trainable parameters with ``ndim > 1`` at ``lr`` with ``weight_decay``;
    ``no_decay`` -- other trainable 1-D parameters (conv/linear biases, BN scales if not frozen)
    at ``lr`` without weight decay; ``bn_bias`` -- :func:`bn_bias_params` at
    ``lr * bias_scaler``, without weight decay unless ``decay_bn_bias`` (then at
    ``weight_decay / bias_scaler``, so the decay per step ``lr * weight_decay`` is airbench's,
    unchanged by the multiplier). Parameters in ``exclude`` (e.g. a whitening bias that gets its
    own group) and frozen ones are left out; empty groups are dropped.
    """
    skip = {id(p) for p in exclude}
    bn = [p for p in bn_bias_params(model) if id(p) not in skip]
    skip |= {id(p) for p in bn}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    groups = [
        {"name": "decay", "params": [p for p in rest if p.ndim > 1], "lr": lr,
         "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for p in rest if p.ndim <= 1], "lr": lr,
         "weight_decay": 0.0},
        {"name": "bn_bias", "params": bn, "lr": lr * bias_scaler,
         "weight_decay": weight_decay / bias_scaler if decay_bn_bias else 0.0},
    ]
    return [g for g in groups if g["params"]]
