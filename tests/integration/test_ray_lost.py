"""The Ray head (embedded or external) killed under a running job: said plainly, queue kept, Ray back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from scheduler import raycluster
from scheduler.client import Client, NoDaemon
from tests.conftest import cleanup, free_port, make_labq

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_ray_head_lost_is_reported_queued_jobs_wait_and_the_daemon_reconnects() -> None:
    lq = make_labq(
        "grace_period_s: 1\nmin_runtime_s: 0\nnode_lost_retries: 1\nmonitor_interval_s: 1\nray_lost_after_s: 2\n"
    )
    try:
        lq.up("--gpus", "2")
        c = Client(lq.socket)
        before = c.health()["ray"]["address"]
        victim = lq.submit("--gpus", "1", "--", "sleep", "300", cwd="/tmp")
        pid = int(lq.wait(victim, ("RUNNING",))["pid"])
        assert alive(pid)

        head = json.loads((lq.state_dir / "ray-head.json").read_text())
        os.killpg(head["pid"], signal.SIGKILL)

        # Submissions are still taken while Ray is gone.
        queued = lq.submit("--gpus", "1", "--", "true", cwd="/tmp")
        saw_down = False
        deadline = time.monotonic() + 120
        while True:
            try:
                h = Client(lq.socket).health()
            except NoDaemon:
                time.sleep(0.2)  # the daemon is starting itself again
                continue
            if not h["ray"]["connected"]:
                saw_down = True
                assert h["ray"]["error"], h["ray"]
            elif h["ray"]["address"] != before:
                break
            assert time.monotonic() < deadline, h["ray"]
            time.sleep(0.2)
        log = (lq.state_dir / "daemon.log").read_text()
        assert saw_down or "Ray unreachable" in log
        assert "the embedded Ray head is gone" in log and "restarting the daemon" in log

        # The job's process died with its Ray worker: nothing holds a GPU unseen.
        deadline = time.monotonic() + 30
        while alive(pid):
            assert time.monotonic() < deadline, f"job process {pid} outlived Ray"
            time.sleep(0.2)

        assert lq.wait(queued, ("SUCCEEDED",), timeout=120)["state"] == "SUCCEEDED"
        j = lq.wait(victim, ("RUNNING",), timeout=120)
        assert j["attempt"] == 2
        assert any(e["new_state"] == "NODE_LOST" for e in j["events"])
        lq.run("cancel", str(victim))
    finally:
        cleanup(lq)


def start_external_head(port: int, temp_dir: str) -> subprocess.Popen[bytes]:
    """An operator's Ray head, with token auth as the README says (token in temp_dir)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    token = Path(f"{temp_dir}-token")
    if not token.exists():
        token.write_text("0123456789abcdef" * 4)
        token.chmod(0o600)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token)
    proc = subprocess.Popen(
        raycluster.head_command(port, 2, temp_dir, cpus=2),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while not raycluster.reachable(f"127.0.0.1:{port}"):
        assert proc.poll() is None and time.monotonic() < deadline, "the external Ray head did not start"
        time.sleep(0.3)
    return proc


def test_external_ray_head_lost_and_back_the_daemon_reconnects_and_requeues() -> None:
    port = free_port()
    temp_dir = f"/tmp/labq-ext-{port}"
    head = start_external_head(port, temp_dir)
    lq = make_labq(
        "grace_period_s: 1\nmin_runtime_s: 0\nnode_lost_retries: 1\nray_lost_after_s: 2\n"
        f"ray_token_file: {temp_dir}-token\n"
    )
    try:
        lq.up("--address", f"127.0.0.1:{port}")
        first_pid = lq.daemon_pid()
        victim = lq.submit("--gpus", "1", "--", "sleep", "300", cwd="/tmp")
        pid = int(lq.wait(victim, ("RUNNING",))["pid"])

        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        # Said in plain words, and the queue still takes jobs.
        deadline = time.monotonic() + 60
        while (h := Client(lq.socket).health())["ray"]["connected"]:
            assert time.monotonic() < deadline, "the daemon never noticed the head was gone"
            time.sleep(0.3)
        assert h["ray"]["error"] and f"127.0.0.1:{port}" == h["ray"]["address"]
        deadline = time.monotonic() + 30
        while alive(pid):
            assert time.monotonic() < deadline, f"job process {pid} outlived its Ray node"
            time.sleep(0.2)
        # The daemon restarts itself (a fresh Ray driver) and waits for the head,
        # answering and queueing meanwhile.
        deadline = time.monotonic() + 60
        while True:
            try:
                if "waiting for the Ray head" in Client(lq.socket).health()["ray"]["error"]:
                    break
            except NoDaemon:
                pass
            assert time.monotonic() < deadline, "the daemon did not restart to wait for Ray"
            time.sleep(0.3)
        queued = lq.submit("--gpus", "1", "--", "true", cwd="/tmp")
        assert "Ray is unreachable" in lq.run("queue").stdout
        time.sleep(2)
        assert lq.daemon_pid() == first_pid and lq.job(queued)["state"] == "PENDING"

        # The operator brings the head back on the same address: labq reconnects by itself.
        head = start_external_head(port, temp_dir)
        deadline = time.monotonic() + 120
        while True:
            try:
                if Client(lq.socket).health()["ray"]["connected"]:
                    break
            except NoDaemon:
                pass  # the daemon is starting itself again, with a new Ray driver
            assert time.monotonic() < deadline, "the daemon never reconnected"
            time.sleep(0.3)
        assert lq.daemon_pid() == first_pid  # the same process, re-executed
        assert lq.wait(queued, ("SUCCEEDED",), timeout=120)["state"] == "SUCCEEDED"
        j = lq.wait(victim, ("RUNNING",), timeout=60)
        assert j["attempt"] == 2 and any(e["new_state"] == "NODE_LOST" for e in j["events"])
        assert Client(lq.socket).health()["ray"]["connected"]
        assert (
            "restarting the daemon to wait for it and reconnect" in (lq.state_dir / "daemon.log").read_text()
        )
        lq.run("cancel", str(victim))
    finally:
        cleanup(lq)
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)
        Path(f"{temp_dir}-token").unlink(missing_ok=True)
