"""jobs/gpu_check.py: refuses without CUDA; its code paths run on the CPU with --allow-cpu."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "jobs" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


@pytest.mark.slow
def test_cpu_run_writes_every_section(tmp_path):
    """The CPU run of the sections that need no recipe or Ray, on a small CIFAR-10 subset."""
    mod = _load()
    out = tmp_path / "gpu_check.json"
    rc = mod.main(["--allow-cpu", "--train-images", "512", "--skip", "throughput", "recipe",
                   "ray_train", "--out", str(out)])
    figures = json.loads(out.read_text())
    assert rc == 0, figures
    assert set(figures) >= {"env", "reduce", "precision"}
    assert figures["precision"]["ok"] and set(figures["precision"]) >= {"fp32", "bf16"}
