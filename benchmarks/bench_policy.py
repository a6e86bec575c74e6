"""One scheduling pass of the pure policy, at team and at data-centre sizes.

    python benchmarks/bench_policy.py [--repeats 15] [--sizes 1000,10000,100000]

The headline case: 10,000 pending jobs, 1,000 GPUs on 125 nodes (8 each), 100
researchers, cluster 90% busy. Prints median and p99 per size and the growth
exponent between sizes (1.0 = linear; n log n shows as slightly above 1).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scheduler.policy import NodeInfo, PendingJob, PolicyConfig, RunningJob, Snapshot, schedule  # noqa: E402
from scheduler.quota import QuotaBook  # noqa: E402

NOW = 1_000_000.0


def make_snapshot(
    pending: int, nodes: int = 125, gpus: int = 8, users: int = 100, seed: int = 0, config: PolicyConfig | None = None
) -> Snapshot:
    rng = random.Random(seed)
    names = [f"user{i:03d}" for i in range(users)]
    ns = tuple(NodeInfo(id=f"node{i:03d}", gpus=gpus) for i in range(nodes))
    running: list[RunningJob] = []
    jid = 0
    for n in ns:
        free = gpus
        while free > 1:  # ~90% busy, fragmented the way a real cluster is
            g = min(free - 1 if rng.random() < 0.2 else free, rng.choice([1, 1, 1, 2, 4]))
            if g <= 0:
                break
            jid += 1
            running.append(
                RunningJob(
                    jid,
                    rng.choice(names),
                    g,
                    n.id,
                    NOW - rng.uniform(0, 86400),
                    time_limit=rng.choice([3600.0, 4 * 3600.0, 86400.0, None]),
                )
            )
            free -= g
    jobs = []
    for _ in range(pending):
        jid += 1
        jobs.append(
            PendingJob(
                jid,
                rng.choice(names),
                rng.choice([1, 1, 1, 1, 2, 4, 8]),
                NOW - rng.uniform(0, 7 * 86400),
                priority=rng.randint(-1, 1),
                time_limit=rng.choice([3600.0, 4 * 3600.0, None]),
            )
        )
    people = {
        u: {"shares": rng.choice([1, 1, 2]), "guaranteed_gpus": rng.choice([0, 0, 0, 4])} for u in names
    }
    usage = {u: rng.uniform(0, 500 * 3600) for u in names}
    return Snapshot(
        NOW, tuple(jobs), tuple(running), ns, usage, {}, QuotaBook(researchers=people), config or PolicyConfig()
    )


def measure(n: int, repeats: int, config: PolicyConfig | None = None) -> list[float]:
    snap = make_snapshot(n, config=config)
    schedule(snap)  # warm caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        schedule(snap)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument(
        "--shortest-first", action="store_true", help="each researcher's queue shortest expected run first"
    )
    args = ap.parse_args()
    config = PolicyConfig(duration_hint=True) if args.shortest_first else None
    sizes = [int(s) for s in args.sizes.split(",")]
    print("one pass: 1,000 GPUs on 125 nodes, 100 researchers, ~90% busy")
    print(f"{'pending':>9}{'median ms':>12}{'p99 ms':>10}{'growth exp':>12}")
    prev: tuple[int, float] | None = None
    for n in sizes:
        ts = measure(n, args.repeats if n <= 10000 else max(3, args.repeats // 3), config)
        med = statistics.median(ts)
        p99 = sorted(ts)[min(len(ts) - 1, int(0.99 * len(ts)))]
        exp = "" if prev is None else f"{math.log(med / prev[1]) / math.log(n / prev[0]):.2f}"
        print(f"{n:>9}{med * 1000:>12.1f}{p99 * 1000:>10.1f}{exp:>12}")
        prev = (n, med)


if __name__ == "__main__":
    main()
