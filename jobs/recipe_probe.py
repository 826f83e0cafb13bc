"""Probe the fast CIFAR-10 recipe of cnn_ray.recipe in plain PyTorch (no Ray).

Trains airbench93's network (``airbench`` with widths 64/128/128) with airbench93's recipe built
from the cnn_ray.recipe techniques -- patch whitening, BatchNorm settings + x64 BN-bias rate,
dirac init, EMA lookahead, alternating flip, 2-pixel batch translate, label smoothing 0.2,
SGD-Nesterov with decoupled lr/wd, warm-up + linear decay, TTA -- with a switch to turn each off,
and prints test top-1 per epoch (plain and with TTA) and training images/s.

    python jobs/recipe_probe.py --bench                     # images/s, fp32 vs bf16, 2 batches
    python jobs/recipe_probe.py --epochs 11                  # the full recipe
    python jobs/recipe_probe.py --train-subset 10000 --epochs 3 --no-ema   # a quick ablation
    python jobs/recipe_probe.py --smoke                      # 512 images, 1 epoch

Data: the CIFAR-10 JPEG tree (``cnn_ray.datasets.extract_cifar10``), decoded once with PIL
(about a minute) and cached as uint8 ``.npy`` under ``~/.cache/cnn_ray/decoded/``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnn_ray.datasets import CIFAR10_CLASSES, default_cache_dir, extract_cifar10  # noqa: E402
from cnn_ray.io import atomic_write_bytes  # noqa: E402
from cnn_ray.models import create_model  # noqa: E402
from cnn_ray.recipe import (MuonSGD, WarmupLinearDecay, alternating_flip,  # noqa: E402
                            apply_patch_whitening, bn_bias_param_groups, configure_batchnorm,
                            copy_ema_to_model, decoupled_sgd_hparams, first_conv, make_ema,
                            predict_tta, split_muon_groups, tta_views, update_ema)


# ----------------------------------------------------------------------------------- data
def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 32, 32, 3) uint8`` images and ``(N,) int64`` labels of a CIFAR-10 JPEG split."""
    cache = default_cache_dir() / "decoded"
    xs, ys = cache / f"cifar10-{split}-x.npy", cache / f"cifar10-{split}-y.npy"
    if xs.exists() and ys.exists():
        return np.load(xs), np.load(ys)
    from PIL import Image

    root = extract_cifar10() / split
    images, labels = [], []
    for label, name in enumerate(CIFAR10_CLASSES):
        for path in sorted((root / name).iterdir()):
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(label)
    x, y = np.stack(images), np.asarray(labels, dtype=np.int64)
    for path, arr in ((xs, x), (ys, y)):
        buf = io.BytesIO()
        np.save(buf, arr)
        atomic_write_bytes(path, buf.getvalue())
    return x, y


def channel_mean_std(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``x / 255`` for ``(N, H, W, C) uint8``."""
    f = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    return f.mean(0).tolist(), f.std(0).tolist()


def to_model_input(u8_nhwc: torch.Tensor, mean, std, dtype=torch.float32) -> torch.Tensor:
    """``(N, H, W, C) uint8`` -> normalised ``(N, C, H, W)`` channels-last float."""
    x = u8_nhwc.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def batch_translate(padded: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Random crop of ``(N, H+2p, W+2p, C)`` back to ``(N, H, W, C)``: a shift in
    [-p, p] per axis per image, grouped by shift (airbench ``batch_crop``)."""
    n, hp, wp, _ = padded.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    sy, sx = rng.integers(0, 2 * pad + 1, size=(2, n))
    out = np.empty((n, h, w, padded.shape[3]), dtype=padded.dtype)
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            m = (sy == dy) & (sx == dx)
            out[m] = padded[m, dy:dy + h, dx:dx + w]
    return out


def epoch_batches(x: np.ndarray, y: np.ndarray, epoch: int, args, rng):
    """Yield ``(uint8 NHWC, labels)`` training batches of one epoch (drop_last, shuffled)."""
    rows = np.arange(len(x))
    if args.flip == "alternating":
        x = alternating_flip(x, rows, epoch, seed=args.seed, layout="nhwc")
    elif args.flip == "random":
        m = rng.random(len(x)) < 0.5
        x = x.copy()
        x[m] = x[m][:, :, ::-1]
    if args.translate > 0:
        p = args.translate
        x = batch_translate(np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect"), p, rng)
    order = rng.permutation(len(x))
    for i in range(len(x) // args.batch_size):
        idx = order[i * args.batch_size:(i + 1) * args.batch_size]
        yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


# ---------------------------------------------------------------------------------- model
def build_model(args, train_x: np.ndarray, mean, std):
    """The network with the switched-on init techniques; returns ``(model, whitening_bias)``."""
    model = create_model("airbench", 10, widths=tuple(args.widths))
    if not args.dirac:
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m is not first_conv(model)[1]:
                m.reset_parameters()  # the plain Kaiming-uniform init instead of identity
    if args.bn:
        configure_batchnorm(model, momentum=0.4, eps=1e-12, freeze_scale=True)
    bias = None
    if args.whiten:
        sample = to_model_input(torch.from_numpy(train_x[:5000]), mean, std)
        bias = apply_patch_whitening(model, sample, eps=5e-4, model_name="airbench")
    return model.to(memory_format=torch.channels_last), bias


def build_optimizer(model, whiten_bias, args, steps_per_epoch: int):
    """SGD-Nesterov (decoupled lr/wd, BN biases x64) or Muon+SGD, and the LambdaLR."""
    lr, wd = decoupled_sgd_hparams(11.5, 0.0153, 0.85, args.batch_size)
    if not args.decoupled:
        lr, wd = args.plain_lr, args.plain_wd
    scaler = 64.0 if args.bn else 1.0
    exclude = [whiten_bias] if whiten_bias is not None else []
    groups = bn_bias_param_groups(model, lr, wd, scaler, decay_bn_bias=True, exclude=exclude)
    total = steps_per_epoch * args.epochs
    decay = WarmupLinearDecay(total, 0.23, 0.2, 0.07) if args.schedule else (lambda s: 1.0)
    stop = WarmupLinearDecay(total, 0.23, 0.2, 0.07, stop_step=3 * steps_per_epoch)
    if whiten_bias is not None:  # trained for 3 epochs, through its rate (airbench)
        groups.append({"name": "whiten_bias", "params": [whiten_bias], "lr": lr,
                       "weight_decay": wd})
    if args.muon:
        groups = split_muon_groups(groups, muon_lr=0.24, muon_momentum=0.6)
    factors = [stop if g["name"] == "whiten_bias" else decay for g in groups]
    opt = MuonSGD(groups, lr=lr, momentum=0.85, nesterov=True)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factors)


# ------------------------------------------------------------------------------ train/eval
def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(model, test_x, test_y, mean, std, mode: str, precision: str) -> float:
    """Test top-1 (fraction) with TTA ``mode``; the model's train/eval mode is restored."""
    was = model.training
    model.eval()
    correct = 0
    with autocast(precision):
        for i in range(0, len(test_x), 1000):
            x = to_model_input(torch.from_numpy(test_x[i:i + 1000]), mean, std)
            logits = predict_tta(model, x, mode)
            correct += int((logits.argmax(1) == torch.from_numpy(test_y[i:i + 1000])).sum())
    model.train(was)
    return correct / len(test_x)


def train_step(model, opt, sched, xb, yb, args, mean, std) -> torch.Tensor:
    x = to_model_input(xb, mean, std)
    with autocast(args.precision):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), yb, label_smoothing=args.label_smoothing)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()
    return loss.detach()


def run(args) -> None:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_x, train_y = load_split("train")
    test_x, test_y = load_split("test")
    if args.train_subset:
        pick = rng.permutation(len(train_x))[:args.train_subset]
        train_x, train_y = train_x[pick], train_y[pick]
    if args.test_subset:
        pick = np.random.default_rng(0).permutation(len(test_x))[:args.test_subset]
        test_x, test_y = test_x[pick], test_y[pick]
    mean, std = channel_mean_std(train_x)
    model, bias = build_model(args, train_x, mean, std)
    steps = len(train_x) // args.batch_size
    opt, sched = build_optimizer(model, bias, args, steps)
    ema, step, total = None, 0, steps * args.epochs
    print(f"train {len(train_x)} test {len(test_x)} steps/epoch {steps} precision "
          f"{args.precision} threads {torch.get_num_threads()} tta {args.tta} "
          f"({tta_views(args.tta)} views)", flush=True)
    clock = 0.0
    for epoch in range(args.epochs):
        t0, losses = time.perf_counter(), []
        for xb, yb in epoch_batches(train_x, train_y, epoch, args, rng):
            losses.append(train_step(model, opt, sched, xb, yb, args, mean, std))
            step += 1
            if args.ema and epoch >= 3 and step % 5 == 0:
                if ema is None:
                    ema = make_ema(model, decay=0.95 ** 5)
                update_ema(ema, model, step, total, power=3.0, lookahead=True)
        if ema is not None:  # airbench: the net ends each epoch at the averaged weights
            copy_ema_to_model(ema, model)
        seconds = time.perf_counter() - t0
        clock += seconds
        top1 = evaluate(model, test_x, test_y, mean, std, "none", args.precision)
        tta = (evaluate(model, test_x, test_y, mean, std, args.tta, args.precision)
               if args.tta != "none" and (args.tta_every_epoch or epoch == args.epochs - 1)
               else float("nan"))
        print(f"epoch {epoch + 1:2d}  loss {float(torch.stack(losses).mean()):.4f}  "
              f"top1 {top1:.4f}  top1_tta {tta:.4f}  epoch_seconds {seconds:.1f}  "
              f"images_per_sec {steps * args.batch_size / seconds:.0f}  "
              f"train_seconds_total {clock:.1f}", flush=True)


def bench(args) -> None:
    """Training images/s of 2 batches (after 1 warm-up batch) in fp32 and in bf16."""
    torch.manual_seed(args.seed)
    x = torch.randint(0, 256, (args.batch_size, 32, 32, 3), dtype=torch.uint8)
    y = torch.randint(0, 10, (args.batch_size,))
    mean, std = [0.5] * 3, [0.25] * 3
    for precision in ("fp32", "bf16"):
        args.precision = precision
        model, bias = build_model(args, x.numpy(), mean, std)
        opt, sched = build_optimizer(model, bias, args, 10)
        train_step(model, opt, sched, x, y, args, mean, std)
        t0 = time.perf_counter()
        for _ in range(2):
            train_step(model, opt, sched, x, y, args, mean, std)
        ips = 2 * args.batch_size / (time.perf_counter() - t0)
        print(f"{precision}: {ips:.0f} images/s training (batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads, channels_last)", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=11)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--widths", type=int, nargs=3, default=(64, 128, 128))
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, default=0, help="train on N random images")
    p.add_argument("--test-subset", type=int, default=0, help="test on N random images")
    p.add_argument("--tta", choices=("none", "flip", "flip_translate"), default="flip_translate")
    p.add_argument("--tta-every-epoch", action="store_true", help="else only the last epoch")
    p.add_argument("--flip", choices=("alternating", "random", "none"), default="alternating")
    p.add_argument("--translate", type=int, default=2, help="crop jitter in pixels (0: off)")
    p.add_argument("--label-smoothing", type=float, default=0.2)
    p.add_argument("--plain-lr", type=float, default=0.2, help="lr with --no-decoupled")
    p.add_argument("--plain-wd", type=float, default=5e-4, help="wd with --no-decoupled")
    p.add_argument("--muon", action="store_true", help="Muon for conv filters (airbench94_muon)")
    for name in ("whiten", "bn", "dirac", "ema", "decoupled", "schedule"):
        p.add_argument(f"--no-{name}", dest=name, action="store_false")
    p.add_argument("--bench", action="store_true", help="only measure images/s (fp32, bf16)")
    p.add_argument("--smoke", action="store_true", help="512 train / 500 test images, 1 epoch")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_subset, args.test_subset, args.epochs, args.batch_size = 512, 500, 1, 128
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    bench(args) if args.bench else run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
