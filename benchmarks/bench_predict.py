"""Learned runtimes in the replay (issue 19): fair share with and without predictions,
next to oracle SJF and FIFO from the same run, and the predictions' own error.

    python benchmarks/bench_predict.py [--limit 20000] [--nodes 64 80] [--compress 1.0 1.25]

For each pool size and arrival compression: the first `--limit` jobs of the 2-month
Philly trace (arrival times divided by the compression factor), each policy's mean
JCT, mean wait and max rho (a tenant's JCT against its JCT alone on its share), and
how long the replay took. Then the predictions' error on the trace itself: each job,
in the order they would end if each started on arrival, predicted from
those that finished before it, per (tenant, GPU count) as the simulator does.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_sim import philly  # noqa: E402
from scheduler import simulator as sim  # noqa: E402
from scheduler.policy import PolicyConfig  # noqa: E402
from scheduler.predict import accuracy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20000)
    ap.add_argument("--nodes", type=int, nargs="+", default=[64, 80])
    ap.add_argument("--compress", type=float, nargs="+", default=[1.0])
    ap.add_argument("--no-rho", action="store_true")
    args = ap.parse_args()
    base, shares = philly(args.limit)

    ends = sorted(base, key=lambda j: j.submit + j.duration)
    acc = accuracy((j.tenant, f"gpus:{j.gpus}", j.duration) for j in ends)
    print(
        f"predictions on the trace ({acc.jobs} jobs): {acc.predicted} predicted, MAE {acc.mae_s / 3600:.2f} h, "
        f"median error {acc.median_ae_s / 60:.1f} min, {acc.coverage:.0%} within p90; "
        f"{acc.confident} confident, {acc.confident_coverage:.0%} of those within p90"
    )
    for c in args.compress:
        jobs = [replace(j, submit=j.submit / c) for j in base] if c != 1.0 else base
        for nodes in args.nodes:
            for name, policy, predict, hint in (
                ("FIFO", "fifo", False, False),
                ("SJF (oracle)", "sjf", False, False),
                ("fair share, oldest first", "fairshare", False, False),
                ("+ learned runtimes", "fairshare", True, False),
                ("+ shortest expected first (shortest_first)", "fairshare", True, True),
            ):
                t0 = time.perf_counter()
                cfg = PolicyConfig(duration_hint=hint)
                r = sim.replay(jobs, nodes, 8, policy, shares, base=cfg, alone=not args.no_rho, predict=predict)
                dt = time.perf_counter() - t0
                rho = r.get("max_rho")
                print(
                    f"{nodes * 8} GPUs, arrivals x{c:g}: {name:30s} mean JCT {r['mean_jct_s'] / 3600:6.2f} h  "
                    f"wait {r['mean_wait_s'] / 3600:6.2f} h  max rho {rho if rho is None else round(rho, 2)}  "
                    f"({dt:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
