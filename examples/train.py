"""A tiny PyTorch-style training loop for trying labq. Runs on a GPU, a CPU, or without torch.

It prints the GPUs labq gave it, trains a small linear model, and checkpoints when
labq asks it to stop (SIGTERM): `LABQ_PREEMPT_DEADLINE` names a file holding the Unix
time of the SIGKILL that follows, so a real script knows how long it has left.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time

stop_requested = False


def on_sigterm(signum: int, frame: object) -> None:
    global stop_requested
    stop_requested = True


def deadline() -> str:
    path = os.environ.get("LABQ_PREEMPT_DEADLINE", "")
    try:
        with open(path) as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=32, help="said in the log (a sweep's second axis)")
    ap.add_argument("--step-seconds", type=float, default=0.5)
    ap.add_argument("--checkpoint", default="")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)

    print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}", flush=True)
    print(
        f"labq job {os.environ.get('LABQ_JOB_ID', '-')} attempt {os.environ.get('LABQ_ATTEMPT', '-')}"
        f" lr {args.lr:g} batch size {args.batch_size}",
        flush=True,
    )
    try:
        import torch
    except ImportError:
        torch = None

    start_epoch = 0
    if args.checkpoint and os.path.exists(args.checkpoint):
        with open(args.checkpoint) as f:
            start_epoch = json.load(f)["epoch"]
        print(f"resuming from epoch {start_epoch}", flush=True)

    rng = random.Random(0)
    true_w, w = 3.0, 0.0
    if torch is not None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"torch {torch.__version__} on {device}", flush=True)
        x = torch.randn(4096, 1, device=device)
        y = true_w * x + 0.1 * torch.randn_like(x)
        model = torch.nn.Linear(1, 1).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr * 100)
    for epoch in range(start_epoch, args.epochs):
        if stop_requested:
            print(f"SIGTERM: checkpointing at epoch {epoch} (SIGKILL at {deadline()})", flush=True)
            if args.checkpoint:
                with open(args.checkpoint, "w") as f:
                    json.dump({"epoch": epoch}, f)
            return 143
        if torch is not None:
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = float(loss)
        else:
            xs = [rng.gauss(0, 1) for _ in range(256)]
            grad = sum(2 * (w * xi - true_w * xi) * xi for xi in xs) / len(xs)
            w -= args.lr * 100 * grad
            value = (w - true_w) ** 2
        print(f"epoch {epoch + 1}/{args.epochs} loss {value:.4f}", flush=True)
        time.sleep(args.step_seconds)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
