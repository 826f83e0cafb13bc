"""Any timm model by name: ``create_model("timm/convnext_nano", num_classes, in_channels)``.

timm (Ross Wightman, ``huggingface/pytorch-image-models``) is the optional extra
``pip install -e ".[timm]"`` (also in ``dev``). A ``timm/<name>`` model is
``timm.create_model(name, num_classes=..., in_chans=..., pretrained=False)``; a pretrained tag
may be part of the name (``timm/convnext_nano.in12k_ft_in1k``) and its weights are loaded
afterwards through :mod:`cnn_ray.models.weights` (``model.pretrained``), like torchvision's. timm
sets the head for ``num_classes`` and the stem for ``in_chans`` itself. timm is imported only
when such a name is used.
"""

from __future__ import annotations

import difflib
from typing import Callable, Optional

from torch import nn

INSTALL_HINT = 'pip install -e ".[timm]"'


def import_timm():
    """The ``timm`` module. Raises ``ValueError`` saying how to install it when it is missing."""
    try:
        import timm
    except ImportError:
        raise ValueError(f"timm/ models need timm, which is not installed: {INSTALL_HINT} "
                         "(or pip install 'timm>=1.0')") from None
    return timm


def check_timm_name(name: str) -> str:
    """``name`` (without ``timm/``; a ``.tag`` suffix allowed) if timm has that architecture.

    Raises:
        ValueError: timm is not installed (the message says how to install it), or has no
            such model (the message lists up to 5 close matches from ``timm.list_models()``).
    """
    timm = import_timm()
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"timm has no model {arch!r}; close matches: "
                         f"{['timm/' + c for c in close] or 'none'} (timm.list_models())")
    if tag and name not in timm.list_pretrained(arch + ".*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(arch + ".*")]
        raise ValueError(f"timm model {arch!r} has no pretrained tag {tag!r}; its tags: "
                         f"{tags or 'none'}")
    return name


def timm_factory(name: str) -> Callable[..., nn.Module]:
    """The registry factory of ``timm/<name>``: ``factory(num_classes, in_channels=3,
    dropout=None) -> nn.Module``, whose only knob is ``dropout`` (timm's ``drop_rate``, before
    the classifier; None: timm's default).

    Raises:
        ValueError: as :func:`check_timm_name`.
    """
    check_timm_name(name)

    def factory(num_classes: int, in_channels: int = 3,
                dropout: Optional[float] = None) -> nn.Module:
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ValueError(f"timm/{name}: dropout must be in [0, 1), got {dropout}")
        kwargs = {} if dropout is None else {"drop_rate": dropout}
        return import_timm().create_model(name, pretrained=False, num_classes=num_classes,
                                          in_chans=in_channels, **kwargs)

    factory.__name__ = "timm/" + name
    return factory
