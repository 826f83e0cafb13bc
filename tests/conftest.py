"""Shared fixtures (one Ray instance per test session, the real CIFAR-10 JPEGs, tiny seeded
data) and the guards that keep the test tiers honest.

Tiers (docs/development.md): ``-m "not ray"`` runs every test that starts no Ray and needs no
data archive (the numeric core); ``-m "not slow"`` the quick tests (the numeric core and the Ray
tests on tiny generated data); a plain run everything, with the end-to-end tests (real CIFAR-10
subsets, clusters, job submission). The guards:

- collection fails when a test uses a fixture that starts Ray (:data:`RAY_FIXTURES`) without the
  ``ray`` marker, or one that needs the CIFAR-10 archive (:data:`ARCHIVE_FIXTURES`) without
  ``slow`` (and ``ray``: the ``not ray`` tier runs without the archive); a test that starts Ray some other way (``ray start``, its own cluster) is marked by
  hand, and one that leaves Ray initialised without the ``ray`` marker fails at teardown;
- a test file whose tests are not all marked ``ray`` (by a module-level ``pytestmark``) must not
  import Ray at module level; under ``-m "not ray"`` the files that are all ``ray`` are not even
  imported.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import sys
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
def data_context():
    """The current Ray Data ``DataContext`` as an augmentation task sees it at the start of a
    worker group's first execution: ``AUGMENT_START_EPOCH`` and the context's execution counter
    (``compat.data_execution_index``, which earlier tests' executions in this process have
    advanced) are restored afterwards; the counter reads 0 during the test."""
    import ray.data

    from cnn_ray.data.pipeline import AUGMENT_START_EPOCH

    ctx = ray.data.DataContext.get_current()
    before = ctx.get_config(AUGMENT_START_EPOCH, None)
    executed = getattr(ctx, "_execution_idx", None)
    if executed is not None:
        ctx._execution_idx = 0
    yield ctx
    if executed is not None:
        ctx._execution_idx = executed
    if before is None:
        ctx.remove_config(AUGMENT_START_EPOCH)
    else:
        ctx.set_config(AUGMENT_START_EPOCH, before)


@pytest.fixture(scope="module")
def ablate():
    """``benchmarks/ablate.py`` as a module (:func:`cnn_ray.testing.load_benchmark`)."""
    from cnn_ray.testing import load_benchmark

    return load_benchmark("ablate")


@pytest.fixture(scope="module")
def tta():
    """``benchmarks/time_to_accuracy.py`` as a module."""
    from cnn_ray.testing import load_benchmark

    return load_benchmark("time_to_accuracy")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a test module (restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# ------------------------------------------------------------------------------ tier guards
RAY_FIXTURES = {"ray_session"}  # fixtures that start Ray: a test using one (even through
# another fixture) must be marked ``ray``
ARCHIVE_FIXTURES = {"cifar_root", "cifar_small", "cifar_ddp"}  # the CIFAR-10 archive: ``slow``


@functools.lru_cache(maxsize=None)
def _module_facts(path: Path) -> tuple[frozenset[str], tuple[int, ...]]:
    """A test file's module-level ``pytestmark`` names (``pytest.mark.<name>``) and the line
    numbers of its module-level ``import ray`` / ``from ray... import`` statements."""
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    marks: set[str] = set()
    ray_lines: list[int] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            marks |= {n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute)
                      and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"}
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names):
            ray_lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            ray_lines.append(node.lineno)
    return frozenset(marks), tuple(ray_lines)


def _deselects_ray(config) -> bool:
    """Whether ``-m`` deselects every ``ray`` test: ``not ray`` is a conjunct and there is no ``or``."""
    expr = " ".join((config.getoption("markexpr") or "").split())
    return " or " not in f" {expr} " and bool(re.fullmatch(r"(.+ and )?not ray( and .+)?", expr))


def pytest_ignore_collect(collection_path, config):
    """Under ``-m "not ray"``, do not import test files whose every test is ``ray`` (module-level
    ``pytestmark``): they would all be deselected, and importing them would import Ray."""
    if (collection_path.suffix == ".py" and collection_path.name.startswith("test_")
            and _deselects_ray(config) and "ray" in _module_facts(collection_path)[0]):
        return True
    return None


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects anything: every collected test is checked
def pytest_collection_modifyitems(config, items):
    problems = []
    for path in sorted({Path(item.path) for item in items if Path(item.path).suffix == ".py"}):
        marks, ray_lines = _module_facts(path)
        if ray_lines and "ray" not in marks:
            problems.append(f"{path.name}:{ray_lines[0]}: imports Ray at module level, but not all "
                            "of its tests are `ray` (import it inside the tests that need it)")
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        starts, archive = sorted(names & RAY_FIXTURES), sorted(names & ARCHIVE_FIXTURES)
        if starts and item.get_closest_marker("ray") is None:
            problems.append(f"{item.nodeid}: uses {', '.join(starts)} (starts Ray) but is not "
                            "marked `ray` (add @pytest.mark.ray or a module pytestmark)")
        if archive and item.get_closest_marker("slow") is None:
            problems.append(f"{item.nodeid}: uses {', '.join(archive)} (the CIFAR-10 archive) but "
                            "is not marked `slow`")
        if archive and item.get_closest_marker("ray") is None:
            problems.append(f"{item.nodeid}: uses {', '.join(archive)} (the CIFAR-10 archive) in "
                            "the `-m \"not ray\"` tier, which runs without it: use generated data "
                            "(cnn_ray.testing)")
    if problems:
        raise pytest.UsageError("test tiers (tests/conftest.py):\n  " + "\n  ".join(problems))


@pytest.fixture(autouse=True)
def _ray_only_in_ray_tests(request):
    """Fail a test that is not marked ``ray`` yet leaves Ray initialised in this process."""
    ray = sys.modules.get("ray")
    before = ray is not None and ray.is_initialized()
    yield
    ray = sys.modules.get("ray")
    if (request.node.get_closest_marker("ray") is None and not before and ray is not None
            and ray.is_initialized()):
        pytest.fail(f"{request.node.nodeid} started Ray but is not marked `ray` "
                    "(tests/conftest.py: the `-m \"not ray\"` tier must not start Ray)")
