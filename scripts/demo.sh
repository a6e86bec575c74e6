#!/usr/bin/env bash
# The README's first command runs this: start labq on the embedded Ray, submit the
# examples as a small workload, wait for it, and show what happened.
set -euo pipefail
cd "$(dirname "$0")/.."
export LABQ_STATE_DIR="$PWD/.demo/state" LABQ_SOCKET="$PWD/.demo/labq.sock"
mkdir -p "$LABQ_STATE_DIR"
cp configs/labq.yaml "$LABQ_STATE_DIR/labq.yaml"
sed -i "s#^quotas_file:.*#quotas_file: $PWD/configs/quotas.yaml#" "$LABQ_STATE_DIR/labq.yaml"

real_gpus=$(python -c 'from scheduler.gpu import detect; print(detect().count)')
if labq queue >/dev/null 2>&1; then
  echo "labq daemon already running"
elif [ "$real_gpus" -gt 0 ]; then
  labq up
else
  echo "no NVIDIA GPU here: declaring 4 simulated GPUs"
  labq up --gpus 4
fi

ids=()
submit() { ids+=("$(labq submit --json "$@" | python -c 'import json,sys; print(json.load(sys.stdin)["id"])')"); }
submit --name bert-ft --gpus 2 --time 10m -- python examples/train.py --epochs 6 --lr 3e-4
submit --name resnet --gpus 1 --time 10m -- python examples/train.py --epochs 4
submit --name sweep-a --gpus 1 --time 5m -- python examples/train.py --epochs 3 --lr 1e-3
submit --name sweep-b --gpus 1 --time 5m -- python examples/train.py --epochs 3 --lr 1e-2
submit --name big --gpus 4 --time 10m -- python examples/train.py --epochs 2
submit examples/job.yaml

echo; echo "== queue right after submitting =="
labq queue
echo; echo "== waiting for the workload to finish =="
while labq queue --json | python -c 'import json,sys; sys.exit(0 if json.load(sys.stdin) else 1)'; do sleep 2; done
echo; echo "== all jobs =="
labq queue --all
echo; echo "== log of job ${ids[0]} =="
labq logs "${ids[0]}"
echo; echo "== GPUs =="
labq gpus
echo
echo "The daemon keeps running. To use it from this shell (labq lives in the project's .venv):"
echo "  export PATH=\"$(dirname "$(command -v labq)"):\$PATH\" LABQ_SOCKET=$LABQ_SOCKET"
echo "  labq queue   |   labq tui   |   stop it: make demo-down"
