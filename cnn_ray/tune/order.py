"""The order in which a sweep's pre-drawn configurations start: as drawn, or longest first.

A sweep runs its trials on a few slots (``max_concurrent_trials``). When the trials differ in
cost (an architecture search: a separable ResNet-9 and a full-width airbench differ 2-3x in
time per epoch here), the order decides how long the end of the sweep runs with idle slots:
measured on the 2-core Xeon (issue 13, ``benchmarks/benchmark_sweep.py``, FIFO over 16 drawn
configurations x 8 epochs), the last trial to start was one of the longest (115 s) and ran
alone for most of that time: every slot trained for only 81% of the sweep's wall time.
Starting the longest trials first is Graham's LPT rule (R. L. Graham, "Bounds on
multiprocessing timing anomalies", SIAM J. Appl. Math. 17(2), 1969): its makespan is at most
``4/3 - 1/(3m)`` of the optimum on ``m`` slots, and the trials that end last are the short ones.

A trial's cost is ``optim.epochs / images_per_sec``: the epochs it is planned for over the
training images/s of its network, measured once per distinct network set-up (the ``model``
section, per-worker batch, precision, layout, image size, threads) by a few synthetic
forward+backward+step passes on the driver (:func:`cnn_ray.benchmark.synthetic_images_per_sec`;
FLOPs are no substitute: the separable ResNet-9 has a third of airbench x0.25's FLOPs and
trains slower than it on this CPU). Every trial reads the same data, so the image count is a
common factor. The driver measures on its own device: on a GPU cluster whose driver has no GPU
the order follows CPU speed, which ranks networks less faithfully.

Under Tune's ASHA (``asha``) the order is a different trade: the first trials at a rung meet
few peers and pass it, so longest-first spends those promotions on the costly networks. Under
``asha_promotion`` nothing passes a rung unranked, and longest-first makes the costly
networks' promotions happen while cheap first-rung trials can still fill the other slots
(measured: 353 s instead of 412 s for the same 64 epochs). ``as_drawn`` is the default for
every scheduler. No Ray here.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Optional, Sequence

from cnn_ray.config import TrainConfig

Rate = Callable[[TrainConfig], float]  # a config -> its training images/s (> 0)


def speed_key(cfg: TrainConfig) -> str:
    """What sets a config's time per training image: the ``model`` section, per-worker batch,
    precision, image size and channels, threads and device (a JSON string: equal keys share
    one measurement)."""
    return json.dumps({"model": cfg.model.model_dump(mode="json"),
                       "batch": cfg.per_worker_batch_size(), "precision": cfg.precision.dtype,
                       "image_size": cfg.data.image_size, "channels": cfg.data.channels,
                       "threads": cfg.scaling.torch_threads, "gpu": cfg.scaling.use_gpu},
                      sort_keys=True, default=str)


def measured_rate(num_classes: int, *, steps: int = 3, warmup: int = 1) -> Rate:
    """A :data:`Rate` that times ``steps`` synthetic training steps (after ``warmup``) of the
    config's network at its batch, precision, layout and ``scaling.torch_threads``; the
    driver's torch thread count is restored afterwards."""
    def rate(cfg: TrainConfig) -> float:
        import torch

        from cnn_ray.benchmark import synthetic_images_per_sec

        threads = torch.get_num_threads()
        try:
            return synthetic_images_per_sec(cfg, num_classes, steps=steps, warmup=warmup)
        finally:
            torch.set_num_threads(threads)
    return rate


def trial_costs(configs: Sequence[TrainConfig], rate: Rate) -> list[float]:
    """Each config's planned training seconds per training image: ``optim.epochs /
    rate(config)``, ``rate`` called once per distinct :func:`speed_key`.

    Raises:
        ValueError: a rate that is not a positive number (naming the network).
    """
    rates: dict[str, float] = {}
    out = []
    for cfg in configs:
        key = speed_key(cfg)
        if key not in rates:
            r = float(rate(cfg))
            if not r > 0:
                raise ValueError(f"images/s of model {cfg.model.name!r} measured as {r!r}; "
                                 "expected a positive number")
            rates[key] = r
        out.append(cfg.optim.epochs / rates[key])
    return out


def longest_first(points: Sequence[dict], costs: Sequence[float]) -> list[int]:
    """The indices of ``points`` by decreasing cost; equal costs keep their drawn order
    (stable), so a sweep of one network runs as drawn."""
    if len(points) != len(costs):
        raise ValueError(f"{len(points)} points but {len(costs)} costs")
    return sorted(range(len(points)), key=lambda i: -costs[i])


def order_points(points: Sequence[dict], configs: Sequence[TrainConfig], order: str,
                 rate: Optional[Rate] = None, *, log: Callable[[str], None] = print) -> list[dict]:
    """``points`` in the order the sweep starts them. ``order``: ``as_drawn`` (unchanged) or
    ``longest_first`` (:func:`longest_first` of :func:`trial_costs`; ``rate`` defaults to
    :func:`measured_rate` with 10 classes). ``configs[i]`` is ``points[i]``'s validated
    config. Prints what it measured and how long that took.

    Raises:
        ValueError: an unknown ``order``, or a bad measured rate.
    """
    if order == "as_drawn":
        return [dict(p) for p in points]
    if order != "longest_first":
        raise ValueError(f"sweep.order: {order!r}; expected 'as_drawn' or 'longest_first'")
    t0 = time.perf_counter()
    costs = trial_costs(configs, rate or measured_rate(10))
    idx = longest_first(points, costs)
    distinct = len({speed_key(c) for c in configs})
    log(f"[cnn_ray] sweep.order longest_first: {distinct} network set-up(s) timed in "
        f"{time.perf_counter() - t0:.1f} s; planned cost (s per training image) from "
        f"{max(costs):.4g} down to {min(costs):.4g}")
    return [dict(points[i]) for i in idx]


__all__ = ["Rate", "speed_key", "measured_rate", "trial_costs", "longest_first", "order_points"]
