"""The doctor on four recipes, its first suggestion applied: estimated vs measured gain.

    python benchmarks/doctor_cases.py                       # the four cases, 20 timed steps each
    python benchmarks/doctor_cases.py --json results/doctor_cases.json
    python benchmarks/doctor_cases.py --only batch8 --set data.train=... data.val=...

Each case is the CIFAR-10 fast recipe (``--config``) with overrides that mis-configure it
(:data:`CASES`): ``starved_streaming`` (JPEGs decoded and augmented every epoch in a Ray Data
pipeline left a quarter CPU beside a worker holding two, rotation and affine on: input-bound), ``fp32_nchw`` (fp32 and NCHW on a network whose NHWC / bf16
kernels are faster where the CPU has them), ``batch8`` (8 images per step: overhead-bound) and
``fast`` (the recipe as shipped). For each, :func:`cnn_ray.doctor.run.measure` profiles the
recipe (the doctor itself, in this process, on local Ray), :func:`cnn_ray.doctor.verdict.diagnose`
gives the verdict and its suggestions; the first suggestion is applied and the recipe measured
again the same way. Prints one markdown table: case, verdict, first suggestion, estimated gain
(images/s after / before), measured gain, |measured / estimated - 1| (target <= 30%), and each
doctor run's wall time (target <= 90 s for the CIFAR-10 recipe); then the machine and its
pure-compute images/s. Measured on a busy machine the ratios are noise: run it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "jobs" / "configs" / "cifar10.yaml"

CASES: dict[str, list[str]] = {
    "starved_streaming": ["data.cache=none", "data.use_raw=true", "model.whitening.enabled=false",
                          "data.data_cpus=0.25", "scaling.cpus_per_worker=2",
                          "augment.rotation.enabled=true", "augment.affine.enabled=true",
                          "optim.batch_size=256"],  # a starved pipeline is slow: fewer images
    "fp32_nchw": ["precision.dtype=fp32", "model.channels_last=false"],
    "batch8": ["optim.batch_size=8", "optim.eval_batch_size=256"],
    "fast": [],
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the recipe (YAML)")
    p.add_argument("--only", nargs="+", choices=list(CASES), help="run these cases only")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per doctor run "
                   "(the doctor's own default: fewer let a streaming pipeline's prefetched "
                   "batches hide its steady rate)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of every case (e.g. the data paths)")
    p.add_argument("--json", help="write the figures to this JSON file")
    return p


def run_case(name: str, overrides: list[str], args, log=print) -> dict:
    """Doctor on the case, then on the case with its first suggestion applied."""
    from cnn_ray.config_io import load_train_config
    from cnn_ray.doctor.run import measure
    from cnn_ray.doctor.verdict import diagnose

    cfg = load_train_config(args.config, overrides + args.set)
    t0 = time.perf_counter()
    m, _ = measure(cfg, steps=args.steps, warmup=args.warmup, log=lambda s: None)
    d = diagnose(m)
    doctor_s = time.perf_counter() - t0
    row = {"case": name, "overrides": overrides, "verdict": d.verdict,
           "images_per_sec": round(m.images_per_sec, 1), "doctor_s": round(doctor_s, 1),
           "compute_images_per_sec": round(m.compute_images_per_sec, 1),
           "reached": round(m.images_per_sec / max(m.compute_images_per_sec, 1e-9), 3),
           "data_wait_share": round(m.share("data_wait"), 3), "evidence": d.evidence,
           "suggestion": None, "est_gain": None, "measured_gain": None, "error": None}
    log(f"[doctor_cases] {name}: {d.verdict}, {m.images_per_sec:.0f} images/s ({row['reached']:.0%}"
        f" of its pure compute {m.compute_images_per_sec:.0f}, data wait "
        f"{row['data_wait_share']:.0%}), doctor {doctor_s:.0f} s")
    first = d.suggestions[0] if d.suggestions else None
    if first is None:
        return row
    after_cfg = load_train_config(args.config, overrides + args.set + first.override.split())
    t0 = time.perf_counter()
    after, _ = measure(after_cfg, steps=args.steps, warmup=args.warmup, log=lambda s: None)
    gain = after.images_per_sec / max(m.images_per_sec, 1e-9)
    row.update(suggestion=first.override, est_gain=first.est_gain,
               measured_gain=round(gain, 2), after_images_per_sec=round(after.images_per_sec, 1),
               after_doctor_s=round(time.perf_counter() - t0, 1),
               error=round(abs(gain / first.est_gain - 1), 2) if first.est_gain else None)
    log(f"[doctor_cases] {name}: applied {first.override}: {after.images_per_sec:.0f} images/s "
        f"({gain:.2f}x, estimated {first.est_gain})")
    return row


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        print(f"error: --steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}",
              file=sys.stderr)
        return 2
    import ray

    from cnn_ray.benchmark import hardware_summary, synthetic_images_per_sec
    from cnn_ray.config import ConfigError
    from cnn_ray.config_io import load_train_config

    names = args.only or list(CASES)
    try:
        for n in names:
            load_train_config(args.config, CASES[n] + args.set)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not ray.is_initialized():
        ray.init()
    rows = [run_case(n, CASES[n], args) for n in names]
    base = load_train_config(args.config, args.set)
    compute = synthetic_images_per_sec(base, 10, steps=5)
    print("| case | verdict | images/s | first suggestion | est. gain | measured gain | "
          "error | doctor s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        est = f"{r['est_gain']:.2f}x" if r["est_gain"] else "-"
        got = f"{r['measured_gain']:.2f}x" if r["measured_gain"] else "-"
        err = f"{100 * r['error']:.0f}%" if r["error"] is not None else "-"
        print(f"| {r['case']} | {r['verdict']} | {r['images_per_sec']:.0f} | "
              f"{r['suggestion'] or '(none)'} | {est} | {got} | {err} | {r['doctor_s']:.0f} |")
    print(f"machine: {hardware_summary()}; pure compute of the recipe {compute:.0f} images/s; "
          f"{args.steps} timed steps per doctor run")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "machine": hardware_summary(),
                                               "compute_images_per_sec": compute,
                                               "steps": args.steps}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
