"""benchmarks/gpu_check.py: refuses without CUDA; its code paths run on the CPU with --allow-cpu."""

import json
from pathlib import Path

import pytest

from cnn_ray.testing import load_benchmark
import torch

REPO = Path(__file__).resolve().parents[1]


def _load():
    return load_benchmark("gpu_check")


def test_refuses_clearly_without_cuda(monkeypatch, capsys, tmp_path):
    mod = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_reduce_section_in_a_real_process_group():
    """The epoch reduction inside torch.distributed (gloo on CPU, world size 1, env://)."""
    out = _load().check_reduce(torch.device("cpu"))
    assert out["backend"] == "gloo" and out["reduced"] == [5, 2, 2]


def _fake_cifar(split):
    """Seeded CIFAR-shaped arrays: the tier without Ray runs without the data archive."""
    import numpy as np

    rng = np.random.default_rng(0 if split == "train" else 1)
    n = 600 if split == "train" else 200
    y = rng.integers(0, 10, n)
    x = (rng.integers(0, 40, (n, 32, 32, 3)) + 20 * y[:, None, None, None]).astype(np.uint8)
    return x, y.astype(np.int64)


@pytest.mark.slow
def test_cpu_run_writes_every_section(tmp_path, monkeypatch):
    """The CPU run of the sections that need no recipe or Ray, on CIFAR-shaped arrays."""
    import cnn_ray.datasets

    monkeypatch.setattr(cnn_ray.datasets, "cifar10_arrays", _fake_cifar)
    mod = _load()
    out = tmp_path / "gpu_check.json"
    rc = mod.main(["--allow-cpu", "--train-images", "512", "--skip", "throughput", "recipe",
                   "ray_train", "--out", str(out)])
    figures = json.loads(out.read_text())
    assert rc == 0, figures
    assert set(figures) >= {"env", "reduce", "precision"}
    assert figures["precision"]["ok"] and set(figures["precision"]) >= {"fp32", "bf16"}
