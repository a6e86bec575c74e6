"""One tenant's jobs in one replay: when each arrived, started, was preempted and ended.

    python benchmarks/tenant_jobs.py CASE TENANT [--policy fairshare]

How a max-rho outlier of benchmarks/bench_fair.py was found (docs/benchmarks.md,
issue 19): the tenant's guarantee, each job's wait, and what the pool had free (the
largest free block on one node) the moment the job arrived. The replay is the same
as bench_fair's (same case, same shares, same policy config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_fair import CASES  # noqa: E402
from scheduler import simulator as sim  # noqa: E402
from scheduler.simrecords import SimJob  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("tenant")
    ap.add_argument("--policy", default="fairshare")
    args = ap.parse_args()
    jobs, shares, nodes = CASES[args.case](None)
    mine = {j.id for j in jobs if j.tenant == args.tenant}
    if not mine:
        sys.exit(f"tenant {args.tenant!r} has no jobs in {args.case}")
    total = nodes * 8
    quotas = sim.quotas_from_shares(shares, total)
    cfg = sim.policy_config(args.policy)
    s = sim.Simulation(jobs, sim.make_nodes(nodes, 8), args.policy, quotas, cfg, shares, cfg.grace_period)
    total_shares = sum(shares.get(t, 0.0) for t in {j.tenant for j in jobs}) or 1.0
    print(
        f"{args.tenant}: share {shares.get(args.tenant, 0.0):g} of {total_shares:g} "
        f"({total * shares.get(args.tenant, 0.0) / total_shares:.1f} of {total} GPUs), guaranteed "
        f"{quotas.for_user(args.tenant).guaranteed_gpus} GPUs; {len(mine)} jobs"
    )
    seen: dict[int, int] = {}
    enqueue = s._enqueue

    def spy(j: SimJob) -> None:
        # The moment it arrives: the largest block free on one node (before this pass).
        if j.id in mine and j.id not in seen:
            seen[j.id] = s.cluster.largest_free()
        enqueue(j)

    s._enqueue = spy  # type: ignore[method-assign]
    s.run()
    print(
        f"{'job':>7} {'submit s':>11} {'gpus':>4} {'run s':>8} {'free block':>10} {'wait s':>9} {'JCT s':>9} preempted"
    )
    for jid in sorted(mine):
        j = s.sim_jobs[jid]
        t = j.trace
        wait = (j.first_start or 0.0) - t.submit
        jct = (j.end or 0.0) - t.submit
        print(
            f"{jid:7d} {t.submit:11.1f} {t.gpus:4d} {t.duration:8.0f} {seen.get(jid, -1):10d} {wait:9.1f} {jct:9.1f} {j.preemptions}"
        )


if __name__ == "__main__":
    main()
