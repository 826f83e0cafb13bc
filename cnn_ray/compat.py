"""Every private Ray / torch API cnn_ray uses, in one place (STYLE.md rule 15).

Each function wraps one private name and says why the public API does not suffice.
``tests/test_compat.py`` checks that the installed Ray and torch still have each of them and
fails naming the one that went missing; :func:`check` does the same at run time.
The dependency range in ``pyproject.toml`` is the one these were checked against (ray 2.60).
"""

from __future__ import annotations

from typing import Any, Callable


# ------------------------------------------------------------------------------ Ray Tune
def asha_rungs(scheduler) -> list[list[tuple[float, dict]]]:
    """ASHA's recorded rung values: per bracket, ``[(milestone, {trial_id: value}), ...]``.

    The dicts are the scheduler's own: updating one (a restored sweep reading its saved rungs
    back) changes what the scheduler compares against. Values are already signed for the mode.

    Private: ``AsyncHyperBandScheduler._brackets`` and ``_Bracket._rungs``. Tune does not save
    them with the experiment, so a restored sweep would forget every recorded rung value.
    """
    return [[(m, rec) for m, rec in b._rungs] for b in scheduler._brackets]


def stop_paused_trial(tune_controller, trial) -> None:
    """Stop a PAUSED trial and make sure Tune's saved experiment state says TERMINATED.

    ``TuneController.stop_trial`` (public to schedulers) sets the status, but for a paused
    trial that holds no actor it returns before ``_mark_trial_to_checkpoint``: the experiment
    state file keeps the trial PAUSED, and a restored sweep would resume it. Private:
    ``TrialRunnerWrapper._tune_controller`` and ``TuneController._mark_trial_to_checkpoint``.
    """
    tune_controller.stop_trial(trial)
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    controller._mark_trial_to_checkpoint(trial)


def experiment_trials(result_grid) -> list:
    """The trials of a ``ResultGrid`` (private ``ResultGrid._experiment_analysis``): the
    fallback when the experiment state cannot be read back from storage."""
    return getattr(getattr(result_grid, "_experiment_analysis", None), "trials", None) or []


# ------------------------------------------------------------------------------ Ray core
def placement_group_rows() -> tuple[list, int]:
    """(GCS placement-group table rows, the REMOVED state value).

    Private: ``ray._private.state`` and ``ray.core.generated.gcs_pb2``; the public
    ``placement_group_table`` omits the creator actor, needed to find orphaned groups.
    """
    from ray._private.state import state as global_state
    from ray.core.generated import gcs_pb2

    rows = [gcs_pb2.PlacementGroupTableData.FromString(b)
            for b in global_state._connect_and_get_accessor().get_placement_group_table()]
    return rows, gcs_pb2.PlacementGroupTableData.REMOVED


def cluster_max_resources() -> "dict[str, float] | None":
    """The most resources the cluster's autoscaler may grow it to (sum over its node groups of
    ``max_count`` x resources per node; ``inf`` for an unbounded group), or None on a cluster
    without an autoscaler config (local Ray, a static ``ray start`` cluster).

    Private: ``ray._private.state.state.get_max_resources_from_cluster_config`` (what Ray
    Train V2's worker group and Ray Data's shuffle use for the same question); no public API
    tells whether, and how far, a cluster can grow.
    """
    import sys

    from ray._private.state import state as global_state

    most = global_state.get_max_resources_from_cluster_config()
    if not most:
        return None
    return {k: float("inf") if v >= sys.maxsize else float(v) for k, v in most.items()}


def session_dir() -> str:
    """This Ray session's directory (private ``ray._private.worker._global_node``); used to
    measure object spilling, which no public API reports."""
    import ray._private.worker as rw

    return rw._global_node.get_session_dir_path()


# ------------------------------------------------------------------------------ Ray Data / Train
def data_execution_index(ctx) -> int:
    """How many times the ``DataContext``'s datasets have been executed (private
    ``DataContext._execution_idx``, the counter behind
    ``RandomSeedConfig(reseed_after_execution=True)``); 0 when absent."""
    return int(getattr(ctx, "_execution_idx", 0))


def resolve_execution_options(data_config, dataset_name: str):
    """``ray.train.DataConfig``'s execution options for one dataset (private
    ``DataConfig._resolve_execution_options``): a custom ``configure`` must apply them the way
    Ray's own does."""
    return data_config._resolve_execution_options(dataset_name)


# ------------------------------------------------------------------------------ torch
def set_scheduler_last_lr(scheduler) -> None:
    """Refresh ``LRScheduler.get_last_lr()`` after the groups' lr was set by hand (private
    ``LRScheduler._last_lr``; no public setter)."""
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


def mkldnn_bf16_supported() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (private
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported``; no public query exists). False if absent."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def compiled_original(model):
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) holds, or ``model`` itself
    (private ``OptimizedModule._orig_mod``; torch has no public accessor)."""
    return getattr(model, "_orig_mod", model)


# ------------------------------------------------------------------------------ checks
def _check_asha_rungs() -> None:
    from ray.tune.schedulers import ASHAScheduler

    s = ASHAScheduler(time_attr="training_iteration", metric="m", mode="max", max_t=4)
    rungs = asha_rungs(s)
    assert rungs and all(isinstance(rec, dict) for b in rungs for _, rec in b), \
        "AsyncHyperBandScheduler._brackets[i]._rungs: (milestone, {trial: value}) pairs"


def _check_stop_paused_trial() -> None:
    import inspect

    from ray.tune.execution.tune_controller import TrialRunnerWrapper, TuneController

    assert hasattr(TuneController, "_mark_trial_to_checkpoint"), \
        "TuneController._mark_trial_to_checkpoint"
    assert "self._tune_controller = tune_controller" in inspect.getsource(
        TrialRunnerWrapper.__init__), "TrialRunnerWrapper._tune_controller"


def _check_experiment_trials() -> None:
    import inspect

    from ray.tune import ResultGrid

    assert "self._experiment_analysis" in inspect.getsource(ResultGrid.__init__), \
        "ResultGrid._experiment_analysis"


def _check_placement_group_rows() -> None:
    from ray._private.state import state
    from ray._raylet import GlobalStateAccessor
    from ray.core.generated import gcs_pb2

    assert callable(getattr(state, "_connect_and_get_accessor", None)), \
        "ray._private.state.state._connect_and_get_accessor"
    assert callable(getattr(GlobalStateAccessor, "get_placement_group_table", None)), \
        "GlobalStateAccessor.get_placement_group_table"
    assert hasattr(gcs_pb2.PlacementGroupTableData, "REMOVED")
    for f in ("creator_actor_dead", "creator_actor_id", "creator_job_id", "is_detached",
              "placement_group_id", "state"):
        assert f in gcs_pb2.PlacementGroupTableData.DESCRIPTOR.fields_by_name, f


def _check_cluster_max_resources() -> None:
    from ray._private.state import GlobalState

    assert callable(getattr(GlobalState, "get_max_resources_from_cluster_config", None)), \
        "ray._private.state.GlobalState.get_max_resources_from_cluster_config"


def _check_session_dir() -> None:
    import ray._private.node
    import ray._private.worker as rw

    assert hasattr(rw, "_global_node"), "ray._private.worker._global_node"
    assert callable(getattr(ray._private.node.Node, "get_session_dir_path", None)), \
        "ray._private.node.Node.get_session_dir_path"


def _check_data_execution_index() -> None:
    import ray.data

    assert hasattr(ray.data.DataContext.get_current(), "_execution_idx"), \
        "DataContext._execution_idx"


def _check_resolve_execution_options() -> None:
    import ray.train

    assert callable(getattr(ray.train.DataConfig, "_resolve_execution_options", None)), \
        "ray.train.DataConfig._resolve_execution_options"


def _check_set_scheduler_last_lr() -> None:
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    assert hasattr(sched, "_last_lr"), "LRScheduler._last_lr"
    set_scheduler_last_lr(sched)
    assert sched.get_last_lr() == [0.1]


def _check_mkldnn_bf16_supported() -> None:
    import torch

    assert callable(torch.ops.mkldnn._is_mkldnn_bf16_supported), \
        "torch.ops.mkldnn._is_mkldnn_bf16_supported"


def _check_compiled_original() -> None:
    import torch

    net = torch.nn.Linear(1, 1)
    assert compiled_original(torch.compile(net)) is net, "OptimizedModule._orig_mod"


def _checks() -> dict[str, Callable[[], Any]]:
    """Wrapper name -> a check that raises when its private API is gone."""
    return {"mkldnn_bf16_supported": _check_mkldnn_bf16_supported,
            "asha_rungs": _check_asha_rungs, "experiment_trials": _check_experiment_trials,
            "stop_paused_trial": _check_stop_paused_trial,
            "placement_group_rows": _check_placement_group_rows,
            "cluster_max_resources": _check_cluster_max_resources,
            "session_dir": _check_session_dir, "data_execution_index": _check_data_execution_index,
            "resolve_execution_options": _check_resolve_execution_options,
            "set_scheduler_last_lr": _check_set_scheduler_last_lr,
            "compiled_original": _check_compiled_original}


def check() -> list[str]:
    """Names of the wrappers above whose private API the installed Ray / torch lacks
    (``[]`` when all are present), each with the reason."""
    missing = []
    for name, fn in _checks().items():
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - reported by name
            missing.append(f"{name}: {type(exc).__name__}: {exc}")
    return missing
