"""The model registry: ``@register_model``, ``create_model``, ``list_models``, ``count_flops``.

Modelled on timm's ``timm/models/_registry.py`` and ``_factory.py``: a factory registers under its
function name, ``create_model`` looks it up and calls it, dropping knobs that are ``None`` so a
sweep can leave a knob unset. Unlike timm, a knob a family does not accept is an error, not
silently ignored: the accepted knobs are the keyword parameters of the factory's signature.

Names beginning ``timm/`` are not registered: ``create_model("timm/convnext_nano", ...)`` builds
any timm model (:mod:`cnn_ray.models.timm_models`, the optional ``timm`` extra).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

Factory = Callable[..., nn.Module]

_REGISTRY: dict[str, Factory] = {}
_MIN_SIZE: dict[str, int] = {}
_POSITIONAL = ("num_classes", "in_channels")  # every factory takes these; they are not knobs
TIMM_PREFIX = "timm/"
# ``small_input: auto`` picks the small-image stem below this many pixels (data.image_size):
# at 96 px an ImageNet stem (32x downsampling) still leaves a 3x3 last feature map.
SMALL_INPUT_BELOW = 96


def register_model(fn: Optional[Factory] = None, *, name: Optional[str] = None,
                   min_size: int = 16):
    """Register a model factory ``fn(num_classes, in_channels, **knobs) -> nn.Module``.

    Use as ``@register_model`` (registers under ``fn.__name__``) or
    ``@register_model(name="other_name")``. The knobs a family accepts are the factory's
    keyword parameters other than ``num_classes`` and ``in_channels``; give them defaults.
    ``min_size``: the smallest square input (pixels) the model takes with its default stem.

    Raises:
        ValueError: the name is already registered or begins with ``timm/``, or the factory
            does not take ``num_classes`` and ``in_channels``.
    """

    def _register(f: Factory) -> Factory:
        key = name or f.__name__
        if key in _REGISTRY or key.startswith(TIMM_PREFIX):
            raise ValueError(f"model {key!r} is already registered (or reserved for timm)")
        params = inspect.signature(f).parameters
        missing = [p for p in _POSITIONAL if p not in params]
        if missing:
            raise ValueError(f"model factory {key!r} must accept {missing}")
        _REGISTRY[key] = f
        _MIN_SIZE[key] = min_size
        return f

    return _register(fn) if fn is not None else _register


def list_models() -> list[str]:
    """The registered model names, sorted (``timm/...`` names are not listed)."""
    return sorted(_REGISTRY)


def min_input_size(name: str) -> int:
    """The smallest square input, in pixels, model ``name`` takes with its default stem (16 for
    most; 32 for ConvNeXt, whose 4x4 patchify stem and three 2x2 downsamplings need it; 32 for
    ``timm/`` models, a guess). Raises ``ValueError`` for an unknown name."""
    if name.startswith(TIMM_PREFIX):
        return 32
    _lookup(name)
    return _MIN_SIZE[name]


def resolve_small_input(value: Union[bool, str], image_size: int) -> bool:
    """``small_input`` as a bool: ``"auto"`` is ``image_size < SMALL_INPUT_BELOW`` (96 px).

    Raises:
        ValueError: ``value`` is neither a bool nor ``"auto"``.
    """
    if isinstance(value, bool):
        return value
    if value != "auto":
        raise ValueError(f"small_input: expected true, false or 'auto', got {value!r}")
    return image_size < SMALL_INPUT_BELOW


def model_knobs(name: str) -> dict[str, Any]:
    """The knobs model ``name`` accepts, mapped to their defaults.

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names).
    """
    params = inspect.signature(_lookup(name)).parameters
    return {k: p.default for k, p in params.items() if k not in _POSITIONAL}


def create_model(name: str, num_classes: int, in_channels: int = 3, **knobs: Any) -> nn.Module:
    """Build registered model ``name``: input ``(N, in_channels, H, W)`` float, output
    ``(N, num_classes)`` logits.

    Knobs whose value is ``None`` are dropped, so the model's default applies. The knobs used
    across the project are ``width_mult`` (float), ``depth`` (int), ``kernel_size`` (int),
    ``separable`` (bool) and ``dropout`` (float); each family accepts the subset that makes sense
    (see :func:`model_knobs` and each factory's docstring).

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names), or is a
            ``timm/`` name while timm is not installed or has no such model; a knob is
            not accepted by that family (the message names the model, the knob and the accepted
            knobs); ``num_classes`` or ``in_channels`` is below 1; or the factory rejects a
            knob's value.
    """
    factory = _lookup(name)  # for timm/ names: ValueError when timm is missing or lacks it
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"{name}: num_classes and in_channels must be >= 1, "
                         f"got {num_classes} and {in_channels}")
    knobs = {k: v for k, v in knobs.items() if v is not None}
    accepted = model_knobs(name)
    unknown = sorted(k for k in knobs if k not in accepted)
    if unknown:
        raise ValueError(f"model {name!r} does not accept knob(s) {unknown}; "
                         f"accepted: {sorted(accepted)}")
    return factory(num_classes=num_classes, in_channels=in_channels, **knobs)


def _lookup(name: str) -> Factory:
    if name.startswith(TIMM_PREFIX):
        from .timm_models import timm_factory

        return timm_factory(name[len(TIMM_PREFIX):])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {list_models()}") from None


def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Forward FLOPs per image of ``model`` on a zero input of ``input_shape`` ``(N, C, H, W)``.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matmuls only, a
    multiply-add counts as 2 FLOPs (so FLOPs = 2 x MACs); normalisation, activations and
    pooling are not counted. The model runs in eval mode under ``torch.no_grad`` and its
    train/eval mode is restored afterwards. The total is divided by ``N``.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(input_shape, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // input_shape[0]


def load_pretrained(model: nn.Module, path: Union[str, Path]) -> list[str]:
    """Load a local state dict from ``path`` into ``model`` (transfer learning); nothing is
    downloaded.

    The file is read by :func:`read_state_dict` and matched by :func:`load_matching_state`:
    parameters of the classifier head (:func:`classifier_head`) whose shapes differ, e.g.
    because ``num_classes`` differs, are skipped and keep their fresh initialisation.

    Returns:
        The state-dict keys skipped for a shape mismatch.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file does not hold a state dict, or keys are missing/unexpected or of a
            different shape outside the head (the message names the file and the keys).
    """
    return load_matching_state(model, read_state_dict(path), str(path))["skipped"]


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The state dict in the file ``path``, read with ``torch.load(weights_only=True,
    map_location="cpu")``: a state dict, or a dict holding it under ``"model"`` or
    ``"state_dict"``; a DDP ``"module."`` prefix is removed.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is refused by ``weights_only`` or holds no state dict of tensors
            (the message names the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # UnpicklingError and friends
        raise ValueError(f"{path}: refused to load (torch.load weights_only=True): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                         ) from exc
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_matching_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, *,
                        adapt_stem: bool = False) -> dict[str, list[str]]:
    """Copy ``state`` into ``model`` where it fits; the classifier head may differ.

    Keys of the head (:func:`classifier_head`) that the state lacks or holds at another shape
    keep the model's fresh initialisation; head keys only the state has are dropped. Every
    other key must be present on both sides with the same shape, except with ``adapt_stem``
    (weights made for 3-channel images at their own stem, e.g. torchvision's or timm's): then
    the first conv (:func:`first_conv`) is adapted to another input channel count
    (:func:`adapt_input_conv`), and keeps its fresh initialisation when its kernel differs
    (``small_input``'s 3x3 stem against ResNet's 7x7).

    Returns:
        ``{"loaded": keys copied from state, "new": model keys the state lacks (head),
        "skipped": head/stem keys skipped for a shape mismatch (fresh init), "unused": head
        keys of the state the model lacks, "adapted": stem keys adapted to the input
        channels}``, each sorted.
    Raises:
        ValueError: a key outside the head is missing, unexpected or of another shape (the
            message names ``source`` and up to 10 keys with their shapes).
    """
    own = model.state_dict()
    head = classifier_head(model)[0] + "."
    free = (head,)
    adapted: list[str] = []
    if adapt_stem:
        state = dict(state)
        stem = first_conv(model)[0]
        key = stem + ".weight"
        if key in state and key in own and state[key].shape != own[key].shape:
            new, old = own[key].shape, state[key].shape
            if new[0] == old[0] and new[2:] == old[2:]:  # only the input channels differ
                state[key] = adapt_input_conv(new[1], state[key])
                adapted.append(key)
            else:
                free = (head, stem + ".")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_missing = [k for k in missing if not k.startswith(head)]
    bad_unexpected = [k for k in unexpected if not k.startswith(head)]
    if bad_missing or bad_unexpected:
        raise ValueError(f"{source}: does not match the model; missing keys {bad_missing[:10]}, "
                         f"unexpected keys {bad_unexpected[:10]}")
    mismatched = sorted(k for k in own if k in state and own[k].shape != state[k].shape)
    bad = [k for k in mismatched if not k.startswith(free)]
    if bad:
        raise ValueError(f"{source}: shape mismatch outside the classifier head "
                         f"({head[:-1]!r}): "
                         + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                     for k in bad[:10]))
    loaded = sorted(k for k in own if k in state and k not in mismatched)
    model.load_state_dict({**own, **{k: state[k] for k in loaded}})
    return {"loaded": loaded, "new": missing, "skipped": mismatched,
            "unused": unexpected, "adapted": adapted}


def adapt_input_conv(in_channels: int, weight: torch.Tensor) -> torch.Tensor:
    """A first-conv ``weight`` ``(O, 3, k, k)`` made for RGB adapted to ``in_channels``: 1
    channel sums the RGB filters (a gray image then gives the RGB response); more repeat them
    cyclically, scaled by ``3 / in_channels`` so the response keeps its size. Source: timm's
    ``adapt_input_conv`` (``timm/models/_manipulate.py``), which does the same.

    Raises:
        ValueError: ``weight`` is not 4-D.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D conv weight, got shape {tuple(weight.shape)}")
    base = weight.shape[1]
    if in_channels == base:
        return weight
    w = weight.float()
    if in_channels == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = -(-in_channels // base)
        w = w.repeat(1, reps, 1, 1)[:, :in_channels] * (base / in_channels)
    return w.to(weight.dtype)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """``(module name, module)`` of the model's first ``nn.Conv2d`` in module order: the stem
    conv of every registered family (timm models: their ``pretrained_cfg["first_conv"]``).

    Raises:
        ValueError: ``model`` has no ``nn.Conv2d``.
    """
    named = getattr(model, "pretrained_cfg", None) or {}
    if isinstance(named.get("first_conv"), str):
        module = _submodule(model, named["first_conv"])
        if isinstance(module, nn.Conv2d):
            return named["first_conv"], module
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__}: no nn.Conv2d, so no stem conv to find")


def classifier_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """``(module name, module)`` of the classifier head of ``model``: the timm model's
    ``pretrained_cfg["classifier"]`` when it is an ``nn.Linear``, else its last ``nn.Linear``
    in module order (airbench/resnet9: the ``Linear`` before the output ``_Scale``;
    resnet18_cifar, dwsep_cnn, simple_cnn: the last layer of the head; torchvision's ``fc``
    (ResNet, RegNet, ShuffleNet), ``classifier.1`` (MobileNetV2, EfficientNet), ``classifier.3``
    (MobileNetV3: the 1024/1280-wide hidden ``classifier.0`` counts as backbone),
    ``classifier.2`` (ConvNeXt)). Its parameters are the only ones whose shape depends on
    ``num_classes`` in every registered family (``tests/test_finetune.py`` checks each).

    Raises:
        ValueError: ``model`` has no ``nn.Linear``.
    """
    named = getattr(model, "pretrained_cfg", None) or {}
    if isinstance(named.get("classifier"), str):
        module = _submodule(model, named["classifier"])
        if isinstance(module, nn.Linear):
            return named["classifier"], module
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ValueError(f"{type(model).__name__}: no nn.Linear, so no classifier head to find")
    return last


def _submodule(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
