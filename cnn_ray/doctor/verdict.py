"""The doctor's diagnosis: from measured figures to a verdict, its evidence and ranked changes.

A pure function of :class:`Measurements` (no Ray, no torch), so the rules are tested on
synthetic figures. The figures come from :mod:`cnn_ray.doctor.profile` (the step split) and
:mod:`cnn_ray.doctor.run` (the recipe on the current cluster).

Verdicts, first match wins:

- ``memory-bound``: the object store spilled, or the process (or the GPU) used more than
  :data:`MEMORY_SHARE` of the memory there is;
- ``input-bound``: the training step waited on data for at least :data:`INPUT_SHARE` of its time
  (the bands of TensorFlow Profiler's input-pipeline analyser, which calls a step "moderately
  input bound" from 5% and "highly" above 20% of its time waiting; we start at 10%, as a memory
  cache run here waits 0-2%),
  or (CPU training, streaming) it reached less than :data:`CONTENTION_REACHED` of the pure
  compute rate with little wait: the Ray Data decode/augment tasks run on the cores the step
  needs, so the input work shows as slower compute, not as wait;
- ``communication-bound``: the gradient all-reduce took at least :data:`COMM_SHARE` of a step;
- ``start-up-bound``: the fixed start-up cost is at least :data:`STARTUP_SHARE` of the run's
  estimated time;
- ``overhead-bound``: a batch :data:`BATCH_FACTOR` times larger is estimated to train at least
  :data:`OVERHEAD_GAIN` times more images/s (:func:`batch_gain`: its measured pure-compute rate
  plus the per-step overhead measured now, :func:`step_overhead_s`);
- ``compute-bound``: otherwise; then faster kernels (precision, memory format) are what pays.

Estimated gains are images/s of the training step after / before, with the compute part of the
step sped up by the measured pure-compute ratio of the change and the data wait unchanged
(:func:`step_gain`); None where no measurement supports a number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

INPUT_SHARE = 0.10  # TensorFlow Profiler's input-pipeline analyser: 5-20% "moderately", > 20% "highly"
HIGH_INPUT_SHARE = 0.20
COMM_SHARE = 0.25
STARTUP_SHARE = 0.30
MEMORY_SHARE = 0.90
OVERHEAD_GAIN = 1.5
BATCH_FACTOR = 8
MIN_GAIN = 1.10  # compute changes below this are not suggested
CONTENTION_REACHED = 0.70  # CPU + streaming: below this share of pure compute, the input work competes


@dataclass
class Measurements:
    """What the doctor measured for one recipe (times in seconds per training step on one
    worker, memory in MB, throughput in images/s).

    ``phases``: mean seconds per step of ``data_wait``, ``host_to_device``, ``forward``,
    ``backward``, ``optimizer`` and ``allreduce`` (None: not measured, e.g. one worker).
    ``compute_images_per_sec``: pure forward+backward+step on synthetic tensors with the
    recipe's model, batch and precision. ``candidates``: ``{override: pure-compute images/s
    with that override}`` (e.g. ``"precision.dtype=bf16"``). ``startup_s``: fixed cost per run
    (prepare, model build incl. whitening, first-step warm-up). ``dataset_mb``: training +
    validation images as uint8 (what ``data.cache=memory`` would hold).
    """

    batch_size: int
    images_per_sec: float
    phases: dict[str, Optional[float]]
    compute_images_per_sec: float
    candidates: dict[str, float] = field(default_factory=dict)
    loop_candidates: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    channels_last: bool = True
    cache: str = "none"
    use_raw: bool = False
    data_cpus: float = 0.5
    prefetch_batches: int = 2
    cache_max_mb: float = 4096.0
    dataset_mb: float = 0.0
    num_workers: int = 1
    decoupled: bool = False
    epochs: int = 1
    num_train: int = 0
    num_val: int = 0
    eval_images_per_sec: Optional[float] = None
    startup_s: float = 0.0
    peak_rss_mb: float = 0.0
    memory_total_mb: float = 0.0
    gpu_peak_mb: Optional[float] = None
    gpu_total_mb: Optional[float] = None
    spilled_bytes: int = 0
    hardware: dict = field(default_factory=dict)

    @property
    def step_s(self) -> float:
        """Seconds per training step (measured)."""
        return self.batch_size / max(self.images_per_sec, 1e-9)

    def share(self, phase: str) -> float:
        """``phase``'s share of the step time (0 when unmeasured). The all-reduce is measured
        apart from the one-process step (:mod:`cnn_ray.doctor.allreduce`) and counted on top
        of it: shares are of ``step_s + allreduce`` (DDP without overlap, an upper bound)."""
        extra = self.phases.get("allreduce") or 0.0
        return (self.phases.get(phase) or 0.0) / max(self.step_s + extra, 1e-12)

    def run_estimate_s(self) -> float:
        """Training + evaluation seconds of the whole run at the measured speeds."""
        train = self.epochs * self.num_train / max(self.images_per_sec * self.num_workers, 1e-9)
        ev = self.epochs * self.num_val / self.eval_images_per_sec if self.eval_images_per_sec else 0.0
        return train + ev


@dataclass
class Suggestion:
    """One config change: the ``override`` to apply (``a.b=value``, several separated by
    spaces), why, and the estimated images/s gain of the training step (after / before; None:
    not estimated)."""

    override: str
    reason: str
    est_gain: Optional[float] = None


@dataclass
class Diagnosis:
    verdict: str
    evidence: list[str]
    suggestions: list[Suggestion]

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """The verdict, its evidence and the numbered suggestions, for people."""
        lines = [f"verdict: {self.verdict}"]
        lines += [f"  - {e}" for e in self.evidence]
        lines.append("suggestions (best first):" if self.suggestions else "suggestions: none")
        for i, s in enumerate(self.suggestions, 1):
            gain = f"est. {s.est_gain:.2f}x images/s" if s.est_gain else "gain not estimated"
            lines.append(f"  {i}. {s.override}  ({gain}): {s.reason}")
        return "\n".join(lines)


def step_gain(m: Measurements, compute_ratio: float) -> float:
    """Training-step gain when the compute part (step minus data wait) runs ``compute_ratio``
    times faster and the data wait stays: ``T / (wait + (T - wait) / ratio)``."""
    t = m.step_s
    wait = min(m.phases.get("data_wait") or 0.0, t)
    return t / (wait + (t - wait) / max(compute_ratio, 1e-9))


def _ratio(m: Measurements, override: str) -> Optional[float]:
    ips = m.candidates.get(override)
    return ips / m.compute_images_per_sec if ips and m.compute_images_per_sec > 0 else None


def _batch_candidate(m: Measurements) -> Optional[str]:
    return next((k for k in m.candidates if k.startswith("optim.batch_size=")), None)


def step_overhead_s(m: Measurements) -> float:
    """Seconds per step outside the model's compute: the measured step less the pure-compute
    time of its batch (the loop's Python, step hooks such as the EMA, per-batch data handling,
    data wait); 0 when the measured step was the faster one (measurement noise)."""
    if m.compute_images_per_sec <= 0:
        return 0.0
    return max(0.0, m.step_s - m.batch_size / m.compute_images_per_sec)


def batch_gain(m: Measurements, override: str) -> Optional[float]:
    """Estimated training-step images/s after / before ``optim.batch_size=B``: measured in the
    training loop at ``B`` when the doctor could (``loop_candidates``: the memory cache), else
    a step costs the compute of its batch at the pure rate measured for that batch plus the
    same per-step overhead (:func:`step_overhead_s`) as now, ``B / (B / pure(B) + o)``; None
    unmeasured.

    A pure-compute ratio alone misses the overhead that a small batch pays once per step in
    the real loop (batch 8 here: 74% of its pure rate reached, while pure compute at batch 64
    was under 1.5x that of batch 8)."""
    looped = m.loop_candidates.get(override)
    if looped and m.images_per_sec > 0:
        return looped / m.images_per_sec  # measured in the training loop itself
    ips = m.candidates.get(override)
    if not ips or m.images_per_sec <= 0:
        return None
    b = int(override.split("=", 1)[1])
    return b / (b / ips + step_overhead_s(m)) / m.images_per_sec


def _compute_suggestions(m: Measurements) -> list[Suggestion]:
    """Kernel changes (precision, memory format) that measured faster on pure compute."""
    out = []
    for override in m.candidates:
        if override.startswith("optim.batch_size="):
            continue
        r = _ratio(m, override)
        if r is None or r < MIN_GAIN:
            continue
        why = {"precision.dtype": f"{m.precision} now; pure compute measured {r:.2f}x faster "
                                  f"with it on this hardware ({_hw_note(m)})",
               "model.channels_last": f"NCHW now; NHWC kernels measured {r:.2f}x faster on pure "
                                      "compute"}.get(override.split("=")[0],
                                                     f"pure compute measured {r:.2f}x faster")
        out.append(Suggestion(override, why, round(step_gain(m, r), 2)))
    return sorted(out, key=lambda s: -(s.est_gain or 0))


def _hw_note(m: Measurements) -> str:
    hw = m.hardware
    if hw.get("cuda_capability"):
        return f"CUDA capability {hw['cuda_capability']}"
    flags = [k for k in ("amx_bf16", "avx512_bf16", "avx512f") if hw.get(k)]
    return ", ".join(flags) or "no AVX-512/AMX"


def _input_suggestions(m: Measurements, contention: bool = False) -> list[Suggestion]:
    """``contention``: the input work slows the step by sharing its cores (not by wait); the
    memory cache is then estimated to bring the step to the pure-compute rate."""
    wait = m.share("data_wait")
    removed = round(1.0 / max(1.0 - wait, 1e-3), 2)  # the wait gone, compute unchanged
    limit = m.compute_images_per_sec / max(m.images_per_sec, 1e-9)
    est = round(min(removed, limit), 2) if limit > 1 else removed
    if contention:
        est = round(max(limit, removed), 2)
    out = []
    if m.cache == "none" and (m.use_raw or 0 < m.dataset_mb <= m.cache_max_mb):
        why = (f"the Ray Data tasks share the training cores ({m.images_per_sec / max(m.compute_images_per_sec, 1e-9):.0%} "
               "of pure compute reached)" if contention else f"data wait {100 * wait:.0f}% of step time")
        out.append(Suggestion(("data.use_raw=false " if m.use_raw else "") + "data.cache=memory",
                              ("raw files: prepare them once, then " if m.use_raw else "") + f"{why}; "
                              f"the data fits in memory ({m.dataset_mb:.0f} MB <= data.cache_max_mb "
                              f"{m.cache_max_mb:.0f}): read once, augment on the worker", est))
    if m.cache == "none":
        out.append(Suggestion(f"data.data_cpus={2 * m.data_cpus:g}", "more CPU for each Ray "
                              "Data augmentation task (the cluster must have it spare)",
                              None if out else est))
    out.append(Suggestion(f"data.prefetch_batches={max(2, 2 * m.prefetch_batches)}",
                          "a deeper prefetch hides uneven batch times (not a steady shortfall)"))
    return out


def diagnose(m: Measurements) -> Diagnosis:
    """The verdict for ``m`` with its evidence and the config changes, best first (the first
    addresses the verdict; kernel changes that measured faster follow)."""
    t = m.step_s
    split = ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in m.phases.items() if v is not None)
    evidence = [f"{m.images_per_sec:.0f} images/s at batch {m.batch_size} ({1000 * t:.1f} ms/step: "
                f"{split}); pure compute {m.compute_images_per_sec:.0f} images/s "
                f"({m.images_per_sec / max(m.compute_images_per_sec, 1e-9):.0%} of it reached)"]
    compute = _compute_suggestions(m)

    mem = _memory_evidence(m)
    if mem:
        return Diagnosis("memory-bound", evidence + mem, [
            Suggestion(f"optim.batch_size={max(1, m.batch_size // 2)}",
                       "halves activation memory (scale optim.lr, or use optim.decoupled=true)"),
            *([Suggestion("data.cache=none", "stream instead of holding the data in memory")]
              if m.cache == "memory" else []), *compute])

    wait = m.share("data_wait")
    if wait >= INPUT_SHARE:
        band = "highly" if wait >= HIGH_INPUT_SHARE else "moderately"
        evidence.append(f"data wait {100 * wait:.0f}% of step time (>= {100 * INPUT_SHARE:.0f}%: "
                        f"{band} input-bound)")
        return Diagnosis("input-bound", evidence, _input_suggestions(m) + compute)

    reached = m.images_per_sec / max(m.compute_images_per_sec, 1e-9)
    if m.cache == "none" and not m.hardware.get("cuda_capability") and reached < CONTENTION_REACHED:
        evidence.append(f"streaming on the CPU reached {reached:.0%} of pure compute with data "
                        f"wait {100 * wait:.0f}%: the Ray Data decode/augment tasks run on the "
                        f"cores the training step needs (< {CONTENTION_REACHED:.0%})")
        return Diagnosis("input-bound", evidence, _input_suggestions(m, contention=True) + compute)

    comm = m.share("allreduce")
    if comm >= COMM_SHARE:
        evidence.append(f"gradient all-reduce {100 * comm:.0f}% of step time")
        return Diagnosis("communication-bound", evidence, [
            Suggestion("optim.grad_accum_steps=2", "all-reduce once per 2 micro-batches",
                       round(1.0 / max(1.0 - comm / 2, 1e-3), 2)),
            Suggestion(f"scaling.num_workers={max(1, m.num_workers // 2)}",
                       "fewer, larger workers exchange fewer gradients")] + compute)

    run_s = m.run_estimate_s()
    if run_s > 0 and m.startup_s >= STARTUP_SHARE * (run_s + m.startup_s):
        evidence.append(f"start-up {m.startup_s:.1f} s against {run_s:.1f} s of training and "
                        f"evaluation ({100 * m.startup_s / (run_s + m.startup_s):.0f}% of the run)")
        return Diagnosis("start-up-bound", evidence, [
            Suggestion(f"optim.epochs={2 * m.epochs}", "the fixed cost is paid once: a longer run "
                       "amortises it (or sweep several configs in one Ray session)"),
            Suggestion("model.compile=false", "no compilation at start (when it was on)")])

    batch = _batch_candidate(m)
    g = batch_gain(m, batch) if batch else None
    if g is not None and g >= OVERHEAD_GAIN:
        o = step_overhead_s(m)
        evidence.append(f"per-step overhead {1000 * o:.1f} ms ({100 * o / m.step_s:.0f}% of the "
                        f"step: the step less the pure compute of its batch); pure compute at "
                        f"{batch.split('=')[1]} images per step runs {_ratio(m, batch):.2f}x the "
                        f"images/s of batch {m.batch_size}: per-step costs dominate")
        lr = ("the decoupled lr keeps the same schedule per example" if m.decoupled else
              "scale optim.lr with the batch, or use optim.decoupled=true (lr per 1024 examples)")
        return Diagnosis("overhead-bound", evidence, [Suggestion(batch, lr, round(g, 2))] + compute)

    evidence.append(f"data wait {100 * wait:.0f}% of step time; forward+backward+optimizer "
                    f"{100 * sum(m.share(p) for p in ('forward', 'backward', 'optimizer')):.0f}%")
    return Diagnosis("compute-bound", evidence, compute)


def _memory_evidence(m: Measurements) -> list[str]:
    out = []
    if m.spilled_bytes > 0:
        out.append(f"the object store spilled {m.spilled_bytes / 1e6:.0f} MB to disk")
    if m.memory_total_mb and m.peak_rss_mb >= MEMORY_SHARE * m.memory_total_mb:
        out.append(f"peak RSS {m.peak_rss_mb:.0f} MB of {m.memory_total_mb:.0f} MB")
    if m.gpu_total_mb and m.gpu_peak_mb and m.gpu_peak_mb >= MEMORY_SHARE * m.gpu_total_mb:
        out.append(f"GPU peak {m.gpu_peak_mb:.0f} MB of {m.gpu_total_mb:.0f} MB")
    return out
