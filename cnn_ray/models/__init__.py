"""Model registry: build any registered CNN by name.

    from cnn_ray.models import create_model, list_models
    model = create_model("resnet9", num_classes=10, in_channels=3, width_mult=0.5)
    model = create_model("resnet50", num_classes=1000)              # torchvision's, ImageNet stem
    model = create_model("resnet50", num_classes=10, small_input=True)  # CIFAR stem
    model = create_model("timm/convnext_nano", num_classes=10)      # any timm model (extra)

Every model maps ``(N, in_channels, H, W)`` float (``H, W >= min_input_size(name)``, 16 for most)
to ``(N, num_classes)`` logits and works in channels-last memory format and under bf16 autocast.
Register a new family with ``@register_model``; the tests pick it up automatically. Pretrained
weights by name (``imagenet``, ``ResNet50_Weights.IMAGENET1K_V2``, timm tags):
:mod:`cnn_ray.models.weights`; the model table (``cnn-ray models``): :mod:`cnn_ray.models.table`.
"""

from . import small, tv  # noqa: F401  (importing registers the models)
from .registry import (SMALL_INPUT_BELOW, TIMM_PREFIX, adapt_input_conv, classifier_head,
                       count_flops, create_model, first_conv, list_models, load_matching_state,
                       load_pretrained, min_input_size, model_knobs, read_state_dict,
                       register_model, resolve_small_input)
from .weights import (NamedWeights, WeightsError, is_weights_name, load_named_weights,
                      resolve_weights)

__all__ = ["SMALL_INPUT_BELOW", "TIMM_PREFIX", "NamedWeights", "WeightsError",
           "adapt_input_conv", "classifier_head", "count_flops", "create_model", "first_conv",
           "is_weights_name", "list_models", "load_matching_state", "load_named_weights",
           "load_pretrained", "min_input_size", "model_knobs", "read_state_dict",
           "register_model", "resolve_small_input", "resolve_weights"]
