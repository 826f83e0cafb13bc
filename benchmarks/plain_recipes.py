"""The plain recipes ``benchmarks/time_to_accuracy.py`` times the cnn_ray recipes against, and
the photo comparison at the plain run's best top-1.

CIFAR (:func:`plain_loaders`): the tutorials' ``RandomCrop(32, padding=4)`` + flip, Adam,
the fast recipe's network (``time_to_accuracy.py``'s docstring, (i)).

Photos (:func:`photo_plain_parts`): what the PyTorch/torchvision tutorials and
``references/classification`` write for ImageNet-style photos, at the photo recipe's 128-px
training size:

- data: ``torchvision.datasets.ImageFolder`` + ``DataLoader(num_workers=2, shuffle=True)``;
  per image ``RandomResizedCrop(128)`` (torchvision's default scale 0.08-1) +
  ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` (ImageNet mean/std), decoded from the
  JPEGs every epoch;
- validation: ``Resize(146)`` + ``CenterCrop(128)``: torchvision's classic 256 -> 224 ratio
  (0.875) at the training size. The plain recipe tests at its training resolution; testing
  above it (FixRes) is one of the photo recipe's techniques, so it is not given to the plain
  one;
- model: ``torchvision.models.resnet18(num_classes=K)`` (ImageNet stem), fp32, NCHW;
- optimiser: SGD momentum 0.9, lr 0.1, weight decay 5e-4 on every parameter, cross-entropy,
  cosine annealing per epoch over ``max_epochs`` (``CosineAnnealingLR``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Sequence

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10, as tutorials write
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TRAIN_SIZE = 128
EVAL_RESIZE, EVAL_CROP = 146, 128  # round(128 / 0.875) = 146 -> centre 128


def photo_transforms(size: int = TRAIN_SIZE, resize: int = EVAL_RESIZE, crop: int = EVAL_CROP):
    """``(train, val)`` torchvision transforms of the plain recipe (module docstring): PIL image
    -> ``(3, size, size)`` / ``(3, crop, crop)`` float32 tensors, ImageNet-normalised."""
    from torchvision import transforms as T

    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    val = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), norm])
    return train, val


def photo_plain_parts(train_dir: str, val_dir: str, *, batch_size: int, max_epochs: int,
                      device, workers: int = 2):
    """``(train_loader, val_loader, model, optimizer, scheduler)`` of the plain photo recipe;
    the scheduler is stepped once per epoch.

    Raises:
        FileNotFoundError: a folder without class sub-folders of images (torchvision's error).
    """
    import torch
    import torchvision

    train_tf, val_tf = photo_transforms()
    train = torchvision.datasets.ImageFolder(train_dir, transform=train_tf)
    val = torchvision.datasets.ImageFolder(val_dir, transform=val_tf)
    loader = torch.utils.data.DataLoader
    model = torchvision.models.resnet18(num_classes=len(train.classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs))
    return (loader(train, batch_size=batch_size, shuffle=True, num_workers=workers),
            loader(val, batch_size=batch_size, shuffle=False, num_workers=workers),
            model, opt, sched)


def best_top1(curve: Sequence[dict]) -> float | None:
    """The highest ``val_top1`` of a curve (None when empty)."""
    return max((row["val_top1"] for row in curve), default=None)


def targets_with_plain_best(plain: Sequence[dict], thresholds: Sequence[float]) -> list[float]:
    """The top-1 targets to time: ``thresholds`` plus the plain run's best top-1 (once; not
    added when the curve is empty or it equals a threshold)."""
    best = best_top1(plain)
    out = list(thresholds)
    if best is not None and best not in out:
        out.append(best)
    return out


def mark_plain_best(rows: list[dict[str, Any]], plain: Sequence[dict]) -> list[dict[str, Any]]:
    """Flag the :func:`compare` row whose threshold is the plain run's best top-1
    (``"plain_best": True``; the others False), in place; returns ``rows``."""
    best = best_top1(plain)
    for row in rows:
        row["plain_best"] = best is not None and row["threshold"] == best
    return rows


def plain_loaders(train_dir: str, test_dir: str, batch_size: int, workers: int = 2):
    """``(train_loader, test_loader, num_classes)`` of the CIFAR plain recipe, as the tutorials
    build them (``RandomCrop(32, padding=4)``, flip, CIFAR-10 mean/std)."""
    import torch
    import torchvision
    from torchvision import transforms as T

    norm = T.Normalize(MEAN, STD)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                          norm])
    train = torchvision.datasets.ImageFolder(train_dir, transform=train_tf)
    test = torchvision.datasets.ImageFolder(test_dir, transform=T.Compose([T.ToTensor(), norm]))
    loader = torch.utils.data.DataLoader
    return (loader(train, batch_size=batch_size, shuffle=True, num_workers=workers),
            loader(test, batch_size=batch_size, shuffle=False, num_workers=workers),
            len(train.classes))


def plain_test_top1(model, loader, device) -> float:
    """Top-1 (fraction) of ``model`` over ``loader``, in eval mode, without gradients."""
    import torch

    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in loader:
            pred = model(x.to(device)).argmax(1).cpu()
            correct += int((pred == y).sum())
            seen += len(y)
    return correct / max(seen, 1)


def run_plain(cfg, *, batch_size: int, thresholds: Sequence[float], max_epochs: int,
              device, seed: int = 0, max_s: Optional[float] = None,
              on_epoch: Optional[Callable[[list[dict]], None]] = None,
              log: Callable[[str], None] = print, recipe: str = "cifar") -> list[dict]:
    """Train a plain recipe (``recipe="cifar"``: :func:`plain_loaders`, Adam lr 1e-3,
    ``cfg.model``'s network; ``"photo"``: :func:`photo_plain_parts`) on ``cfg.data.train`` and
    evaluate on ``cfg.data.val`` after every epoch, until every threshold is reached (cifar
    only: the photo run keeps to its cosine schedule, whose best top-1 is a target), ``max_epochs`` ran or the wall time from the start passed
    ``max_s`` seconds (checked after each epoch). ``on_epoch(curve)`` is called after each
    epoch's evaluation (the caller saves the partial curve: a run stopped from outside keeps
    its epochs)."""
    import torch
    import torch.nn.functional as F

    from cnn_ray.models import create_model

    start = time.perf_counter()
    torch.manual_seed(seed)
    train_dir, val_dir = os.path.expanduser(cfg.data.train), os.path.expanduser(cfg.data.val)
    sched = None
    if recipe == "photo":
        train, test, model, opt, sched = photo_plain_parts(
            train_dir, val_dir, batch_size=batch_size, max_epochs=max_epochs, device=device)
    else:
        train, test, classes = plain_loaders(train_dir, val_dir, batch_size)
        model = create_model(cfg.model.name, num_classes=classes, in_channels=3,
                             **cfg.model.build_knobs(cfg.data.image_size)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    curve: list[dict] = []
    train_s = 0.0
    for epoch in range(1, max_epochs + 1):
        model.train()
        t0 = time.perf_counter()
        for x, y in train:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        train_s += time.perf_counter() - t0
        top1 = plain_test_top1(model, test, device)
        curve.append({"epoch": epoch, "val_top1": round(top1, 4), "train_s": round(train_s, 2),
                      "wall_s": round(time.perf_counter() - start, 2)})
        log(f"[tta] plain epoch {epoch}: test top-1 {top1:.4f}, {train_s:.0f} s training, "
            f"{curve[-1]['wall_s']:.0f} s from start")
        if on_epoch is not None:
            on_epoch(curve)
        if recipe != "photo" and all(any(r["val_top1"] >= t for r in curve)
                                     for t in thresholds):
            break
        if max_s is not None and curve[-1]["wall_s"] >= max_s:
            log(f"[tta] plain: stopped after epoch {epoch}, {curve[-1]['wall_s']:.0f} s >= "
                f"--plain-max-minutes")
            break
    return curve
