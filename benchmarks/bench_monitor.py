"""GPU monitor benchmark: CPU cost per GPU sample, and sample -> API freshness.

    python benchmarks/bench_monitor.py [--gpus 8] [--samples 2000] [--freshness-s 20]

1. CPU cost. The node agent's poll of N GPUs (NVML queries, per-process
   utilization, process -> job mapping, host CPU/memory), measured as process CPU
   time. The NVML here is the fake built from the H200 recording, whose Python calls
   cost more than the real C library's; so the same run also times the bare fake
   calls (the baseline) and reports labq's own overhead = poll - bare calls, then
   adds the real call costs recorded on an H200 (nvml_call_costs.json) to estimate
   the cost on real hardware.
2. Freshness. A real daemon with simulated GPUs and a 1 s monitor interval: how old
   the newest GPU sample is when a client reads it through the API (sample time ->
   visible), polled every 50 ms.
"""

from __future__ import annotations

import argparse
import json
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

from scheduler.agent import JobOnNode, NodeAgent  # noqa: E402
from scheduler.fakenvml import FakeNVML  # noqa: E402

COSTS = REPO.parent / "shared" / "fixtures" / "nvml-h200" / "nvml_call_costs.json"
# NVML calls one GPU sample makes (monitor.GpuSampler._sample_one).
CALLS_PER_GPU = 13


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bare_calls(nv: FakeNVML, gpus: int) -> None:
    """The NVML queries alone, with no labq logic around them (the baseline)."""
    for i in range(gpus):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        nv.nvmlDeviceGetMemoryInfo(h)
        nv.nvmlDeviceGetUtilizationRates(h)
        nv.nvmlDeviceGetTotalEccErrors(h, 1, 0)
        nv.nvmlDeviceGetMigMode(h)
        nv.nvmlDeviceGetComputeRunningProcesses(h)
        try:
            nv.nvmlDeviceGetProcessUtilization(h, 0)
        except nv.NVMLError_NotFound:
            pass
        nv.nvmlDeviceGetUUID(h)
        nv.nvmlDeviceGetName(h)
        nv.nvmlDeviceGetTemperature(h, 0)
        nv.nvmlDeviceGetPowerUsage(h)
        nv.nvmlDeviceGetEnforcedPowerLimit(h)
        try:
            nv.nvmlDeviceGetFanSpeed(h)
        except nv.NVMLError_NotSupported:
            pass


def cpu_cost(gpus: int, samples: int) -> dict[str, float]:
    # Half the GPUs busy with a process each (this process: it exists and has a tree).
    me = os.getpid()
    load = {i: [me] for i in range(0, gpus, 2)}
    fake = FakeNVML(gpus, load=lambda i: load.get(i, []), clock=time.time)
    agent = NodeAgent("bench", gpus, nvml=fake)
    agent.set_jobs([JobOnNode(1, me, tuple(range(0, gpus, 2)))])
    for _ in range(20):
        agent.poll()
        bare_calls(fake, gpus)
    t0 = time.process_time()
    for _ in range(samples):
        agent.poll()
    poll_s = (time.process_time() - t0) / samples
    t0 = time.process_time()
    for _ in range(samples):
        bare_calls(fake, gpus)
    bare_s = (time.process_time() - t0) / samples
    real_call_us = 0.0
    if COSTS.exists():
        costs = json.loads(COSTS.read_text())
        real_call_us = statistics.mean(v["median_us"] for v in costs.values())
    own_s = max(0.0, poll_s - bare_s)
    est_real_s = own_s + gpus * CALLS_PER_GPU * real_call_us / 1e6
    return {
        "gpus": gpus,
        "poll_ms": poll_s * 1e3,
        "bare_fake_calls_ms": bare_s * 1e3,
        "labq_own_ms": own_s * 1e3,
        "labq_own_us_per_gpu": own_s / gpus * 1e6,
        "real_nvml_call_us": real_call_us,
        "estimated_real_poll_ms": est_real_s * 1e3,
        "estimated_core_pct_at_1hz": est_real_s * 100,
        "measured_core_pct_at_1hz_with_fake": poll_s * 100,
    }


def freshness(seconds: float) -> dict[str, float]:
    from scheduler.client import Client

    root = Path(tempfile.mkdtemp(prefix="lqbench", dir="/tmp"))
    state, sock = root / "state", root / "labq.sock"
    state.mkdir()
    (state / "labq.yaml").write_text("monitor_interval_s: 1\n")
    env = dict(os.environ, LABQ_SOCKET=str(sock), LABQ_STATE_DIR=str(state), PYTHONPATH=str(REPO))
    labq = [sys.executable, "-m", "scheduler.cli"]
    subprocess.run([*labq, "up", "--gpus", "2", "--state-dir", str(state)], env=env, check=True)
    try:
        c = Client(sock)
        c.submit({"command": [sys.executable, "-c", "while True: pass"], "gpus": 1, "workdir": "/tmp"})
        ages: list[float] = []
        seen: set[float] = set()
        end = time.time() + seconds
        while time.time() < end:
            for n in c.nodes()["nodes"]:
                t = n.get("sampled_at")
                if t and t not in seen:
                    seen.add(t)
                    ages.append(time.time() - t)
            time.sleep(0.05)
        # The first read of each new sample, 50 ms polling: +25 ms on average.
        return {
            "samples": len(ages),
            "median_s": statistics.median(ages),
            "p95_s": pct(ages, 0.95),
            "max_s": max(ages),
        }
    finally:
        subprocess.run([*labq, "down", "--kill"], env=env, check=False, capture_output=True)
        from scheduler import raycluster

        raycluster.stop_embedded(state, timeout=5)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--freshness-s", type=float, default=20.0)
    args = ap.parse_args()
    cost = cpu_cost(args.gpus, args.samples)
    print(f"monitor CPU cost, {args.gpus} GPUs, {args.samples} polls (process CPU time):")
    for k, v in cost.items():
        print(f"  {k:<38} {v:10.3f}")
    fresh = freshness(args.freshness_s)
    print(f"freshness (NVML sample -> visible through the API), 1 s interval, {args.freshness_s:g} s:")
    for k, v in fresh.items():
        print(f"  {k:<38} {v:10.3f}")


if __name__ == "__main__":
    main()
