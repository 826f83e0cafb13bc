"""Fine-tuning: start from pretrained weights, train the head first, then everything.

Card
----
What: ``model.pretrained`` loads named weights (``imagenet``, a torchvision weights name, a timm
tag: :mod:`cnn_ray.models.weights`, from the local caches), a state dict file or a cnn_ray
checkpoint into the freshly built model (after the recipe's model preparation, before DDP wraps
it); the classifier head (:func:`cnn_ray.models.classifier_head`) keeps its fresh
initialisation when its shape differs (another class count). ``model.freeze`` (``backbone`` or module-name prefixes) keeps those
parameters still until ``model.unfreeze_epoch``, then everything trains, the pretrained
(non-head) part at ``optim.backbone_lr_mult`` x the head's learning rate.
Values that work: freeze the backbone for the first 1-3 epochs (the new head would otherwise
send large random gradients into the pretrained features), then unfreeze with
``backbone_lr_mult`` 0.1-0.3; from a model trained on similar images, often no freeze at all.
Source: Yosinski et al., "How transferable are features in deep neural networks?" (2014:
fine-tuning transferred layers beats training them from scratch, even between dissimilar
halves of ImageNet); Howard & Ruder, "Universal Language Model Fine-tuning" (ULMFiT, 2018:
gradual unfreezing, head first, and discriminative learning rates per layer group).

How it is done here, and why:

- Freezing never changes ``requires_grad`` mid-run: DDP fixes the parameters it reduces when it
  is built (its reducer fails if they change). The frozen parameters are in their own
  optimiser groups (``"frozen": True``); until ``model.unfreeze_epoch`` a step pre-hook of the
  optimiser (:class:`FreezeGate`) drops their gradients just before ``optimizer.step()``, so the
  optimiser skips them: for SGD the update of a learning rate 0, and momentum buffers, Adam's
  moments, weight decay and Muon's weight renormalisation do not touch them either. The groups
  keep their learning rate (``lr`` x ``backbone_lr_mult``) under the schedule all run long, so
  they train at the scheduled rate from the unfreeze epoch on.
- BatchNorm layers of frozen modules stay in train mode: their running mean/variance follow the
  new data (the frozen scales and biases do not move). That is what the new data's statistics
  need when the images differ from the pretraining ones.
- Named weights and a cnn_ray checkpoint bring their normalisation: the weights' own mean/std
  (torchvision's ``weights.transforms()``, timm's ``pretrained_cfg``) or the checkpoint's
  stored ones replace the new data's statistics (:func:`keep_pretrained_normalization`), so the
  pretrained filters see inputs scaled as they were trained on, unless
  ``model.normalization: data``; a plain state dict file carries none, and the new data's
  statistics are used. The named weights' resize/crop sizes are recorded
  (:func:`pretrained_preprocessing`, the report's ``preprocessing``) for the data side.
- Resume: the pretrained weights are loaded when the model is built; restoring the run's own
  checkpoint afterwards overwrites them (:func:`cnn_ray.train.parts.restore_parts`), and the
  report says ``pretrained not applied`` (:func:`record_pretrained`).

No Ray here: the Ray Train worker and the Ray-free trainer (:mod:`cnn_ray.train.local`) both
get this through :func:`cnn_ray.train.parts.build_parts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.models import classifier_head, create_model
from cnn_ray.train.inputs import DataSummary
# The weights side lives in cnn_ray.train.pretrained; re-exported here, where callers find it.
from cnn_ray.train.pretrained import (PretrainedReport, PretrainedWeights,  # noqa: F401
                                      apply_pretrained, keep_pretrained_normalization,
                                      named_weights, pretrained_preprocessing, read_pretrained,
                                      record_pretrained)
from cnn_ray.train.techniques import unwrap_model

Log = Callable[[str], None]


# ------------------------------------------------------------------------------ freezing
@dataclass(frozen=True)
class ParamRoles:
    """Which parameters are the classifier head's (``head``: ``id()`` of each) and which are
    frozen until ``model.unfreeze_epoch`` (``frozen``; ``frozen_names`` their names)."""

    head_name: str
    head: frozenset
    frozen: frozenset
    frozen_names: tuple[str, ...]

    def split_groups(self, groups: list[dict], lr: float, backbone_lr_mult: float) -> list[dict]:
        """Split each optimiser group into its head part (at the group's lr), its trained
        non-head part (lr x ``backbone_lr_mult``) and its frozen part (the same, with
        ``"frozen": True`` for :class:`FreezeGate`), keeping the group's other settings;
        names get ``.backbone`` / ``.frozen``. ``lr``: the optimiser's default lr (groups
        without their own). Empty parts are dropped; head parts come first in each group."""
        out = []
        for i, g in enumerate(groups):
            base_lr, name = g.get("lr", lr), g.get("name", f"group{i}")
            parts: dict[tuple[bool, bool], list] = {}
            for p in g["params"]:
                parts.setdefault((id(p) not in self.head, id(p) in self.frozen), []).append(p)
            for (backbone, frozen), params in sorted(parts.items()):
                suffix = ".frozen" if frozen else ".backbone" if backbone else ""
                out.append({**g, "params": params, "name": name + suffix, "frozen": frozen,
                            "lr": base_lr * (backbone_lr_mult if backbone else 1.0)})
        return out


def param_roles(model: nn.Module, cfg: TrainConfig) -> Optional[ParamRoles]:
    """The :class:`ParamRoles` of ``model`` (wrapped or not) under ``model.freeze`` and
    ``optim.backbone_lr_mult``; None when neither is set (the optimiser groups stay as they
    are, so checkpoints of ordinary runs keep their layout).

    ``model.freeze``: ``backbone`` freezes every parameter outside the head; a list freezes
    the parameters whose name is a prefix or lies under one (``"1"`` matches ``1.0.weight``,
    not ``10.weight``).

    Raises:
        ConfigError: a prefix of ``model.freeze`` matches no module or parameter (the message
            lists the top-level modules), or the model has no ``nn.Linear`` head.
    """
    freeze = cfg.model.freeze
    if freeze is None and cfg.optim.backbone_lr_mult == 1.0:
        return None
    model = unwrap_model(model)
    try:
        head_name, head = classifier_head(model)
    except ValueError as exc:
        raise ConfigError(f"model.freeze / optim.backbone_lr_mult: {exc}") from None
    named = list(model.named_parameters())
    if freeze is None:
        frozen = []
    elif freeze == "backbone":
        frozen = [n for n, _ in named if not _under(n, head_name)]
    else:
        modules = [n for n, _ in model.named_modules() if n] + [n for n, _ in named]
        unknown = [p for p in freeze if not any(_under(m, p) for m in modules)]
        if unknown:
            top = [n for n, _ in model.named_children()]
            raise ConfigError(f"model.freeze: prefix(es) {unknown} match no module of "
                              f"{cfg.model.name}; its top-level modules: {top}")
        frozen = [n for n, _ in named if any(_under(n, p) for p in freeze)]
    by_name = dict(named)
    return ParamRoles(head_name=head_name, head=frozenset(id(p) for p in head.parameters()),
                      frozen=frozenset(id(by_name[n]) for n in frozen),
                      frozen_names=tuple(frozen))


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class FreezeGate:
    """Keeps the ``"frozen"`` optimiser groups (:meth:`ParamRoles.split_groups`) still until
    ``unfreeze_epoch`` (1-based; None: all run): an ``optimizer.register_step_pre_hook`` that,
    while active, sets their gradients to None just before each step, so the optimiser skips
    them (learning rate 0 in effect, and no momentum, moments, decay or renormalisation
    either). Gradients are still computed and all-reduced: DDP sees the same parameters all
    run. Works with any schedule (the groups' lrs are never overwritten) and with the fp16
    GradScaler (``scaler.step`` calls ``optimizer.step``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, unfreeze_epoch: Optional[int]):
        self.unfreeze_epoch = unfreeze_epoch
        self.active = True
        self.handle = optimizer.register_step_pre_hook(self._drop_frozen_grads)

    def set_epoch(self, epoch: int) -> bool:
        """Activate or release the gate for 0-based ``epoch``; returns True when this call
        released it (the first epoch that trains everything)."""
        active = self.unfreeze_epoch is None or epoch + 1 < self.unfreeze_epoch
        released = self.active and not active
        self.active = active
        return released

    def _drop_frozen_grads(self, optimizer, args, kwargs) -> None:
        if not self.active:
            return
        for group in optimizer.param_groups:  # read each step: load_state_dict rebuilds them
            if group.get("frozen"):
                for p in group["params"]:
                    p.grad = None


@dataclass
class Finetune:
    """The fine-tuning state of one worker: the pretrained ``report`` (None: no
    ``model.pretrained``), the parameter ``roles`` and the freeze ``gate`` (None: nothing
    frozen)."""

    report: Optional[PretrainedReport] = None
    roles: Optional[ParamRoles] = None
    gate: Optional[FreezeGate] = None
    _announced: bool = False

    def begin_epoch(self, epoch: int, cfg: TrainConfig, log: Log) -> None:
        """Set the gate for 0-based ``epoch``; log the frozen set once, and the unfreezing."""
        if self.gate is None:
            return
        released = self.gate.set_epoch(epoch)
        if self.gate.active and not self._announced:
            until = (f"until epoch {cfg.model.unfreeze_epoch} (model.unfreeze_epoch)"
                     if cfg.model.unfreeze_epoch else "all run")
            log(f"model.freeze={cfg.model.freeze}: {len(self.roles.frozen_names)} parameter "
                f"tensors frozen {until}; BatchNorm running stats still update")
        elif released:
            log(f"model.unfreeze_epoch={cfg.model.unfreeze_epoch}: everything trains from epoch "
                f"{epoch + 1} (non-head lr x {cfg.optim.backbone_lr_mult:g})")
        self._announced = True


def attach_freeze_gate(optimizer: torch.optim.Optimizer, roles: Optional[ParamRoles],
                       cfg: TrainConfig) -> Optional[FreezeGate]:
    """A :class:`FreezeGate` on ``optimizer`` when ``roles`` freezes anything, else None."""
    if roles is None or not roles.frozen:
        return None
    return FreezeGate(optimizer, cfg.model.unfreeze_epoch)


# ------------------------------------------------------------------------------ driver, report
def check_finetune(cfg: TrainConfig, summary: DataSummary) -> None:
    """Fail fast on the driver, before any worker starts: build the model on the CPU as the
    workers will (without ``torch.compile``), load ``model.pretrained`` and resolve
    ``model.freeze``. A no-op when no fine-tuning key is set.

    Raises:
        ConfigError: as :func:`apply_pretrained` and :func:`param_roles`.
    """
    if not cfg.model.pretrained and cfg.model.freeze is None:
        return
    from cnn_ray.recipe.apply import prepare_model

    model = create_model(cfg.model.name, num_classes=summary.num_classes,
                         in_channels=summary.image_shape[2],
                         **cfg.model.build_knobs(cfg.data.image_size))
    prepare_model(model, cfg, compile=False)
    apply_pretrained(model, cfg)
    param_roles(model, cfg)
