"""Pretrained weights by name (``model.pretrained``): torchvision's weights enums and timm's tags.

What a name can be (:func:`is_weights_name`; anything else is a local file or checkpoint path):

- ``imagenet`` (or ``true``): the family's default weights, torchvision's
  ``get_model_weights(name).DEFAULT`` (``ResNet50_Weights.IMAGENET1K_V2``) or the timm model's
  default pretrained tag (the one in the name, ``timm/convnext_nano.in12k_ft_in1k``, if given);
- a torchvision weights name, ``ResNet50_Weights.IMAGENET1K_V2`` or ``IMAGENET1K_V2``;
- a timm tag, ``.in12k_ft_in1k`` (``timm/`` models only).

Files come from the local caches: torchvision's from ``torch.hub.get_dir()/checkpoints/<the file
name in the weights' URL>`` (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``),
timm's from the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, default
``~/.cache/huggingface/hub``). A file not there is downloaded (torchvision: with torch.hub's
SHA-256 prefix check against the file name; a file already cached is not re-hashed, as
torch.hub does), unless ``HF_HUB_OFFLINE=1`` (the Hugging Face switch, honoured for
torchvision's files too) or the download fails: then :class:`WeightsError` names the file
expected, where to put it and the URL to fetch it from.

The weights' preprocessing (mean/std, resize and crop sizes, interpolation) comes from the
weights themselves: torchvision's ``weights.transforms()``, timm's ``pretrained_cfg``
(:meth:`NamedWeights.preprocessing`). No Ray here; torchvision and timm are imported when used.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from .registry import TIMM_PREFIX, load_matching_state

_TV_NAME = re.compile(r"([A-Za-z0-9_]+_Weights\.)?[A-Z][A-Z0-9_]*")
_TIMM_TAG = re.compile(r"\.[a-z0-9_]+")
_DEFAULT = ("imagenet", "true")


class WeightsError(ValueError):
    """Named weights cannot be resolved or loaded; the message says what was expected."""


@dataclass(frozen=True)
class NamedWeights:
    """Pretrained weights known by name, resolved without reading or downloading anything.

    Attributes:
        source: ``"torchvision"`` or ``"timm"``.
        name: the canonical name, ``ResNet18_Weights.IMAGENET1K_V1`` or
            ``timm/convnext_nano.in12k_ft_in1k``.
        url: where the file is downloaded from.
        file: the local path expected (timm: ``<revision>`` stands for the snapshot folder).
        mean, std: per-channel normalisation, ``[0, 1]`` units (RGB).
        resize_size, crop_size: evaluation preprocessing in pixels (resize the short side,
            then centre-crop); ``crop_size`` is the training resolution of the weights.
        interpolation: ``"bilinear"``, ``"bicubic"``, ...
        num_classes: classes of the weights' own head.
        hub_id, hub_file: timm's Hugging Face repo and file (None for torchvision's).
    """

    source: str
    name: str
    url: str
    file: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_size: int
    crop_size: int
    interpolation: str
    num_classes: int
    hub_id: Optional[str] = None
    hub_file: Optional[str] = None

    def preprocessing(self) -> dict[str, Any]:
        """``{"weights", "mean", "std", "resize_size", "crop_size", "interpolation"}``: what
        the data side needs to feed these weights as they were trained (JSON-safe)."""
        return {"weights": self.name, "mean": list(self.mean), "std": list(self.std),
                "resize_size": self.resize_size, "crop_size": self.crop_size,
                "interpolation": self.interpolation}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict of every field."""
        return dataclasses.asdict(self)


def is_weights_name(spec: str) -> bool:
    """Whether ``model.pretrained`` value ``spec`` names weights (``imagenet``/``true``, a
    torchvision weights name, a ``.tag``) rather than a local file or checkpoint directory."""
    return spec.lower() in _DEFAULT or bool(_TV_NAME.fullmatch(spec) or _TIMM_TAG.fullmatch(spec))


def resolve_weights(model_name: str, spec: str, knobs: Optional[dict] = None) -> NamedWeights:
    """The :class:`NamedWeights` that ``spec`` names for registry model ``model_name`` built
    with ``knobs`` (``shufflenet_v2``'s ``width_mult`` picks the builder). Reads no file.

    Raises:
        WeightsError: ``model_name`` has no named weights (our own networks), the name is not
            one of that family's weights (the message lists them), or timm is missing / has no
            such model or tag.
    """
    if model_name.startswith(TIMM_PREFIX):
        return _resolve_timm(model_name[len(TIMM_PREFIX):], spec)
    from .tv import torchvision_builder

    builder = torchvision_builder(model_name, knobs or {})
    if builder is None:
        raise WeightsError(
            f"{spec!r} names pretrained weights, but model {model_name!r} has none published "
            "(named weights exist for the torchvision models, e.g. resnet50, and timm/ "
            "models): give a local state dict file or cnn_ray checkpoint directory")
    if _TIMM_TAG.fullmatch(spec):
        raise WeightsError(f"{spec!r} is a timm tag; model {model_name!r} is torchvision's: "
                           "use imagenet or a torchvision weights name")
    import torchvision.models as tvm

    family = tvm.get_model_weights(builder)
    member = spec.rpartition(".")[2]
    if spec.lower() in _DEFAULT:
        weights = family.DEFAULT
    elif "." in spec and spec.partition(".")[0] != family.__name__:
        raise WeightsError(f"{spec!r} are not weights of {model_name!r} (torchvision "
                           f"{builder}); its weights: {_members(family)}")
    elif member in family.__members__:
        weights = family[member]
    else:
        raise WeightsError(f"{model_name!r} (torchvision {builder}) has no weights "
                           f"{spec!r}; its weights: {_members(family)} (imagenet = "
                           f"{family.DEFAULT})")
    t = weights.transforms()
    return NamedWeights(
        source="torchvision", name=str(weights), url=weights.url,
        file=str(Path(torch.hub.get_dir()) / "checkpoints" / _url_file(weights.url)),
        mean=tuple(float(v) for v in t.mean), std=tuple(float(v) for v in t.std),
        resize_size=int(t.resize_size[0]), crop_size=int(t.crop_size[0]),
        interpolation=t.interpolation.value, num_classes=len(weights.meta["categories"]))


def _members(family) -> list[str]:
    return [str(w) for w in family]


def _url_file(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def _resolve_timm(name: str, spec: str) -> NamedWeights:
    from .timm_models import check_timm_name, import_timm

    try:
        check_timm_name(name)
        timm = import_timm()
    except ValueError as exc:
        raise WeightsError(str(exc)) from None
    arch, _, tag = name.partition(".")
    if _TIMM_TAG.fullmatch(spec):
        if tag and tag != spec[1:]:
            raise WeightsError(f"{spec!r}: the model name timm/{name} already names tag {tag!r}")
        tag = spec[1:]
    elif spec.lower() not in _DEFAULT:
        raise WeightsError(f"{spec!r}: for a timm model give imagenet/true (its default "
                           "weights) or a pretrained tag such as .in1k")
    tags = [t.partition(".")[2] for t in timm.list_pretrained(arch + ".*")]
    cfg = (None if tag and tag not in tags  # get_pretrained_cfg raises on an unknown tag
           else timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch))
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(f"timm model {arch!r} has no pretrained weights "
                           f"{('tag ' + repr(tag)) if tag else ''}; its tags: {tags or 'none'}")
    full = f"timm/{cfg.architecture}.{cfg.tag}" if cfg.tag else f"timm/{cfg.architecture}"
    crop = int(cfg.input_size[-1])
    common = dict(source="timm", name=full, mean=tuple(cfg.mean), std=tuple(cfg.std),
                  crop_size=crop, resize_size=int(math.floor(crop / (cfg.crop_pct or 1.0))),
                  interpolation=str(cfg.interpolation), num_classes=int(cfg.num_classes))
    if not cfg.hf_hub_id:  # an old timm entry: a URL into torch.hub's cache
        return NamedWeights(url=cfg.url, file=str(Path(torch.hub.get_dir()) / "checkpoints" /
                                                 _url_file(cfg.url)), **common)
    hub_file = cfg.hf_hub_filename or "model.safetensors"
    folder = _hf_cache() / f"models--{cfg.hf_hub_id.replace('/', '--')}"
    return NamedWeights(url=f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{hub_file}",
                        file=str(folder / "snapshots" / "<revision>" / hub_file),
                        hub_id=cfg.hf_hub_id, hub_file=hub_file, **common)


def _hf_cache() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once
    at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expanduser(home)) / "hub"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to 1/true/yes/on: no download is tried."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_file(w: NamedWeights) -> Optional[Path]:
    """The local file of ``w`` when it is in the cache, else None (reads nothing)."""
    if w.hub_id is None:
        return Path(w.file) if os.path.exists(w.file) else None
    from huggingface_hub import try_to_load_from_cache

    for name in dict.fromkeys((w.hub_file, "model.safetensors", "pytorch_model.bin")):
        found = try_to_load_from_cache(w.hub_id, name, cache_dir=_hf_cache())
        if isinstance(found, str) and os.path.exists(found):
            return Path(found)
    return None


def fetch_weights(w: NamedWeights) -> Path:
    """The local file of ``w``: the cached one, else downloaded into the cache.

    Raises:
        WeightsError: not cached and offline (``HF_HUB_OFFLINE``) or the download failed; the
            message names the file expected, its folder and the URL.
    """
    found = cached_file(w)
    if found is not None:
        return found
    if offline():
        raise WeightsError(_missing(w, "HF_HUB_OFFLINE is set, so nothing is downloaded"))
    try:
        if w.hub_id is None:
            from torch.hub import HASH_REGEX, download_url_to_file

            os.makedirs(os.path.dirname(w.file), exist_ok=True)
            match = HASH_REGEX.search(os.path.basename(w.file))
            download_url_to_file(w.url, w.file, match.group(1) if match else None,
                                 progress=False)
            return Path(w.file)
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(w.hub_id, w.hub_file, cache_dir=_hf_cache()))
    except Exception as exc:  # noqa: BLE001 (no network, HTTP errors, hash mismatch)
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise WeightsError(_missing(w, f"the download failed ({reason})")) from None


def _missing(w: NamedWeights, why: str) -> str:
    where = (f"{w.file} (torch.hub's cache: $TORCH_HOME/hub/checkpoints)" if w.hub_id is None
             else f"{w.file} in the Hugging Face cache (refs/main names the revision; "
                  f"`huggingface-cli download {w.hub_id}` on a machine online, then copy "
                  f"{Path(w.file).parents[2]})")
    return (f"{w.name} is not in the local cache and {why}: expected the file {where}; "
            f"fetch it from {w.url} and put it there")


def load_weights(w: NamedWeights) -> dict[str, torch.Tensor]:
    """The state dict of ``w`` (CPU tensors), as the weights' own library loads it:
    torchvision's ``weights.get_state_dict(check_hash=True, weights_only=True)`` from torch.hub's
    cache; timm's ``create_model(name, pretrained=True)`` with the cached file
    (``pretrained_cfg_overlay={"file": ...}``, so its checkpoint filters apply), at the weights'
    own class count and 3 input channels.

    Raises:
        WeightsError: as :func:`fetch_weights`, or the file is unreadable (named).
    """
    path = fetch_weights(w)
    try:
        if w.source == "torchvision":
            import torchvision.models as tvm

            return tvm.get_weight(w.name).get_state_dict(progress=False, check_hash=True,
                                                         map_location="cpu", weights_only=True)
        from .timm_models import import_timm

        model = import_timm().create_model(w.name[len(TIMM_PREFIX):], pretrained=True,
                                           pretrained_cfg_overlay={"file": str(path)})
        return {k: v.detach() for k, v in model.state_dict().items()}
    except Exception as exc:  # noqa: BLE001 (torch.load/safetensors/timm errors)
        raise WeightsError(f"{w.name}: {path} could not be loaded: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def load_named_weights(model: nn.Module, model_name: str, spec: str,
                       knobs: Optional[dict] = None) -> tuple[NamedWeights, dict[str, list[str]]]:
    """Load the weights ``spec`` names into ``model`` (registry model ``model_name`` built with
    ``knobs``, any ``num_classes`` and ``in_channels``): the head is left freshly initialised
    when the class count differs, the first conv adapted to the input channels, or left fresh
    when ``small_input`` changed its kernel (:func:`cnn_ray.models.load_matching_state` with
    ``adapt_stem``).

    Returns:
        ``(weights, report)``: the :class:`NamedWeights` and ``load_matching_state``'s keys.
    Raises:
        WeightsError: as :func:`resolve_weights` and :func:`load_weights`, or the weights do
            not fit the model outside its head and stem (e.g. another ``width_mult``).
    """
    w = resolve_weights(model_name, spec, knobs)
    state = load_weights(w)
    try:
        return w, load_matching_state(model, state, w.name, adapt_stem=True)
    except ValueError as exc:
        raise WeightsError(str(exc)) from None
