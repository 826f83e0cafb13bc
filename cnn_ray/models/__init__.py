"""Model registry: build any registered CNN by name.

    from cnn_ray.models import create_model, list_models
    model = create_model("resnet9", num_classes=10, in_channels=3, width_mult=0.5)

Every model maps ``(N, in_channels, H, W)`` float (``H, W >= 16``) to ``(N, num_classes)`` logits
and works in channels-last memory format and under bf16 autocast. Register a new family with
``@register_model``; the tests pick it up automatically.
"""

from . import small, tv  # noqa: F401  (importing registers the models)
from .registry import (classifier_head, count_flops, create_model, list_models,
                       load_matching_state, load_pretrained, model_knobs, read_state_dict,
                       register_model)

__all__ = ["classifier_head", "count_flops", "create_model", "list_models",
           "load_matching_state", "load_pretrained", "model_knobs", "read_state_dict",
           "register_model"]
