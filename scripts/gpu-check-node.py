"""labq's node side on a real NVIDIA GPU, where Ray is not installed.

`scripts/gpu-check.sh` checks the whole product (daemon, Ray, NVML) on a machine
with real GPUs and a labq install. A machine lent for a few minutes with no network
(no Ray, no pip) can still check the parts that touch the GPU, as the daemon uses
them on a node:

1. `scheduler.gpu.detect`: what labq's inventory says (count, names, driver);
2. `scheduler.runner.run`: a real GPU job (PyTorch matmul if there, else a CUDA
   context) started by labq's runner as a node would run it: its own process tree
   and cgroup, `CUDA_VISIBLE_DEVICES` from labq's GPU choice, the time limit;
3. `scheduler.monitor.GpuSampler` sampling NVML while it runs, next to `nvidia-smi`
   at the same moment: utilization, memory, temperature, power, and the job's
   processes on the GPU;
4. the job stopped as `labq cancel` would (SIGTERM, grace, then the tree killed), and
   nothing of it left on the GPU.

    python3 scripts/gpu-check-node.py [--seconds 30]      # as root; prints a report
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scheduler.gpu import detect  # noqa: E402
from scheduler.monitor import GpuSampler  # noqa: E402
from scheduler.runner import Launch, run  # noqa: E402

TORCH_JOB = """import torch, time, os
print("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"), "torch sees", torch.cuda.device_count(), flush=True)
x = torch.randn(8192, 8192, device="cuda"); end = time.time() + {seconds}
while time.time() < end:
    y = x @ x
torch.cuda.synchronize(); print("done", torch.cuda.get_device_name(0), flush=True)
"""
CTX_JOB = """import ctypes, time
cuda = ctypes.CDLL("libcuda.so.1"); cuda.cuInit(0); ctx = ctypes.c_void_p(); dev = ctypes.c_int()
cuda.cuDeviceGet(ctypes.byref(dev), 0); cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev)
print("holding a CUDA context (no PyTorch)", flush=True); time.sleep({seconds})
"""


def smi(*query: str) -> str:
    if not shutil.which("nvidia-smi"):
        return "(no nvidia-smi)"
    out = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=30)
    return (out.stdout or out.stderr).strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    args = ap.parse_args()
    import pynvml

    inv = detect()
    print("== labq's inventory (scheduler.gpu.detect)")
    print(json.dumps({"count": inv.count, "names": inv.names, "uuids": inv.uuids, "driver": inv.driver,
                      "why_none": inv.why_none}, indent=1))  # fmt: skip
    print("== nvidia-smi -L\n" + smi("-L"))
    if not inv.count:
        sys.exit("no GPU: nothing more to check")

    try:
        import torch  # noqa: F401

        code = TORCH_JOB.format(seconds=args.seconds)
        print(f"== the job: PyTorch matmul for {args.seconds} s on GPU 0, through labq's runner")
    except ImportError:
        code = CTX_JOB.format(seconds=args.seconds)
        print(f"== the job: a CUDA context held for {args.seconds} s (no PyTorch)")
    job_dir = Path("/tmp/labq-gpucheck-jobs")
    log: list[bytes] = []
    stop: dict[str, Any] = {}
    result: dict[str, Any] = {}
    pid: list[int] = []

    def report(info: Any, offset: int, data: bytes, res: Any, err: Any) -> Any:
        if info:
            pid.append(int(info["pid"]))
            print(f"   started: pid {info['pid']}, GPUs {info['gpu_ids']}, host {info['host']}", flush=True)
        if data:
            log.append(data)
        return stop or None

    launch = Launch(
        job_id=1, attempt=1, argv=[sys.executable, "-c", code], workdir="/tmp",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", "")},
        uid=os.geteuid(), time_limit=args.seconds + 60, grace=5, log_limit=1 << 20, user="root",
        namespace="gpucheck", gpu_indices=(0,), job_dir=str(job_dir),
    )  # fmt: skip
    t = threading.Thread(target=lambda: result.update(run(launch, ["0"], "node-0", report)), daemon=True)
    t0 = time.monotonic()
    t.start()
    while not pid and time.monotonic() - t0 < 60:
        time.sleep(0.2)
    sampler = GpuSampler(pynvml)
    samples = []
    for _ in range(min(12, max(3, args.seconds // 3))):
        time.sleep(2)
        s = sampler.sample()[0]
        samples.append(s)
        procs = [(p.pid, (p.used_memory or 0) >> 20, p.sm_util) for p in s.processes]  # (pid, MiB, SM %)
        mib = f"{(s.memory_used or 0) >> 20}/{(s.memory_total or 0) >> 20} MiB"
        print(f"   labq sample: util {s.util_gpu}% mem {mib} temp {s.temperature_c}C "
              f"power {s.power_mw} mW / {s.power_limit_mw} healthy={s.healthy} {s.problem!r} procs={procs}", flush=True)  # fmt: skip
    print("== nvidia-smi, at the same moment")
    print(smi("--query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw,power.limit", "--format=csv"))
    print(smi("--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv"))
    job_pids = set()
    for p in pid:
        try:
            import psutil

            job_pids |= {p, *(c.pid for c in psutil.Process(p).children(recursive=True))}
        except Exception:  # noqa: BLE001
            job_pids.add(p)
    seen = {pp.pid for s in samples for pp in s.processes}
    print(f"== the job's processes on the GPU as NVML saw them: {sorted(seen & job_pids)} (job tree {sorted(job_pids)})")
    print("== cancel, as labq does: SIGTERM, 5 s grace, then the tree killed")
    stop.update({"outcome": "cancelled", "reason": "gpu check", "grace": 5})
    t.join(60)
    print(f"   result: {result}")
    print("   log:", b"".join(log).decode(errors="replace").strip()[-600:])
    time.sleep(2)
    left = [p.pid for p in sampler.sample()[0].processes]
    print(f"== processes on GPU 0 after the cancel: {left} (the job's: {sorted(set(left) & job_pids)})")
    util = [s.util_gpu for s in samples if s.util_gpu is not None]
    print(f"== summary: {inv.count} GPU(s) {inv.names[0]!r}, driver {inv.driver}; job seen on the GPU: "
          f"{bool(seen & job_pids)}; peak util {max(util) if util else None}%; outcome {result.get('outcome')}; "
          f"left on the GPU: {sorted(set(left) & job_pids)}")  # fmt: skip
    sampler.close()


if __name__ == "__main__":
    main()
