"""Up-front resource checks on static and autoscaling clusters (no Ray started: the cluster's
resources, its autoscaler maximum and ``request_resources`` are stand-ins)."""

from __future__ import annotations

import pytest

from cnn_ray.config import ConfigError, TrainConfig
from cnn_ray.train import launch


def _cfg(**scaling) -> TrainConfig:
    return TrainConfig.from_dict({"data": {"train": "x", "cache": "none", "data_cpus": 0.5},
                                  "scaling": {"num_workers": 2, "cpus_per_worker": 2, **scaling}},
                                 check_paths=False)


@pytest.fixture
def cluster(monkeypatch):
    """``state["now"]``: what ray.cluster_resources() returns next (a list: one per call, the
    last one repeated); ``state["most"]``: the autoscaler maximum (None: static cluster);
    ``state["requests"]``: the request_resources calls."""
    import ray.autoscaler.sdk

    state = {"now": [{"CPU": 0.0}], "most": None, "requests": [], "sleeps": 0}

    def now():
        return state["now"].pop(0) if len(state["now"]) > 1 else state["now"][0]

    def sleep(_s):
        state["sleeps"] += 1

    monkeypatch.setattr(launch.ray, "cluster_resources", now)
    monkeypatch.setattr(launch.compat, "cluster_max_resources", lambda: state["most"])
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources",
                        lambda **kw: state["requests"].append(kw))
    monkeypatch.setattr(launch.time, "sleep", sleep)
    return state


def test_static_cluster_fails_at_once(cluster):
    with pytest.raises(ConfigError, match=r"= 4.5 CPUs, but the cluster has 0.0"):
        launch.check_cluster_fits(_cfg())
    assert cluster["requests"] == [] and cluster["sleeps"] == 0


def test_autoscaling_cluster_asks_and_waits(cluster, capsys):
    cluster["most"] = {"CPU": 16.0}
    cluster["now"] = [{"CPU": 0.0}, {"CPU": 2.0}, {"CPU": 6.0}]
    launch.check_cluster_fits(_cfg(), poll_s=0.0)
    # the workers' bundles and the streaming pipeline's, then the request withdrawn
    assert cluster["requests"] == [{"bundles": [{"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 0.5}]},
                                   {"bundles": []}]
    assert cluster["sleeps"] == 2
    out = capsys.readouterr().out
    assert "has 0 CPU now and can grow to 16 CPU" in out and "grew to 6 CPU" in out


def test_autoscaling_cluster_times_out_and_withdraws(cluster):
    cluster["most"] = {"CPU": 16.0}
    with pytest.raises(ConfigError, match=r"waited 0 s \(scaling.autoscale_timeout_s\)"):
        launch.check_cluster_fits(_cfg(autoscale_timeout_s=0), poll_s=0.0)
    assert cluster["requests"][-1] == {"bundles": []}


def test_beyond_the_autoscaler_maximum_fails_at_once(cluster):
    cluster["most"] = {"CPU": 16.0}  # no GPU node group
    with pytest.raises(ConfigError, match=r"can grow to \(its autoscaler's maximum\) 0 GPUs"):
        launch.check_cluster_fits(_cfg(use_gpu=True))
    cluster["most"] = {"CPU": 4.0}
    with pytest.raises(ConfigError, match=r"can grow to \(its autoscaler's maximum\) 4.0"):
        launch.check_cluster_fits(_cfg())
    assert cluster["requests"] == []


def test_fits_now_asks_nothing(cluster):
    cluster["now"] = [{"CPU": 8.0}]
    cluster["most"] = {"CPU": 16.0}
    launch.check_cluster_fits(_cfg())
    assert cluster["requests"] == []
    assert launch.job_bundles(_cfg(use_gpu=True, cpus_per_worker=1)) == [
        {"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 0.5}]
