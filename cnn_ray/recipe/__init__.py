"""The fast-training recipe as small techniques, each a function with a card (what it does,
values that work, source). Pure PyTorch, no Ray; the training loop and config switch them on.

Most come from Keller Jordan's airbench (KellerJordan/cifar10-airbench, arXiv:2404.00498) and
David Page's "How to train your ResNet" (2018).
"""

from .batchnorm import bn_bias_param_groups, bn_bias_params, configure_batchnorm
from .blurpool import BlurPoolConv2d, apply_blurpool, binomial_kernel
from .ema import (copy_ema_to_model, ema_decay_at, ema_state_dict, load_ema_state_dict, make_ema,
                  update_ema)
from .flip import alternating_flip, alternating_flip_mask, first_epoch_flips, flip_batch
from .mixing import mix_batch, soft_target_cross_entropy
from .optimizers import MuonSGD, decoupled_sgd_hparams, orthogonalize, split_muon_groups
from .schedules import (RungAnnealed, TimeWarp, WarmupLinearDecay, WarmupStableDecay, WarmupThen,
                        warpable)
from .tta import TTA_MODES, predict_tta, tta_views
from .whitening import apply_patch_whitening, first_conv, patch_whitening_weights

__all__ = [
    "BlurPoolConv2d", "MuonSGD", "RungAnnealed", "TTA_MODES", "TimeWarp", "WarmupLinearDecay", "WarmupStableDecay",
    "WarmupThen", "warpable", "alternating_flip", "alternating_flip_mask", "apply_blurpool", "binomial_kernel",
    "apply_patch_whitening", "bn_bias_param_groups", "bn_bias_params", "configure_batchnorm",
    "copy_ema_to_model", "decoupled_sgd_hparams", "ema_decay_at", "ema_state_dict",
    "first_conv", "first_epoch_flips", "flip_batch", "load_ema_state_dict", "make_ema",
    "mix_batch", "orthogonalize", "patch_whitening_weights", "predict_tta",
    "soft_target_cross_entropy", "split_muon_groups", "tta_views", "update_ema",
]
