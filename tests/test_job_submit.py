"""End to end: `ray start --head` + `ray job submit` of jobs/train.py, exactly as a user does.

Runs its own single-node cluster on non-default ports (never the session's Ray instance, never
`ray stop`, which would kill every Ray process on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import read_jsonl

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # the server answers (401 without a token is an answer)
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not come up in {timeout} s")


def test_ray_job_submit_train(cifar_small, tmp_path):
    bindir = Path(sys.executable).parent
    # Token auth on, with a throw-away token that only this test's cluster and client know.
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="rjs", dir="/tmp")  # short: Ray's socket paths have a 107-char limit
    head = subprocess.Popen(
        [str(bindir / "ray"), "start", "--head", "--block", f"--port={gcs}",
         f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=2",
         f"--dashboard-agent-listen-port={_free_port()}", "--include-dashboard=true",
         f"--temp-dir={ray_tmp}", "--object-store-memory=300000000"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    storage = tmp_path / "runs"
    try:
        try:
            _wait_http(f"http://127.0.0.1:{dash}/api/version", timeout=180)
        except TimeoutError:
            head.kill()
            raise AssertionError(f"ray start --head did not come up:\n{head.stdout.read()[-3000:]}")
        cmd = [str(bindir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
               "--working-dir", str(REPO), "--",
               "python", "jobs/train.py", "--config", "jobs/configs/smoke.yaml",
               f"data.train={cifar_small['train']}", f"data.val={cifar_small['test']}",
               f"run.storage_path={storage}", "run.name=submitted"]
        out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-4000:]
        assert "succeeded" in log
        assert '"final_metrics"' in log
        lines = read_jsonl(storage / "submitted" / "metrics.jsonl")
        assert [line["epoch"] for line in lines] == [1, 2]
        assert list((storage / "submitted").glob("checkpoint_*/meta.json"))
        cfg = (storage / "submitted" / "config.yaml").read_text()
        assert "smoke: true" in cfg
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
