"""Arrays (issue 16): what a 10,000-task array costs next to the same work as separate jobs.

    sudo .venv/bin/python benchmarks/bench_arrays.py [--tasks 10000] [--drain 1000] [--repeats 7]

1. The policy alone (in-process, `policy.schedule`, the median of --repeats passes) on 4
   GPUs held by a running job: one pending job; one array of --tasks tasks; --tasks
   separate jobs. The array should cost about what one job costs.
2. A real daemon (embedded Ray, 4 logical GPUs, a 4-GPU job holding them): the same
   array submitted in one API call, then `labq queue` (wall time of the command) and
   the daemon's own pass time; then the same with --tasks separate jobs.
3. Drain: --drain tasks of `true`, 1 GPU each, on the 4 GPUs, as one array and as
   separate jobs (submitted as fast as one client can), first submit to last end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scheduler.client import Client  # noqa: E402
from scheduler.policy import NodeInfo, PendingJob, RunningJob, Snapshot, schedule  # noqa: E402


def median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def policy_pass(tasks: int, repeats: int) -> dict[str, float]:
    nodes = (NodeInfo("n1", 4),)
    running = (RunningJob(0, "bob", 4, "n1", 0.0, 3600.0),)

    def snap(pending: tuple[PendingJob, ...]) -> Snapshot:
        return Snapshot(now=100.0, pending=pending, running=running, nodes=nodes)

    one = snap((PendingJob(1, "alice", 1, 1.0),))
    array = snap((PendingJob(1, "alice", 1, 1.0, count=tasks),))
    separate = snap(tuple(PendingJob(i, "alice", 1, 1.0 + i * 1e-3) for i in range(1, tasks + 1)))
    return {
        "one job": median_time(lambda: schedule(one), repeats * 20),
        f"array of {tasks:,}": median_time(lambda: schedule(array), repeats * 20),
        f"{tasks:,} separate jobs": median_time(lambda: schedule(separate), repeats),
    }


class Daemon:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lqa", dir="/tmp"))
        self.env = dict(
            os.environ,
            LABQ_SOCKET=str(self.root / "labq.sock"),
            LABQ_STATE_DIR=str(self.root / "state"),
            PYTHONPATH=str(REPO),
        )
        (self.root / "state").mkdir()
        (self.root / "state" / "labq.yaml").write_text("grace_period_s: 2\nmax_pending_jobs_per_user: 100000\n")
        self.cli = [sys.executable, "-m", "scheduler.cli"]
        subprocess.run([*self.cli, "up", "--gpus", "4"], env=self.env, check=True, capture_output=True)
        self.c = Client(self.root / "labq.sock", timeout=300)

    def queue_wall(self, repeats: int) -> float:
        return median_time(
            lambda: subprocess.run([*self.cli, "queue"], env=self.env, check=True, capture_output=True, cwd="/tmp"),
            repeats,
        )

    def pass_s(self, samples: int = 7) -> float:
        out = []
        for _ in range(samples):
            time.sleep(0.6)
            out.append(float(self.c.health()["pass_s"]))
        return statistics.median(out)

    def idle(self) -> None:
        while self.c.jobs():
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run([*self.cli, "down", "--kill"], env=self.env, capture_output=True)
        from scheduler import raycluster

        raycluster.stop_embedded(self.root / "state")
        shutil.rmtree(self.root, ignore_errors=True)


def daemon_runs(tasks: int, drain: int, repeats: int, rounds: int) -> dict[str, float]:
    d = Daemon()
    c = d.c
    spec: dict[str, Any] = {"command": ["true"], "gpus": 1, "workdir": "/tmp", "env": {"PATH": os.environ["PATH"]}}
    out: dict[str, float] = {}
    try:
        for _ in range(8):  # Ray starts its workers on first use
            c.submit(spec)
        d.idle()
        blocker = c.submit({**spec, "command": ["sleep", "3600"], "gpus": 4})
        while c.job(blocker)["state"] != "RUNNING":
            time.sleep(0.05)
        out["labq queue, empty queue (s)"] = d.queue_wall(repeats)
        out["daemon pass, empty queue (s)"] = d.pass_s()

        t0 = time.perf_counter()
        arr = c.submit({**spec, "array": f"0-{tasks - 1}"})
        out[f"submit an array of {tasks:,} (s)"] = time.perf_counter() - t0
        out[f"labq queue, array of {tasks:,} waiting (s)"] = d.queue_wall(repeats)
        out[f"daemon pass, array of {tasks:,} waiting (s)"] = d.pass_s()
        c.cancel(arr)

        t0 = time.perf_counter()
        ids = [c.submit(spec) for _ in range(tasks)]
        out[f"submit {tasks:,} separate jobs (s)"] = time.perf_counter() - t0
        out[f"labq queue, {tasks:,} separate jobs waiting (s)"] = d.queue_wall(repeats)
        out[f"daemon pass, {tasks:,} separate jobs waiting (s)"] = d.pass_s()
        for jid in ids:
            c.cancel(jid)
        c.cancel(blocker)
        d.idle()

        # Drain, alternating separate jobs and the array on the same warm daemon, `rounds`
        # times each (this machine is noisy: the medians are reported, and each run).
        for r in range(rounds):
            t0 = time.time()
            ids = [c.submit(spec) for _ in range(drain)]
            d.idle()
            done = [c.job(i) for i in ids]
            assert all(j["state"] == "SUCCEEDED" for j in done), {j["state"] for j in done}
            out[f"drain {drain:,} separate `true` jobs, run {r + 1} (jobs/s)"] = drain / (max(j["end_time"] for j in done) - t0)
            t0 = time.time()
            arr = c.submit({**spec, "array": f"0-{drain - 1}"})
            while c.job(arr)["state"] == "PENDING":
                time.sleep(0.05)
            j = c.job(arr)
            assert j["state"] == "SUCCEEDED" and j["array"]["done"] == drain, j
            ends = [t["end_time"] for t in c.jobs(include_finished=True, tasks=True) if t.get("array_id") == arr]
            out[f"drain an array of {drain:,} `true`, run {r + 1} (tasks/s)"] = drain / (max(ends) - t0)
        for kind in ("separate `true` jobs", "an array of"):
            runs = [v for k, v in out.items() if k.startswith("drain") and kind in k]
            out[f"drain, {kind.split()[0] if kind[0] == 's' else 'array'}: median of {rounds}"] = statistics.median(runs)
    finally:
        d.close()
    return out


def admission(tasks: int, repeats: int) -> dict[str, float]:
    """What bounding an array as expanded adds to its submission (admission's
    `task_bytes_bound()`), next to validating the spec, which every submission does."""
    from scheduler.job import JobSpec

    raw = {"command": ["python", "train.py", "--seed", "{index}"], "array": f"0-{tasks - 1}%8", "gpus": 1}
    spec = JobSpec.model_validate(raw)
    return {
        "validate the spec (every submission)": median_time(lambda: JobSpec.model_validate(raw), repeats * 200),
        "bound its tasks as expanded (arrays)": median_time(spec.task_bytes_bound, repeats * 200),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--drain", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3, help="drain runs of each kind")
    ap.add_argument("--skip-daemon", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    print("policy pass (in-process, 4 GPUs all held):")
    for k, v in policy_pass(args.tasks, args.repeats).items():
        print(f"  {k:<44}{v * 1000:>10.3f} ms")
    print(f"admission of an array of {args.tasks:,} (in-process):")
    for k, v in admission(args.tasks, args.repeats).items():
        print(f"  {k:<44}{v * 1e6:>10.1f} us")
    if args.skip_daemon:
        return
    print("real daemon (embedded Ray, 4 logical GPUs):")
    for k, v in daemon_runs(args.tasks, args.drain, args.repeats, args.rounds).items():
        print(f"  {k:<52}{v:>10.3f}")


if __name__ == "__main__":
    main()
