"""`labq simulate`: replay a job trace through labq's policy and the baselines.

No daemon needed; the policies run in this process (simulator.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from scheduler.console import UsageError, die, say


def cmd_simulate(args: argparse.Namespace) -> int:
    """Replay a trace through labq's policy and the baselines; no daemon needed."""
    import json as _json

    from scheduler import simplot
    from scheduler import simulator as sim
    from scheduler.paths import default_state_dir

    try:
        if args.from_history:
            state = Path(args.state_dir) if args.state_dir else default_state_dir()
            jobs = sim.history_trace(state / "labq.db")
        elif args.trace:
            jobs = sim.load_trace(Path(args.trace), args.limit)
        else:
            raise UsageError("give a trace CSV, or --from-history")
        tenants = {j.tenant for j in jobs}
        quotas = None
        if args.shares:
            shares = sim.shares_from_sizes(Path(args.shares), tenants)
        elif args.quotas:
            import yaml

            from scheduler.quota import QuotaError, quota_book_from_dict

            try:
                book = quota_book_from_dict(yaml.safe_load(Path(args.quotas).read_text()))
            except (OSError, yaml.YAMLError, QuotaError) as e:
                raise sim.TraceError(f"{args.quotas}: {e}") from None
            shares = {t: book.for_user(t).shares for t in tenants}
            quotas = book
        else:
            shares = dict.fromkeys(tenants, 1.0)
        names = list(sim.POLICIES) if args.policy == "all" else args.policy.split(",")
        for n in names:
            if n not in sim.POLICIES:
                raise UsageError(f"unknown policy {n!r} (known: {', '.join(sim.POLICIES)}, all)")
        types = "" if args.nodes.isdigit() else args.nodes
        count = int(args.nodes) if args.nodes.isdigit() else 0
        if (not types and count < 1) or args.gpus_per_node < 1:
            raise UsageError("--nodes and --gpus-per-node must be >= 1 (--nodes may also be N:TYPE,N:TYPE)")
        results: dict[str, Any] = {}
        for n in names:
            t0 = time.perf_counter()
            r = sim.replay(
                jobs, count, args.gpus_per_node, n, shares, alone=not args.no_rho, quotas=quotas,
                scavengers=frozenset(t for t in (args.preemptible or "").split(",") if t), types=types,
            )  # fmt: skip
            r["simulate_s"] = time.perf_counter() - t0
            r["jobs_per_s"] = len(jobs) / r["simulate_s"] if r["simulate_s"] > 0 else 0.0
            results[n] = r
            if not args.quiet:
                say(_sim_line(r), file=sys.stderr if args.json == "-" else sys.stdout, flush=True)
    except sim.TraceError as e:
        die(str(e))
    out: Any = results[names[0]] if len(names) == 1 else {"policies": results}
    if args.json:
        text = _json.dumps(out, indent=2, sort_keys=True)
        if args.json == "-":
            sys.stdout.write(text + "\n")  # JSON (ensure_ascii): controls are escaped already
        else:
            Path(args.json).write_text(text + "\n")
    if args.plot:
        src = "daemon history" if args.from_history else Path(args.trace).name
        simplot.plot(
            results, Path(args.plot), f"{src}: {len(jobs)} jobs on {args.nodes}x{args.gpus_per_node} GPUs"
        )
    return 0


def _sim_line(r: dict[str, Any]) -> str:
    rho = "n/a" if r.get("max_rho") is None else f"{r['max_rho']:.2f}"
    jain = "n/a" if r.get("jain_index") is None else f"{r['jain_index']:.3f}"
    return (
        f"{r['policy']:<20} mean JCT {r['mean_jct_s'] / 3600:7.2f} h  median {r['median_jct_s'] / 3600:6.2f} h  "
        f"p99 {r['p99_jct_s'] / 3600:7.1f} h  wait {r['mean_wait_s'] / 3600:6.2f} h  "
        f"util {r['utilization']:.3f}  max rho {rho}  jain {jain}  "
        f"preempted {r['preempted_gpu_hours']:.1f} GPU-h  ({r['simulate_s']:.1f} s, {r['jobs_per_s']:.0f} jobs/s)"
    )
