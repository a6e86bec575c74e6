"""Fairness and speed benchmark: the 2-month Philly trace through every policy.

    python benchmarks/bench_sim.py [--nodes 80 64] [--policies all] [--out docs/]

For each pool size: replays the trace under each policy (timed alone: that is the
simulator-speed number), then each tenant alone on a slice the size of its share
(for rho), prints one line per policy and writes docs/sim-<gpus>.json and .png.
Tenants are the Philly VCs, with shares proportional to their Helios sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scheduler import simplot  # noqa: E402
from scheduler import simulator as sim  # noqa: E402
from scheduler.simcli import _sim_line  # noqa: E402

TRACES = REPO.parent / "shared" / "traces"
TRACE = TRACES / "philly_pollux_2017-10-01_to_2017-12-01_normalized.csv"
SIZES = TRACES / "helios_philly_vc_sizes.csv"


def philly(limit: int | None = None, path: Path = TRACE) -> tuple[list[sim.TraceJob], dict[str, float]]:
    """The Philly trace (its first `limit` jobs) and its tenants' shares from the Helios VC sizes."""
    jobs = sim.load_trace(path, limit=limit)
    return jobs, sim.shares_from_sizes(SIZES, {j.tenant for j in jobs})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, nargs="+", default=[80, 64])
    ap.add_argument("--policies", default="all")
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--out", default=str(REPO / "docs"))
    args = ap.parse_args()
    jobs, shares = philly(path=Path(args.trace))
    names = list(sim.POLICIES) if args.policies == "all" else args.policies.split(",")
    for nodes in args.nodes:
        results = {}
        print(f"== {len(jobs)} jobs on {nodes}x8 = {nodes * 8} GPUs")
        for name in names:
            t0 = time.perf_counter()
            r = sim.replay(jobs, nodes, 8, name, shares, alone=False)
            r["simulate_s"] = time.perf_counter() - t0
            r["jobs_per_s"] = len(jobs) / r["simulate_s"]
            t1 = time.perf_counter()
            cfg = sim.policy_config(name)
            alone = sim.alone_jcts(jobs, nodes, 8, name, shares, cfg, 7 * 86400.0)
            per = r["per_tenant"]
            rhos = {t: per[t]["mean_jct_s"] / alone[t] for t in per if alone.get(t)}
            for t in per:
                per[t]["rho"] = rhos.get(t)
                per[t]["alone_mean_jct_s"] = alone.get(t)
            r["max_rho"] = max(rhos.values())
            r["rho_p50"] = sorted(rhos.values())[len(rhos) // 2]
            r["jain_index"] = sim.jain([min(1.0, 1 / x) for x in rhos.values()])
            r["alone_replays_s"] = time.perf_counter() - t1
            results[name] = r
            print(_sim_line(r), flush=True)
        out = Path(args.out)
        (out / f"sim-{nodes * 8}.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        simplot.plot(
            results, out / f"sim-{nodes * 8}.png", f"Philly 2 months: {len(jobs)} jobs on {nodes * 8} GPUs"
        )
        base = {k: results[k]["mean_jct_s"] for k in ("fifo", "sjf", "fairshare") if k in results}
        if len(base) == 3:
            print(
                f"fairshare mean JCT: {base['fifo'] / base['fairshare']:.2f}x better than FIFO, "
                f"{base['fairshare'] / base['sjf']:.2f}x oracle SJF's; FIFO/SJF = {base['fifo'] / base['sjf']:.2f}"
            )


if __name__ == "__main__":
    main()
