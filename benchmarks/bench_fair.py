"""Fair share under load, on traces it was not tuned on (issue 19, part 2).

    python benchmarks/bench_fair.py [--cases all] [--limit N] [--policies fifo,sjf,fairshare]

Cases: the 2-month Philly trace on 640 and 512 GPUs; its arrivals compressed 1.25x and
1.5x on 640; its tenants renamed with random shares on 640; synthetic Zipf-active
users on 256 GPUs, equal and random shares (benchmarks/stress_traces.py). For each
case and policy: mean JCT, mean wait, max rho (a tenant's mean JCT over its mean JCT
replayed alone on a slice the size of its share), the replay's jobs/s, and fair
share's mean JCT as a multiple of oracle SJF's from the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import stress_traces as st  # noqa: E402
from benchmarks.bench_sim import philly  # noqa: E402
from scheduler import simulator as sim  # noqa: E402
from scheduler.policy_types import PolicyConfig  # noqa: E402
from scheduler.traces import TraceJob  # noqa: E402

Case = Callable[[int | None], tuple[list[TraceJob], dict[str, float], int]]


def _case(compress: float, nodes: int) -> Case:
    def make(limit: int | None) -> tuple[list[TraceJob], dict[str, float], int]:
        jobs, shares = philly(limit)
        return (st.compressed(jobs, compress) if compress != 1.0 else jobs), shares, nodes

    return make


def _renamed(limit: int | None) -> tuple[list[TraceJob], dict[str, float], int]:
    jobs, _ = philly(limit)
    jobs, shares = st.renamed(jobs, seed=1)
    return jobs, shares, 80


def _zipf(random_shares: bool, seed: int) -> Case:
    def make(limit: int | None) -> tuple[list[TraceJob], dict[str, float], int]:
        jobs, shares = st.zipf(n=limit or 6000, seed=seed, random_shares=random_shares)
        return jobs, shares, 32

    return make


CASES: dict[str, Case] = {
    "philly-640": _case(1.0, 80),
    "philly-512": _case(1.0, 64),
    "philly-640-x1.25": _case(1.25, 80),
    "philly-640-x1.5": _case(1.5, 80),
    "philly-640-renamed": _renamed,
    "zipf-256": _zipf(False, 7),
    "zipf-256-shares": _zipf(True, 11),
}


def run_case(
    name: str, policies: list[str], limit: int | None, rho: bool = True, base: PolicyConfig | None = None
) -> dict[str, dict[str, float]]:
    jobs, shares, nodes = CASES[name](limit)
    out: dict[str, dict[str, float]] = {}
    for pol in policies:
        t0 = time.perf_counter()
        r = sim.replay(jobs, nodes, 8, pol, shares, base=base, alone=False)
        dt = time.perf_counter() - t0
        cfg = sim.policy_config(pol, base)
        alone = sim.alone_jcts(jobs, nodes, 8, pol, shares, cfg, 7 * 86400.0) if rho else {}
        per = r["per_tenant"]
        rhos = {t: per[t]["mean_jct_s"] / alone[t] for t in per if alone.get(t)} or {"(not measured)": float("nan")}
        worst = max(rhos, key=lambda t: rhos[t])
        out[pol] = {
            "mean_jct_h": r["mean_jct_s"] / 3600,
            "mean_wait_h": r["mean_wait_s"] / 3600,
            "max_rho": rhos[worst],
            "worst_tenant": worst,  # type: ignore[dict-item]
            "replay_s": dt,
            "jobs_per_s": len(jobs) / dt,
            "preempted_gpu_h": r.get("preempted_gpu_hours", 0.0),
        }
        print(
            f"{name:20s} {pol:10s} {len(jobs):6d} jobs on {nodes * 8} GPUs: mean JCT {r['mean_jct_s'] / 3600:6.2f} h  "
            f"wait {r['mean_wait_s'] / 3600:6.2f} h  max rho {rhos[worst]:5.2f} ({worst})  "
            f"replay {dt:5.0f} s = {len(jobs) / dt:6.0f} jobs/s",
            flush=True,
        )
    if "sjf" in out and "fairshare" in out:
        print(f"{name:20s} fair share / oracle SJF mean JCT: {out['fairshare']['mean_jct_h'] / out['sjf']['mean_jct_h']:.2f}x")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="all")
    ap.add_argument("--policies", default="fifo,sjf,fairshare")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--no-rho", action="store_true", help="skip the replays alone (speed only)")
    ap.add_argument(
        "--shortest-first",
        action="store_true",
        help="each researcher's own queue shortest expected run first (PolicyConfig.duration_hint)",
    )
    ap.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds a preempted job has to stop (PolicyConfig.grace_period; default 30)",
    )
    args = ap.parse_args()
    names = list(CASES) if args.cases == "all" else args.cases.split(",")
    base = PolicyConfig(duration_hint=True) if args.shortest_first else None
    if args.grace is not None:
        base = replace(base or PolicyConfig(), grace_period=args.grace)
    results = {n: run_case(n, args.policies.split(","), args.limit, not args.no_rho, base) for n in names}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
