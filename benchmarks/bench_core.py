"""Core queue benchmark: labq next to raw Ray tasks, measured in the same run.

    python benchmarks/bench_core.py [--drain-jobs 500] [--latency-jobs 20] [--api-jobs 1000]

Measures, for a 1-GPU job on 4 logical GPUs:
- submit -> running latency on an idle cluster (labq: submit call to process start;
  Ray: .remote() to task start);
- submission throughput of `labq submit` (a new process each) and of the API directly;
- drain rate: N one-GPU `true` jobs on 4 GPUs, first submit to last finish.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scheduler.client import Client  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_ray(latency_jobs: int, drain_jobs: int) -> dict[str, float]:
    """The floor: raw Ray tasks that each run a `true` subprocess on one GPU."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    ray.init(num_gpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_gpus=1, num_cpus=0, max_calls=0)
    def job(t_submit: float) -> float:
        started = time.time()
        subprocess.run(["true"], check=True)
        return started - t_submit

    ray.get([job.remote(time.time()) for _ in range(8)])  # warm the workers, as labq's are
    lat = [ray.get(job.remote(time.time())) for _ in range(latency_jobs)]
    t0 = time.time()
    ray.get([job.remote(time.time()) for _ in range(drain_jobs)])
    drain = drain_jobs / (time.time() - t0)
    t0 = time.time()
    refs = [job.remote(time.time()) for _ in range(1000)]
    submit_rate = 1000 / (time.time() - t0)
    ray.get(refs)
    ray.shutdown()
    return {
        "latency_median": statistics.median(lat),
        "latency_p90": pct(lat, 0.9),
        "drain_rate": drain,
        "submit_rate": submit_rate,
    }


def wait_state(c: Client, job_id: int, states: set[str], timeout: float = 60) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = c.job(job_id)
        if j["state"] in states:
            return j
        time.sleep(0.005)
    raise RuntimeError(f"job {job_id} stuck in {j['state']}")


def bench_labq(latency_jobs: int, drain_jobs: int, api_jobs: int, cli_jobs: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="lqb", dir="/tmp"))
    env = dict(
        os.environ,
        LABQ_SOCKET=str(root / "labq.sock"),
        LABQ_STATE_DIR=str(root / "state"),
        PYTHONPATH=str(REPO),
    )
    labq = [sys.executable, "-m", "scheduler.cli"]
    (root / "state").mkdir()
    (root / "state" / "labq.yaml").write_text("grace_period_s: 2\n")
    subprocess.run([*labq, "up", "--gpus", "4"], env=env, check=True, capture_output=True)
    c = Client(root / "labq.sock")
    spec = {"command": ["true"], "gpus": 1, "workdir": "/tmp", "env": {"PATH": os.environ["PATH"]}}
    try:
        # Warm-up: Ray starts its workers on first use, as it would once per daemon.
        for jid in [c.submit(spec) for _ in range(8)]:
            wait_state(c, jid, {"SUCCEEDED"})
        lat = []
        for _ in range(latency_jobs):
            jid = c.submit(spec)
            j = wait_state(c, jid, {"SUCCEEDED", "FAILED"})
            # start_time is when the job's process started (reported by the node).
            lat.append(j["start_time"] - j["submit_time"])

        # Throughput: jobs that stay pending behind a 4-GPU blocker.
        blocker = c.submit({**spec, "command": ["sleep", "600"], "gpus": 4})
        wait_state(c, blocker, {"RUNNING"})
        held = {**spec, "gpus": 4}
        t0 = time.time()
        ids = [c.submit(held) for _ in range(api_jobs)]
        api_rate = api_jobs / (time.time() - t0)
        t0 = time.time()
        for _ in range(cli_jobs):
            subprocess.run(
                [*labq, "submit", "--gpus", "4", "--", "true"], env=env, check=True, capture_output=True
            )
        cli_rate = cli_jobs / (time.time() - t0)
        cli_ms = 1000 / cli_rate
        pending = [j["id"] for j in c.jobs(state="PENDING")]
        for jid in [blocker, *pending]:
            c.cancel(jid)
        assert len(pending) >= len(ids)

        # Drain: N one-GPU jobs on 4 GPUs, first submit to last finish.
        while c.jobs():
            time.sleep(0.1)
        t0 = time.time()
        ids = [c.submit(spec) for _ in range(drain_jobs)]
        while c.jobs():
            time.sleep(0.05)
        done = [c.job(i) for i in ids]
        assert all(j["state"] == "SUCCEEDED" for j in done), {j["state"] for j in done}
        drain = drain_jobs / (max(j["end_time"] for j in done) - t0)
    finally:
        subprocess.run([*labq, "down", "--kill"], env=env, capture_output=True)
        from scheduler import raycluster

        raycluster.stop_embedded(root / "state")
        shutil.rmtree(root, ignore_errors=True)
    return {
        "latency_median": statistics.median(lat),
        "latency_p90": pct(lat, 0.9),
        "drain_rate": drain,
        "api_submit_rate": api_rate,
        "cli_submit_rate": cli_rate,
        "cli_submit_ms": cli_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-jobs", type=int, default=20)
    ap.add_argument("--drain-jobs", type=int, default=500)
    ap.add_argument("--api-jobs", type=int, default=1000)
    ap.add_argument("--cli-jobs", type=int, default=30)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; 4 logical GPUs; python {sys.version.split()[0]}")
    ray_r = bench_ray(args.latency_jobs, args.drain_jobs)
    labq_r = bench_labq(args.latency_jobs, args.drain_jobs, args.api_jobs, args.cli_jobs)
    print(f"{'metric':<38}{'labq':>12}{'raw Ray':>12}{'target':>10}")
    print(
        f"{'submit->running median (s)':<38}{labq_r['latency_median']:>12.3f}{ray_r['latency_median']:>12.3f}{'<=0.5':>10}"
    )
    print(f"{'submit->running p90 (s)':<38}{labq_r['latency_p90']:>12.3f}{ray_r['latency_p90']:>12.3f}")
    print(
        f"{f'drain {args.drain_jobs} x 1-GPU true (jobs/s)':<38}{labq_r['drain_rate']:>12.1f}{ray_r['drain_rate']:>12.1f}{'>=8':>10}"
    )
    print(
        f"{'API submissions/s':<38}{labq_r['api_submit_rate']:>12.0f}{ray_r['submit_rate']:>12.0f}{'>=200':>10}"
    )
    print(f"{'`labq submit` CLI submissions/s':<38}{labq_r['cli_submit_rate']:>12.1f}{'-':>12}")
    print(f"{'`labq submit` CLI wall time (ms)':<38}{labq_r['cli_submit_ms']:>12.0f}{'-':>12}{'~100':>10}")


if __name__ == "__main__":
    main()
