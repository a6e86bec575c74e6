"""Faults on a real two-host cluster (issue 14): how long until labq notices and recovers.

    sudo .venv/bin/python benchmarks/bench_faults.py [--node-timeout 60]

Two "hosts" are network namespaces with their own addresses and hostnames
(benchmarks/netns.py). The head runs `labq up --advertise`; the worker joins with an
invite (`labq join`, supervised: it restarts its Ray whenever Ray stops). A 2-GPU job
runs on the worker while the head's 2 GPUs are free, so a lost job can run again at
once. For each fault, measured from the fault:

- detected: the job's requeue after NODE_LOST (its NODE_LOST is dated at the node's
  last word, also shown);
- running again: the requeued job RUNNING (on the head);
- rejoined: the worker back in `labq gpus` as a new Ray node (where it applies).

Faults: the worker's power lost (kill -9 of everything on it; the join agent is
restarted by hand afterwards, as systemd would at boot); the worker's cable cut (`ip
link set down`; the job must also stop by itself on the worker); the head killed
(daemon and Ray, kill -9) and started again (as systemd would), the worker rejoining.
The baseline is Ray's own view: when Ray's node table drops the worker (audited
by the daemon as `node down`, checked every 2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.netns import Host, hosts  # noqa: E402
from scheduler import raycluster  # noqa: E402


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)
    return got


class Labq:
    """A daemon's state dir and socket, and the real `labq` command against them."""

    def __init__(self, config: str) -> None:
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="lqbench", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.state_dir, self.socket = self.root / "state", self.root / "labq.sock"
        self.state_dir.mkdir()
        (self.state_dir / "labq.yaml").write_text(config)
        (self.root / "work").mkdir()

    def env(self) -> dict[str, str]:
        return {**os.environ, "LABQ_SOCKET": str(self.socket), "LABQ_STATE_DIR": str(self.state_dir),
                "PYTHONPATH": str(REPO)}  # fmt: skip

    def work(self) -> Path:
        return self.root / "work"

    def run(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "scheduler.cli", *args], env=self.env(), capture_output=True,
                             text=True, timeout=180, cwd=str(self.work()))  # fmt: skip
        if out.returncode:
            raise AssertionError(f"labq {' '.join(args)}: {out.stderr}")
        return out.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json"))

    def submit(self, *args: str) -> int:
        return int(json.loads(self.run("submit", "--json", *args))["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.json("show", str(job_id)))

    def wait(self, job_id: int, states: tuple[str, ...], timeout: float) -> dict[str, Any]:
        return dict(wait_for(f"job {job_id} in {states}", lambda: (j := self.job(job_id))["state"] in states and j, timeout))

    def wait_all(self, ids: list[int], states: tuple[str, ...], timeout: float) -> None:
        for i in ids:
            self.wait(i, states, timeout)

    def cleanup(self) -> None:
        try:
            pid = json.loads((self.state_dir / "daemon.json").read_text())["pid"]
            os.kill(pid, 9)
        except (OSError, ValueError, KeyError):
            pass
        raycluster.stop_embedded(self.state_dir, timeout=0)
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


def labq_cmd(host: Host, *args: str) -> list[str]:
    return host.cmd(sys.executable, "-m", "scheduler.cli", *args)


def up(lq: Labq, head: Host) -> None:
    out = subprocess.run(
        labq_cmd(head, "up", "--state-dir", str(lq.state_dir), "--advertise", head.ip, "--gpus", "2", "--cpus", "2"),
        env=lq.env(), capture_output=True, text=True, timeout=180, cwd=str(lq.work()),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def join(lq: Labq, worker: Host, invite: dict[str, Any] | None, state: Path) -> subprocess.Popen[bytes]:
    args = ["join", "--rejoin"] if invite is None else ["join", invite["url"], "--secret", invite["secret"],
                                                         "--cert-sha256", invite["cert_sha256"]]  # fmt: skip
    return subprocess.Popen(
        labq_cmd(worker, *args, "--gpus", "2", "--cpus", "1", "--state-dir", str(state)),
        env=lq.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def node_names(lq: Labq) -> set[str]:
    try:
        return {n["name"] for n in lq.json("gpus")["nodes"]}
    except AssertionError:
        return set()


def events(lq: Labq, job: int) -> list[dict[str, Any]]:
    return list(lq.job(job)["events"])


def job_on_worker(lq: Labq) -> tuple[int, int]:
    """A job on the worker (and its pid there), with the head's GPUs free (a lost job
    can run again at once)."""
    ids = [lq.submit("--gpus", "2", "--", "sh", "-c",
                     "echo $$ > /tmp/lq-bench-fault-pid.$LABQ_JOB_ID.$LABQ_ATTEMPT; sleep 3000")
           for _ in range(2)]  # fmt: skip
    lq.wait_all(ids, ("RUNNING",), timeout=120)
    where = {i: lq.job(i)["node_name"] for i in ids}
    job = next(i for i, n in where.items() if n == "lq-w1")
    other = next(i for i in ids if i != job)
    lq.run("cancel", "--now", str(other))
    lq.wait(other, ("CANCELLED",), timeout=60)
    pid_file = Path(f"/tmp/lq-bench-fault-pid.{job}.1")
    wait_for("the job's pid", pid_file.exists, 30)
    return job, int(pid_file.read_text())


def measure(lq: Labq, job: int, t0: float, timeout: float) -> dict[str, float | None]:
    def requeued() -> float | None:
        for e in events(lq, job):
            if e["new_state"] == "PENDING" and e["time"] > t0:
                return float(e["time"])
        return None

    detected = wait_for("NODE_LOST and requeue", requeued, timeout)
    lost = next(e["time"] for e in events(lq, job) if e["new_state"] == "NODE_LOST" and e["time"] >= t0 - 120)

    def running() -> float | None:
        for e in events(lq, job):
            if e["new_state"] == "RUNNING" and e["time"] > detected:
                return float(e["time"])
        return None

    again = wait_for("running again", running, 120)
    return {"detected_s": detected - t0, "lost_dated_s": lost - t0, "running_again_s": again - t0,
            "ray_dropped_s": ray_dropped(lq, t0)}  # fmt: skip


def ray_dropped(lq: Labq, t0: float, timeout: float = 120) -> float | None:
    """The baseline: when Ray's node table dropped the worker (the daemon audits it)."""
    def seen() -> float | None:
        for a in lq.json("audit"):
            if a["action"] == "node down" and a["target"] == "lq-w1" and a["time"] > t0:
                return float(a["time"]) - t0
        return None

    try:
        return wait_for("Ray dropping the node", seen, timeout)
    except AssertionError:
        return None


def power_lost(lq: Labq, worker: Host, wstate: Path) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
    job, _ = job_on_worker(lq)
    t0 = time.time()
    worker.kill_all()
    out = measure(lq, job, t0, 180)
    lq.run("cancel", "--now", str(job))
    agent = join(lq, worker, None, wstate)  # the machine boots again: systemd starts `labq join --rejoin`
    t1 = time.time()
    wait_for("the worker back", lambda: "lq-w1" in node_names(lq), 180)
    out["rejoined_after_boot_s"] = time.time() - t1
    return out, agent


def cable_cut(lq: Labq, worker: Host) -> dict[str, Any]:
    job, pid = job_on_worker(lq)
    time.sleep(2)
    t0 = time.time()
    worker.link(False)
    out = measure(lq, job, t0, 300)
    wait_for("the cut-off job to stop by itself", lambda: not Path(f"/proc/{pid}").exists(), 300)
    out["stopped_on_worker_s"] = time.time() - t0
    lq.run("cancel", "--now", str(job))
    worker.link(True)
    t1 = time.time()
    wait_for("the worker back", lambda: "lq-w1" in node_names(lq), 300)
    out["rejoined_after_reconnect_s"] = time.time() - t1
    return out


def head_restart(lq: Labq, head: Host) -> dict[str, Any]:
    head.kill_all()
    subprocess.run(["pkill", "-KILL", "-f", str(lq.state_dir)], capture_output=True)
    t0 = time.time()
    up(lq, head)  # as systemd would
    out: dict[str, Any] = {"daemon_up_s": time.time() - t0}
    wait_for("the worker rejoining the new head", lambda: "lq-w1" in node_names(lq), 300)
    out["worker_rejoined_s"] = time.time() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--node-timeout", default="60s")
    ap.add_argument("--only", choices=["power", "cable", "head"], help="one fault only")
    args = ap.parse_args()
    config = f"grace_period_s: 2\nmin_runtime_s: 0\nmonitor_interval_s: 1\nnode_lost_retries: 5\nnode_timeout_s: {args.node_timeout}\n"
    results: dict[str, Any] = {"node_timeout": args.node_timeout}
    with hosts("lq-head", "lq-w1") as (head, worker):
        lq = Labq(config)
        wstate = lq.root / "w1"
        agent = None
        try:
            up(lq, head)
            invite = lq.json("node", "invite")
            agent = join(lq, worker, invite, wstate)
            wait_for("the worker", lambda: "lq-w1" in node_names(lq), 120)
            if args.only in (None, "power"):
                results["power_lost"], agent = power_lost(lq, worker, wstate)
                print("power_lost", json.dumps(results["power_lost"]), flush=True)
            if args.only in (None, "cable"):
                results["cable_cut"] = cable_cut(lq, worker)
                print("cable_cut", json.dumps(results["cable_cut"]), flush=True)
            if args.only in (None, "head"):
                results["head_restart"] = head_restart(lq, head)
        finally:
            if agent is not None:
                agent.kill()
            lq.cleanup()
            for f in Path("/tmp").glob("lq-bench-fault-pid.*"):
                f.unlink()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the hosts on `timeout`
    if os.geteuid() != 0:
        sys.exit("run as root: namespace hosts need it")
    main()
