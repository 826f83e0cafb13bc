"""End to end: ``cluster/local/start.sh 1 1`` gives a token-protected two-node cluster.

Starts a head and one worker node (1 CPU each, 200 MB object stores) on ports no default Ray
uses, checks that both nodes are alive and schedule work, that the GCS, the Jobs API and the
state API refuse callers without the token, that the dashboard listens on 127.0.0.1 only, and
that ``stop.sh`` stops exactly this cluster's processes. Takes 45-75 s on 2 busy cores.
Does not use the shared ``ray_session`` fixture: this test owns its own cluster.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "cluster" / "local"
RAY_BIN = Path(sys.executable).with_name("ray")
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
             "RAY_API_SERVER_ADDRESS")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _pick_ports() -> dict[str, int]:
    """A free port block below Linux's ephemeral range (32768+), away from Ray's defaults.

    Layout (see cluster/local/_common.sh): node i uses BASE + 200*i ... + 199; then GCS,
    dashboard and client ports right after the two node blocks.
    """
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(21000, 32000 - 500, 500)
        ports = {"base": base, "gcs": base + 400, "dashboard": base + 401, "client": base + 402}
        fixed = [base + 200 * i + k for i in range(2) for k in range(8)]
        if all(_port_free(p) for p in fixed + [ports["gcs"], ports["dashboard"], ports["client"]]):
            return ports
    pytest.skip("no free port block found")


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _run(cmd, env, timeout=60, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _pids_of(cluster_dir: Path) -> list[int]:
    """Live processes whose command line names the cluster dir (what stop.sh must remove)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(cluster_dir) + "/" in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listen_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.add(addr)
    return found


def _http_status(url: str, token: str | None) -> int:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def local_cluster():
    if not RAY_BIN.exists():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    # Short path: Ray's unix sockets live under it (107-byte limit).
    cluster_dir = Path(tempfile.mkdtemp(prefix="cnnray-", dir="/tmp"))
    token_path = cluster_dir / "token"
    ports = _pick_ports()
    env = _base_env()
    env.update({
        "CNN_RAY_CLUSTER_DIR": str(cluster_dir),
        "CNN_RAY_BIN": str(RAY_BIN),
        "CNN_RAY_GCS_PORT": str(ports["gcs"]),
        "CNN_RAY_DASHBOARD_PORT": str(ports["dashboard"]),
        "CNN_RAY_CLIENT_PORT": str(ports["client"]),
        "CNN_RAY_PORT_BASE": str(ports["base"]),
        "CNN_RAY_OBJECT_STORE_BYTES": str(200 * 1000 * 1000),
        "CNN_RAY_START_TIMEOUT": "90",
        "CNN_RAY_STOP_GRACE": "9",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
    })
    try:
        start = _run(["bash", str(LOCAL / "start.sh"), "1", "1"], env, timeout=240)
        yield {"dir": cluster_dir, "env": env, "ports": ports, "token_path": token_path,
               "start_output": start.stdout + start.stderr}
    finally:
        if (cluster_dir / "cluster.env").exists():
            subprocess.run(["bash", str(LOCAL / "stop.sh")], env=env, capture_output=True,
                           timeout=60)
        for pid in _pids_of(cluster_dir):  # last resort, only this cluster's processes
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(cluster_dir, ignore_errors=True)


def test_local_cluster_end_to_end(local_cluster):
    env, ports, cluster_dir = local_cluster["env"], local_cluster["ports"], local_cluster["dir"]
    gcs = f"127.0.0.1:{ports['gcs']}"
    dashboard = f"http://127.0.0.1:{ports['dashboard']}"

    # The token: generated into RAY_AUTH_TOKEN_PATH, private, never copied into the state file.
    token_path = local_cluster["token_path"]
    token = token_path.read_text().strip()
    assert len(token) == 64 and all(c in "0123456789abcdef" for c in token)
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    state = (cluster_dir / "cluster.env").read_text()
    assert token not in state and token not in local_cluster["start_output"]
    assert f"TOKEN_PATH={token_path}" in state

    with_token = dict(env, RAY_AUTH_MODE="token")
    no_token = {k: v for k, v in env.items() if k not in AUTH_VARS}
    wrong_token = dict(no_token, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)

    # Two alive nodes, seen by a driver that has the token.
    probe = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
             "print('NODES=' + json.dumps([[n['Alive'], n['NodeManagerAddress']] "
             "for n in ray.nodes()]))" % gcs)
    out = _run([sys.executable, "-c", probe], with_token, timeout=90).stdout
    nodes = json.loads(out.split("NODES=")[1].splitlines()[0])
    assert [alive for alive, _ in nodes] == [True, True], out
    node_ip = nodes[0][1]

    # status.sh: `ray status` + node list through token auth.
    status = _run(["bash", str(LOCAL / "status.sh")], env, timeout=60).stdout
    assert status.count("ALIVE") >= 2 and "Active:" in status, status

    # A job through the Jobs API: two 1-CPU tasks at once must land on both 1-CPU nodes.
    job = ("import ray, time; ray.init(); "
           "f = ray.remote(num_cpus=1)(lambda: (time.sleep(2), "
           "ray.get_runtime_context().get_node_id())[1]); "
           "print('DISTINCT_NODES=%d' % len(set(ray.get([f.remote(), f.remote()]))))")
    submitted = _run([str(RAY_BIN), "job", "submit", "--address", dashboard, "--", "python", "-c",
                      job], with_token, timeout=120)
    assert "DISTINCT_NODES=2" in submitted.stdout, submitted.stdout + submitted.stderr

    # Without the token (or with a wrong one) the Jobs API and the GCS refuse.
    assert _http_status(f"{dashboard}/api/jobs/", None) == 401
    assert _http_status(f"{dashboard}/api/jobs/", "0" * 64) == 403
    assert _http_status(f"{dashboard}/api/jobs/", token) == 200
    listed = _run([str(RAY_BIN), "job", "list", "--address", dashboard], no_token, check=False)
    assert listed.returncode != 0 and "Authentication" in listed.stdout + listed.stderr
    for bad_env in (no_token, wrong_token):
        gcs_status = _run([str(RAY_BIN), "status", "--address", gcs], bad_env, check=False)
        assert gcs_status.returncode != 0
        assert "AuthenticationError" in gcs_status.stdout + gcs_status.stderr

    # The dashboard / Jobs API listens on loopback only: not reachable on the node's own IP.
    assert _listen_addresses(ports["dashboard"]) == {"0100007F"}  # 127.0.0.1
    if not node_ip.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((node_ip, ports["dashboard"]), timeout=3).close()

    # stop.sh stops exactly this cluster and forgets it.
    pids_line = state.split("PIDS=", 1)[1].splitlines()[0]  # written with printf %q
    recorded = [int(p) for p in pids_line.replace("\\", "").split()]
    assert len(recorded) >= 6 and _pids_of(cluster_dir)
    t0 = time.monotonic()
    _run(["bash", str(LOCAL / "stop.sh")], env, timeout=60)
    assert time.monotonic() - t0 < 30
    assert _pids_of(cluster_dir) == []
    assert not [pid for pid in recorded if _alive(pid)]
    assert not (cluster_dir / "cluster.env").exists()
    for port in (ports["dashboard"], ports["gcs"], ports["client"], ports["base"]):
        assert not _listen_addresses(port), port
