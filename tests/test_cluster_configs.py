"""Static checks of everything under ``cluster/`` (no Ray cluster is started).

What is checked, file by file:

* every YAML parses; the cluster launcher config passes Ray's own ``prepare_config`` +
  ``validate_config`` (the JSON schema ``ray up`` uses) and has the layout we rely on: a head
  with CPU 0, a GPU worker type and a CPU worker type, token auth and a loopback dashboard in
  the start commands;
* KubeRay manifests: ``ray.io/v1`` RayCluster/RayJob field names and types, the head with
  ``num-cpus: "0"``, a GPU and a CPU worker group, the auth token only through a
  ``secretKeyRef``, RayJob entrypoints that run ``jobs/train.py`` / ``jobs/tune.py`` with
  overrides the typed config accepts and checkpoints on storage every pod reaches;
* the runtime env is accepted by ``ray.runtime_env.RuntimeEnv``;
* nothing under ``cluster/`` holds a literal token, and the local scripts pass ``bash -n``.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LOCAL = CLUSTER / "local"
SECRET_NAME = "cnn-ray-auth-token"
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def _yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _kuberay_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _groups(spec: dict) -> Iterator[tuple[str, dict]]:
    yield "head", spec["headGroupSpec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group


def _containers(spec: dict) -> Iterator[tuple[str, dict]]:
    for name, group in _groups(spec):
        for container in group["template"]["spec"]["containers"]:
            yield name, container


# ------------------------------------------------------------------------------ all YAML
def test_cluster_dir_has_the_expected_files():
    for rel in ("aws.yaml", "runtime_env.yaml", "README.md", "kuberay/raycluster.yaml",
                "kuberay/rayjob-train.yaml", "kuberay/rayjob-tune.yaml",
                "local/start.sh", "local/status.sh", "local/stop.sh"):
        assert (CLUSTER / rel).is_file(), f"cluster/{rel} is missing"


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_yaml_parses_to_mappings(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    assert all(isinstance(d, dict) for d in docs), f"{path}: top level must be a mapping"


# ---------------------------------------------------------------------- cluster launcher
@pytest.fixture(scope="module")
def aws() -> dict:
    return _load(CLUSTER / "aws.yaml")


def test_launcher_config_passes_rays_own_schema(aws):
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(copy.deepcopy(aws))  # fills defaults offline, as `ray up` does
    util.validate_config(prepared)


def test_launcher_node_types(aws):
    assert aws["cluster_name"]
    assert aws["provider"]["type"] == "aws"
    types = aws["available_node_types"]
    assert aws["head_node_type"] in types
    for name, node_type in types.items():
        assert isinstance(node_type["node_config"], dict) and node_type["node_config"], name
        assert isinstance(node_type["resources"], dict), name
        if name != aws["head_node_type"]:
            assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
            assert node_type["max_workers"] <= aws["max_workers"], name
    head = types[aws["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must advertise CPU 0 (no training work)"
    workers = [t for n, t in types.items() if n != aws["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers), "no GPU worker type"
    assert any(t["resources"].get("GPU", 0) == 0 and t["resources"].get("CPU", 0) >= 8
               for t in workers), "no CPU worker type for Ray Data"


def test_launcher_start_commands_use_token_auth_and_loopback_dashboard(aws):
    head = " ".join(aws["head_start_ray_commands"])
    workers = " ".join(aws["worker_start_ray_commands"])
    for cmds in (head, workers):
        assert "RAY_AUTH_MODE=token" in cmds
        assert "0.0.0.0" not in cmds
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert "--num-cpus=0" in head
    assert "$RAY_HEAD_IP" in workers


def test_launcher_ships_repo_and_token_file_not_token(aws):
    mounts = aws["file_mounts"]
    repo_mounts = [remote for remote, local in mounts.items() if local == "."]
    assert repo_mounts, "the repo must be mounted on every node"
    setup = " ".join(aws["setup_commands"])
    assert any(f"pip install -e {remote.replace('/home/ubuntu', '~')}" in setup
               or f"pip install -e {remote}" in setup for remote in repo_mounts)
    token_mounts = {r: l for r, l in mounts.items() if "auth_token" in r}
    assert token_mounts, "the token file must reach every node"
    for local in token_mounts.values():
        assert local.startswith("~/") and not (REPO / local).exists(), local
    for excluded in (".venv", ".git", "runs"):
        assert excluded in aws["rsync_exclude"]


# --------------------------------------------------------------------------------- KubeRay
KUBERAY_DOCS = _kuberay_docs()


def _ids(item):
    return item[0].name if isinstance(item, tuple) else None


def test_kuberay_has_one_cluster_and_two_jobs():
    kinds = sorted((p.name, d["kind"]) for p, d in KUBERAY_DOCS)
    assert kinds == [("raycluster.yaml", "RayCluster"), ("rayjob-train.yaml", "RayJob"),
                     ("rayjob-tune.yaml", "RayJob")]


@pytest.mark.parametrize("item", KUBERAY_DOCS, ids=_ids)
def test_kuberay_structure(item):
    path, doc = item
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["metadata"]["name"]
    spec = _cluster_spec(doc)
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()), \
        "rayStartParams values must be strings"
    assert params["num-cpus"] == "0", "the head must take no training work"
    assert head["template"]["spec"]["containers"][0]["image"]

    groups = spec["workerGroupSpecs"]
    names = [g["groupName"] for g in groups]
    assert len(names) == len(set(names)) and all(names)
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(group[key], int), f"{group['groupName']}.{key}"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c.get("image") for c in containers)

    def gpus(group):
        return int(group["template"]["spec"]["containers"][0]["resources"]["limits"]
                   .get("nvidia.com/gpu", 0))

    assert any(gpus(g) >= 1 for g in groups), "no GPU worker group"
    assert any(gpus(g) == 0 for g in groups), "no CPU worker group"


@pytest.mark.parametrize("item", KUBERAY_DOCS, ids=_ids)
def test_kuberay_token_comes_from_a_secret(item):
    path, doc = item
    spec = _cluster_spec(doc)
    assert spec["authOptions"]["mode"] == "token"
    assert spec["authOptions"]["secretName"] == SECRET_NAME
    for group, container in _containers(spec):
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token", group
        token = env["RAY_AUTH_TOKEN"]
        assert "value" not in token, f"{path.name}/{group}: literal RAY_AUTH_TOKEN"
        ref = token["valueFrom"]["secretKeyRef"]
        assert ref == {"name": SECRET_NAME, "key": "auth_token"}, group


@pytest.mark.parametrize("item", KUBERAY_DOCS, ids=_ids)
def test_kuberay_dashboard_is_cluster_internal(item):
    # In a pod the dashboard must listen on the pod IP (the operator and RayJob submitters call
    # it through the head Service), so 0.0.0.0 is allowed only behind a ClusterIP Service
    # without ingress, and only with token auth (checked above).
    path, doc = item
    head = _cluster_spec(doc)["headGroupSpec"]
    assert head["rayStartParams"].get("dashboard-host") in ("0.0.0.0", "127.0.0.1", None)
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)


def _shared_mounts(spec: dict) -> list[str]:
    """Mount paths of PersistentVolumeClaims mounted in every Ray container."""
    per_container = []
    for group_name, group in _groups(spec):
        pvcs = {v["name"] for v in group["template"]["spec"].get("volumes", [])
                if "persistentVolumeClaim" in v}
        for container in group["template"]["spec"]["containers"]:
            per_container.append({m["mountPath"] for m in container.get("volumeMounts", [])
                                  if m["name"] in pvcs})
    return sorted(set.intersection(*per_container)) if per_container else []


@pytest.mark.parametrize("name,script", [("rayjob-train.yaml", "jobs/train.py"),
                                         ("rayjob-tune.yaml", "jobs/tune.py")])
def test_rayjob_entrypoint_and_lifecycle(name, script):
    doc = _load(KUBERAY / name)
    spec = doc["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", script], argv
    assert (REPO / script).is_file()
    config = argv[argv.index("--config") + 1]
    assert config.startswith("jobs/configs/") and config.endswith(".yaml")
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert isinstance(spec.get("ttlSecondsAfterFinished", 0), int)

    # Checkpoints must live where every pod can reach them (a sweep file's recipe is `base`).
    overrides = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    key = "base.run.storage_path" if script == "jobs/tune.py" else "run.storage_path"
    storage = overrides[key]
    if "://" not in storage:
        shared = _shared_mounts(spec["rayClusterSpec"])
        assert any(storage.startswith(m.rstrip("/") + "/") for m in shared), \
            f"{key}={storage} is not on a volume mounted in every pod ({shared})"


def test_rayjob_train_overrides_are_valid_config_keys():
    config_io = pytest.importorskip("cnn_ray.config_io")
    argv = shlex.split(_load(KUBERAY / "rayjob-train.yaml")["spec"]["entrypoint"])
    config = REPO / argv[argv.index("--config") + 1]
    overrides = [a for a in argv[argv.index("--config") + 2:] if "=" in a]
    cfg = config_io.load_train_config(str(config), overrides, check_paths=False)
    assert cfg.scaling.use_gpu and cfg.scaling.num_workers >= 2
    assert cfg.run.max_failures > 0


def test_rayjob_tune_overrides_are_valid_sweep_keys():
    jobs = pytest.importorskip("cnn_ray.tune.jobs")
    argv = shlex.split(_load(KUBERAY / "rayjob-tune.yaml")["spec"]["entrypoint"])
    config = REPO / argv[argv.index("--config") + 1]
    overrides = [a for a in argv[argv.index("--config") + 2:] if "=" in a]
    spec = jobs.load_sweep_file(config, overrides, check_paths=False)
    assert spec.base.scaling.use_gpu
    for path in (spec.base.data.train, spec.base.data.val):
        assert path.startswith("/mnt/shared/"), f"{path}: not on the shared volume"
    assert spec.scheduler.max_t in (None, spec.base.optim.epochs)


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-tune.yaml"])
def test_rayjob_runtime_env(name):
    runtime_env = yaml.safe_load(_load(KUBERAY / name)["spec"]["runtimeEnvYAML"])
    # No local checkout exists inside the cluster: the code must come from a URI.
    assert "://" in runtime_env["working_dir"] and runtime_env["working_dir"].endswith(".zip")
    _check_runtime_env(runtime_env)


# ----------------------------------------------------------------------------- runtime env
def _check_runtime_env(runtime_env: dict) -> None:
    assert isinstance(runtime_env["pip"], list) and runtime_env["pip"]
    assert any(p.startswith("torch") for p in runtime_env["pip"])
    env_vars = runtime_env["env_vars"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())
    assert "OMP_NUM_THREADS" in env_vars
    assert not any("TOKEN" in k for k in env_vars), "tokens do not belong in a runtime env"
    runtime_env_cls = pytest.importorskip("ray.runtime_env").RuntimeEnv
    runtime_env_cls(**runtime_env)  # Ray's own validation of field names and types


def test_runtime_env_file():
    runtime_env = _load(CLUSTER / "runtime_env.yaml")
    assert runtime_env["working_dir"] == "."
    for excluded in (".venv", "runs", ".git"):
        assert excluded in runtime_env["excludes"]
    _check_runtime_env(runtime_env)


# ------------------------------------------------------------------------------- secrets
TOKEN_PATTERNS = [
    re.compile(r"\b[0-9a-fA-F]{32,}\b"),  # Ray tokens are 64 hex characters
    re.compile(r"RAY_AUTH_TOKEN=(?![\"']?\$)[^\s\"';]+"),  # a literal assignment, not $VAR
    re.compile(r"--from-literal=auth_token"),  # puts the token on a command line
    re.compile(r"(?i)authorization:\s*bearer\s+(?!\$)[A-Za-z0-9]"),
]


@pytest.mark.parametrize("path", sorted(p for p in CLUSTER.rglob("*") if p.is_file()),
                         ids=lambda p: str(p.relative_to(CLUSTER)))
def test_no_literal_token_anywhere(path):
    assert path.name != "auth_token", f"{path}: a token file inside the repo"
    text = path.read_text(errors="replace")
    for pattern in TOKEN_PATTERNS:
        match = pattern.search(text)
        assert match is None, f"{path}: looks like a literal token: {match.group(0)!r}"


def test_token_auth_mode_everywhere():
    assert "export RAY_AUTH_MODE=token" in (LOCAL / "start.sh").read_text()
    aws = _load(CLUSTER / "aws.yaml")
    for cmd in aws["head_start_ray_commands"] + aws["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd
    for _, doc in KUBERAY_DOCS:
        for _, container in _containers(_cluster_spec(doc)):
            assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"]


# ------------------------------------------------------------------------- local scripts
SCRIPTS = sorted(LOCAL.glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_bash_n(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["start.sh", "status.sh", "stop.sh"])
def test_scripts_are_strict_and_executable(name):
    script = LOCAL / name
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_local_scripts_never_run_ray_stop():
    # `ray stop` kills every Ray process on the machine, other people's clusters included.
    for script in SCRIPTS:
        code = [line for line in script.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
        for line in code:
            assert not re.search(r"(\bray|RAY_BIN\"?)\s+stop\b", line), f"{script.name}: {line}"


def test_local_start_binds_dashboard_to_loopback():
    text = (LOCAL / "start.sh").read_text()
    assert "--dashboard-host=127.0.0.1" in text
    assert "0.0.0.0" not in text
    for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port",
                 "--object-manager-port", "--min-worker-port", "--max-worker-port"):
        assert flag in (LOCAL / "_common.sh").read_text(), flag
