#!/usr/bin/env bash
# Check labq's NVML path on a machine with real NVIDIA GPUs, in a few minutes:
# starts labq on the real GPUs (no --gpus), runs a short GPU job (PyTorch if it is
# installed, else a process that only holds the GPU), and prints what labq saw next
# to what nvidia-smi says at the same moment. Stops everything it started.
#
#   bash scripts/gpu-check.sh            # uses .venv (made by `make` if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/labq ] || make .venv/.installed-stamp >/dev/null
PY=.venv/bin/python
export LABQ_STATE_DIR=$(mktemp -d /tmp/labq-gpucheck.XXXX)
export LABQ_SOCKET=$LABQ_STATE_DIR/labq.sock
printf 'monitor_interval_s: 1\nidle_window_s: 60\n' >"$LABQ_STATE_DIR/labq.yaml"
trap '.venv/bin/labq down --kill >/dev/null 2>&1 || true' EXIT

echo "== nvidia-smi (before)"; nvidia-smi -L
.venv/bin/labq up
if $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  JOB=(-- "$PWD/$PY" -c 'import torch,time
x=torch.randn(8192,8192,device="cuda"); end=time.time()+40
while time.time()<end: y=x@x
torch.cuda.synchronize(); print("done", torch.cuda.get_device_name(0))')
  echo "== GPU job: PyTorch matmul for 40 s"
else
  JOB=(-- "$PWD/$PY" -c 'import ctypes,time
cuda=ctypes.CDLL("libcuda.so.1"); cuda.cuInit(0); ctx=ctypes.c_void_p()
dev=ctypes.c_int(); cuda.cuDeviceGet(ctypes.byref(dev),0); cuda.cuCtxCreate_v2(ctypes.byref(ctx),0,dev)
print("holding a CUDA context (no PyTorch here)"); time.sleep(40)')
  echo "== GPU job: no PyTorch; a process that opens a CUDA context and sleeps (0% util expected)"
fi
ID=$(.venv/bin/labq submit --json --gpus 1 --name gpu-check "${JOB[@]}" | $PY -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 60); do
  state=$(.venv/bin/labq show --json "$ID" | $PY -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  [ "$state" = RUNNING ] && break; sleep 1
done
sleep 15  # let utilization build up and a few samples arrive
echo "== labq gpus"; .venv/bin/labq gpus
echo "== nvidia-smi, same moment"
nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw,power.limit --format=csv
nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv
echo "== labq's view of job $ID"; .venv/bin/labq show "$ID" | sed -n 1,12p
.venv/bin/labq gpus --json >"$LABQ_STATE_DIR/gpus.json"
$PY - "$LABQ_STATE_DIR/gpus.json" <<'PYEOF'
import json, sys
for n in json.load(open(sys.argv[1]))["nodes"]:
    print(f"node {n['name']}: simulated={n['simulated']} ray_gpus={n['gpus']} "
          f"nvml_gpus={n['nvml_gpus']} note={n['note']!r}")
    for g in n["gpu_list"]:
        procs = [(p["pid"], p["job_id"], p["sm_util"], p["used_memory"]) for p in g["processes"]]
        print(f"  gpu {g['index']} {g['uuid']} util={g['util_gpu']}% mem={g['memory_used']} "
              f"temp={g['temperature_c']} power_mw={g['power_mw']} job={g['job_id']} procs={procs}")
PYEOF
.venv/bin/labq cancel "$ID" >/dev/null 2>&1 || true
