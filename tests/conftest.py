"""Shared fixtures: one Ray instance per test session, the real CIFAR-10 JPEGs, tiny seeded data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# The Train controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s);
# each checkpoint waits for the next poll to be committed (worker._wait_until_committed) and
# every run's end is noticed at a poll. Tiny test epochs make that wait a large share of the
# suite, so tests poll 4x as often (Train propagates the variable to its controller).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

from cnn_ray.datasets import default_archive, default_cache_dir, extract_cifar10, make_subset


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs Ray (4 logical CPUs on 2 cores).

    Tests that need their own cluster (``ray start``, multi-node) must not use this fixture.
    """
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True,
                 object_store_memory=512 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """The unpacked CIFAR-10 JPEG tree (``train/`` and ``test/``), extracted once per machine."""
    archive = default_archive()
    if not archive.exists():
        pytest.fail(f"CIFAR-10 archive missing at {archive}: ../shared/data must sit beside the repo")
    cache = Path(os.environ.get("CNN_RAY_CACHE", default_cache_dir()))
    return extract_cifar10(archive, cache)


@pytest.fixture(scope="session")
def cifar_small(cifar_root, tmp_path_factory) -> dict[str, Path]:
    """A seeded subset of real CIFAR-10 JPEGs: 40 train and 10 test images per class."""
    base = tmp_path_factory.mktemp("cifar_small")
    return {
        "train": make_subset(cifar_root / "train", base / "train", 40, seed=0),
        "test": make_subset(cifar_root / "test", base / "test", 10, seed=0),
    }


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def cifar_ddp(cifar_root, tmp_path_factory) -> dict[str, Path]:
    """A seeded real subset for DDP tests: 200 train and 50 test images per class."""
    base = tmp_path_factory.mktemp("cifar_ddp")
    return {
        "train": make_subset(cifar_root / "train", base / "train", 200, seed=1),
        "test": make_subset(cifar_root / "test", base / "test", 50, seed=1),
    }


def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
