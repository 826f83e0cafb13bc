"""Learning-rate factor for ``torch.optim.lr_scheduler.LambdaLR``, stepped once per optimiser
step: airbench's warm-up then linear decay, with an optional stop.

Card
----
What: the rate rises linearly from ``start`` x to 1x over the first ``warmup_frac`` of the
steps, then falls linearly to ``end`` x at the last step (a triangle). ``stop_step`` sets the
factor to 0 from that step on: the whitening bias trains for the first epochs only, through its
group's learning rate rather than ``requires_grad`` (which must not change under DDP).
Values that work: airbench94 ``start=0.2, warmup_frac=0.23, end=0.07`` over 9.9 epochs, the
whitening bias stopped after 3 epochs; airbench94_muon: no warm-up, linear decay to 0
(``start=1, warmup_frac=0, end=0``).
Source: Smith & Topin, "Super-Convergence" (2018); David Page's ResNet-9 (2018);
Keller Jordan, airbench ``triangle``. A callable class holding only numbers (not a lambda), so
``LambdaLR.state_dict()`` saves it and ``torch.load(weights_only=True)`` reads it back.
"""

from __future__ import annotations

from typing import Optional


class WarmupLinearDecay:
    """Factor at optimiser step ``t``: ``start -> 1`` linearly for ``t <= warmup_frac * T``,
    then ``1 -> end`` linearly until ``t = T``; ``end`` after ``T`` (no error past the end);
    0 from ``stop_step`` on, if given.

    Args:
        total_steps: ``T`` >= 1, the optimiser steps of the whole run.
        warmup_frac: fraction of ``T`` at the peak, in [0, 1) (airbench: 0.23).
        start: factor at step 0 (airbench: 0.2).
        end: factor at step ``T`` (airbench: 0.07).
        stop_step: from this step on the factor is 0 (the whitening-bias group: 3 epochs of
            steps in airbench); None: never.
    Raises:
        ValueError: values out of range.
    """

    def __init__(self, total_steps: int, warmup_frac: float = 0.23, start: float = 0.2,
                 end: float = 0.07, stop_step: Optional[int] = None):
        if total_steps < 1 or not 0.0 <= warmup_frac < 1.0 or start < 0 or end < 0:
            raise ValueError(f"need total_steps >= 1, 0 <= warmup_frac < 1, start/end >= 0; got "
                             f"{total_steps}, {warmup_frac}, {start}, {end}")
        self.total_steps = int(total_steps)
        self.peak = int(warmup_frac * self.total_steps)
        self.start, self.end = float(start), float(end)
        self.stop_step = None if stop_step is None else int(stop_step)

    def __call__(self, step: int) -> float:
        if self.stop_step is not None and step >= self.stop_step:
            return 0.0
        if step < self.peak:
            return self.start + (1.0 - self.start) * step / self.peak
        frac = min(1.0, (step - self.peak) / max(1, self.total_steps - self.peak))
        return 1.0 + (self.end - 1.0) * frac
