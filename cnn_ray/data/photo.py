"""Photo augmentation policies through torchvision ``transforms.v2``, per image. No Ray.

``augment.auto_augment`` (TrivialAugmentWide / RandAugment / AutoAugment) and
``augment.random_erasing`` run torchvision's own v2 transforms on each image of an
``(N, H, W, C) uint8`` batch (as ``(C, H, W)`` uint8 tensors; v2 works on uint8 directly), from
:func:`cnn_ray.data.augment.augment_batch` -- so both the streaming Ray Data tasks and the
memory-cache worker path run them. A batch of B images is B calls, as torchvision's
``references/classification`` does per sample; the ops pick a different op and strength per
image, so there is no batched form to share (trivial_augment_wide: ~3,900 128 px images per
CPU-second on one thread of an AMD EPYC, about half that for rand_augment's two ops
at magnitude 9; ``python -m cnn_ray.data.photo``).

Seeding: v2 transforms draw from torch's global CPU generator and take no generator argument.
Each image's draws come from its own seed, :func:`~cnn_ray.data.draws.row_seeds` of
``(seed, epoch, idx)`` in the technique's column (:data:`~cnn_ray.data.draws.DRAW_COLUMNS`
``auto_augment_seed`` / ``random_erasing_seed``): the global generator is re-seeded before
each image, inside ``torch.random.fork_rng(devices=[])`` (its state is restored afterwards,
CUDA generators are not touched) and under :data:`CPU_RNG_LOCK`. Per image rather than per
batch, so an image's output depends on ``(seed, epoch, idx)`` only -- not on the batch it
lands in, the Ray Data block size or the worker -- like every other technique here; same seed
and epoch repeat, another epoch draws anew.

Threads: the memory path augments in a background thread while the model trains. The lock
serialises this module with :class:`cnn_ray.recipe.mixing.BatchMixer` (the other user of the
forked global generator); a CPU training step's dropout, which draws from the global generator
without a lock, may interleave with an augmenting batch and make that run's draws
irreproducible (GPU steps draw from the CUDA generator and are unaffected). Ray Data tasks
run one torch thread (:class:`cnn_ray.data.pipeline.AugmentBatches`).

Device path: not implemented there (per-image ops on a GPU would be B small kernel launches
per op); :func:`cnn_ray.data.device_augment.check_device_augment` refuses with a ConfigError
naming the key, and :func:`cnn_ray.data.memory.shard_for_device` keeps such runs on this host
path.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

# torchvision (and torch._dynamo under it) is imported only when a policy or erasing runs:
# Train workers of runs without them keep their start-up time (tests/test_replay.py).

from cnn_ray.config import AutoAugment, RandomErasing
from cnn_ray.data.draws import DRAW_COLUMNS, row_seeds

if TYPE_CHECKING:
    from torchvision.transforms import v2

__all__ = ["CPU_RNG_LOCK", "auto_augment_", "forked_cpu_rng", "policy_transform",
           "random_erasing_"]

# One holder at a time of torch's global CPU generator while it is forked and re-seeded.
CPU_RNG_LOCK = threading.RLock()



@contextmanager
def forked_cpu_rng() -> Iterator[None]:
    """Hold :data:`CPU_RNG_LOCK` and fork torch's global CPU generator (restored on exit)."""
    with CPU_RNG_LOCK, torch.random.fork_rng(devices=[]):
        yield


def _v2():
    from torchvision.transforms import v2  # noqa: PLC0415 (lazy: see the imports)

    return v2


def policy_transform(cfg: AutoAugment) -> "v2.Transform":
    """The torchvision v2 transform of ``augment.auto_augment`` (``policy`` not ``none``).

    Raises:
        ValueError: ``policy`` is ``none``.
    """
    v2 = _v2()
    bilinear = v2.InterpolationMode.BILINEAR  # torchvision references/classification's presets
    if cfg.policy == "trivial_augment_wide":
        return v2.TrivialAugmentWide(num_magnitude_bins=cfg.num_magnitude_bins,
                                     interpolation=bilinear)
    if cfg.policy == "rand_augment":
        return v2.RandAugment(num_ops=cfg.num_ops, magnitude=cfg.magnitude,
                              num_magnitude_bins=cfg.num_magnitude_bins,
                              interpolation=bilinear)
    if cfg.policy == "auto_augment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(cfg.auto_augment_policy),
                              interpolation=bilinear)
    raise ValueError(f"augment.auto_augment.policy={cfg.policy!r}: no transform")


def _per_image_(x: np.ndarray, transform: "v2.Transform", seeds: np.ndarray) -> None:
    """``x[i] = transform(x[i])`` in place on ``(N, H, W, C) uint8``, the generator seeded with
    ``seeds[i]`` before image ``i`` (as ``(C, H, W)`` tensors; one NCHW copy each way)."""
    planar = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    gen = torch.default_generator
    with forked_cpu_rng():
        for i in range(len(planar)):
            gen.manual_seed(int(seeds[i]))
            image = planar[i]
            out = transform(image)
            if out.data_ptr() != image.data_ptr():  # v2 returns the input when it does nothing
                image.copy_(out)
    x[...] = planar.permute(0, 2, 3, 1).numpy()


def auto_augment_(x: np.ndarray, idx: np.ndarray, cfg: AutoAugment, *, seed: int,
                  epoch: int) -> None:
    """Apply ``augment.auto_augment``'s policy to each image, in place.

    Technique card -- **auto_augment**: per image, ``trivial_augment_wide`` applies one op drawn
    from 14 (identity, shear, translate, rotate, brightness, colour, contrast, sharpness,
    posterize, solarize, autocontrast, equalize) at a magnitude drawn from
    ``num_magnitude_bins`` (31) bins -- no knobs to tune, the strongest default in Mueller &
    Hutter 2021 (TrivialAugment); ``rand_augment`` applies ``num_ops`` (2) ops drawn uniformly
    at one ``magnitude`` (9 of 31; Cubuk et al. 2020, RandAugment: tune ``magnitude`` 5-15 with
    model size); ``auto_augment`` a sub-policy (two ops with probabilities and strengths)
    learned on ``auto_augment_policy`` imagenet/cifar10/svhn (Cubuk et al. 2019, AutoAugment).
    torchvision's ``references/classification`` uses all three (``--auto-augment ta_wide``
    for its newer ImageNet recipes), after the random-resized crop and flip, with bilinear
    resampling and fill 0, as here. Source: torchvision ``transforms.v2``.

    Args:
        x: ``(N, H, W, C) uint8`` with C 1 or 3, modified in place.
        idx: ``(N,)`` int64 global row indices. seed, epoch: the draws' key
            (:func:`~cnn_ray.data.draws.row_seeds`, column ``auto_augment_seed``).
        cfg: ``augment.auto_augment`` (``policy`` not ``none``).

    Raises:
        ValueError: C is not 1 or 3 (torchvision's colour ops), or ``policy`` is ``none``.
    """
    if x.shape[3] not in (1, 3):
        raise ValueError(f"augment.auto_augment.policy={cfg.policy}: torchvision's ops take 1- "
                         f"or 3-band images, got {x.shape[3]} bands")
    seeds = row_seeds(seed, epoch, idx, DRAW_COLUMNS["auto_augment_seed"])
    _per_image_(x, policy_transform(cfg), seeds)


def random_erasing_(x: np.ndarray, idx: np.ndarray, cfg: RandomErasing, *, seed: int,
                    epoch: int) -> None:
    """Erase one random rectangle per selected image, in place (torchvision v2.RandomErasing).

    Technique card -- **random_erasing**: with probability ``p`` (0.5), fill a rectangle of
    area ``scale`` (0.02-0.33 of the image) and aspect ``ratio`` (0.3-3.3, log-uniform) at a
    uniform position with ``value`` (up to 10 tries for a box that fits, else nothing is
    erased). Zhong et al. 2020 (Random Erasing Data Augmentation) use p=0.5 on CIFAR;
    torchvision's ImageNet recipes ``--random-erase 0.1``. Here it runs on the uint8 image
    before normalisation, so ``value=0`` is black (torchvision's references erase after
    ``Normalize``, where 0 is the mean colour); doing it on the host keeps it on both the
    streaming and memory paths. Source: torchvision ``transforms.v2.RandomErasing``.

    Args:
        x: ``(N, H, W, C) uint8`` (any C), modified in place.
        idx: ``(N,)`` int64 global row indices. seed, epoch: the draws' key
            (:func:`~cnn_ray.data.draws.row_seeds`, column ``random_erasing_seed``).
        cfg: ``augment.random_erasing``.
    """
    t = _v2().RandomErasing(p=cfg.p, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
                         value=cfg.value)
    _per_image_(x, t, row_seeds(seed, epoch, idx, DRAW_COLUMNS["random_erasing_seed"]))


def _benchmark(n: int = 256, size: int = 128, repeats: int = 5) -> None:
    """``python -m cnn_ray.data.photo``: images/s of each policy on ``n`` random ``size`` px RGB
    images, one torch thread (as in a Ray Data task); median of ``repeats`` batches, by the
    wall clock and per second of this process's CPU time (steadier on a loaded machine)."""
    import time

    torch.set_num_threads(1)
    x = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    idx = np.arange(n, dtype=np.int64)
    cases = {p: (auto_augment_, AutoAugment(policy=p))
             for p in ("trivial_augment_wide", "rand_augment", "auto_augment")}
    cases["random_erasing p=1"] = (random_erasing_, RandomErasing(enabled=True, p=1.0))
    for label, (fn, cfg) in cases.items():
        wall, cpu = [], []
        for epoch in range(repeats):
            y = x.copy()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn(y, idx, cfg, seed=0, epoch=epoch)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        t, c = float(np.median(wall)), float(np.median(cpu))
        print(f"{label:22s} {n}x{size}x{size}x3, 1 thread: {n / t:6.0f} images/s wall, "
              f"{n / c:6.0f} per CPU-second ({t * 1e3:.0f} ms per batch)")


if __name__ == "__main__":
    _benchmark()
