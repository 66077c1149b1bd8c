"""`ray job submit -- recfm train …` against a real Ray head started here on 127.0.0.1, and stopped again."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from paths import ROOT

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A head node of our own (its own temp dir and ports), blocked in a process group we kill at the end:
    `ray stop` would stop every Ray on the machine, not only ours. Its agents get free ports too: on their fixed
    defaults, another Ray on the machine (a test run beside this one) kept its job agent from starting ("No
    available agent")."""
    port, dashboard = _free_port(), _free_port()
    agents = [f"--{name}={_free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "metrics-export-port", "runtime-env-agent-port",
                                                      "ray-client-server-port")]
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=3", "--include-dashboard=true",
         f"--temp-dir={temp}", "--disable-usage-stats", *agents],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_dashboard(url, head)
        yield url, env
    finally:
        # cleanup, not a test of Ray's shutdown: after a job, `ray start --block` can take half a minute to
        # follow SIGTERM, so it gets a few seconds before the whole session is killed
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        _stop_session(head.pid, grace=5.0)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_session(sid: int, grace: float = 15.0) -> None:
    """Ray's processes (raylet, GCS, workers renamed `ray::…`) stay in the session `ray start` was given; give
    them a moment to follow the head down, then kill whatever of that session is left."""
    deadline = time.time() + grace
    while True:
        left = subprocess.run(["pgrep", "-s", str(sid)], capture_output=True, text=True).stdout.split()
        if not left or time.time() > deadline:
            break
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):  # gone by itself meanwhile
            os.kill(int(pid), signal.SIGKILL)


def _wait_for_dashboard(url: str, head: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited: {head.stdout.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:  # it answers (401 until given the cluster's token): it is up
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError("the Ray dashboard did not come up")


def test_job_submission_trains_and_writes_checkpoints(ray_head, tmp_path):
    from recfm.data.synth import synthesize

    url, env = ray_head
    synthesize(tmp_path / "syn", users=600, items=200, events=12000, seed=5, clusters=6)
    run = tmp_path / "run"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(ROOT), "--",
           "recfm", "train", "configs/smoke.yaml", f"data.source={tmp_path / 'syn'}",
           f"data.cache_dir={tmp_path / 'cache'}", f"run_dir={run}", "train.epochs=2", "eval.baselines=[MostPop]"]
    for _ in range(12):  # a loaded machine starts the head's job agent late: "No available agent", try again
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(5)
    assert done.returncode == 0 and "succeeded" in done.stdout.lower(), done.stdout[-3000:]
    assert (run / "ray" / "train" / "epoch_0002" / ".metadata").exists()  # the sharded checkpoint
    assert any((run / "tb").rglob("events.out.tfevents.*"))  # TensorBoard
    models = {m["name"] for m in json.loads((run / "results.json").read_text())["models"]}
    assert models == {"MostPop", "recfm-FM"}
