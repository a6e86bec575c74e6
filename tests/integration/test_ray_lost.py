"""The embedded Ray head killed under a running job: said plainly, queue kept, Ray back."""

from __future__ import annotations

import json
import os
import signal
import time

from scheduler.client import Client, NoDaemon
from tests.conftest import cleanup, make_labq


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_ray_head_lost_is_reported_queued_jobs_wait_and_the_daemon_reconnects() -> None:
    lq = make_labq("grace_period_s: 1\nmin_runtime_s: 0\nnode_lost_retries: 1\nmonitor_interval_s: 1\n")
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
