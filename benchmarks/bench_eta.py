"""ETA error on the replayed Philly history, without and with learned runtimes (issue 19).

    python benchmarks/bench_eta.py [--limit 20000] [--nodes 64 80] [--every 10]

Every `--every`th job that has to wait when it arrives gets an explained pass at that
moment (the daemon's own `schedule()`, ETAs for every waiting job); its ETA is then
compared with when it really started. Without predictions every running job counts
until its limit (the trace has none: the 24 h default); with them, until its predicted
end. Prints the median, mean and p90 absolute error and how many started later.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_sim import philly  # noqa: E402
from scheduler import simulator as sim  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20000)
    ap.add_argument("--nodes", type=int, nargs="+", default=[64, 80])
    ap.add_argument("--every", type=int, default=10)
    args = ap.parse_args()
    jobs, shares = philly(args.limit)
    for nodes in args.nodes:
        for predict in (False, True):
            cfg = sim.policy_config("fairshare")
            s = sim.Simulation(
                jobs, sim.make_nodes(nodes, 8), "fairshare", sim.quotas_from_shares(shares, nodes * 8), cfg,
                shares, cfg.grace_period, 7 * 86400.0, predict, eta_every=args.every,
            )  # fmt: skip
            s.run()
            e = s.eta_errors()
            label = "learned runtimes" if predict else "limits only     "
            if not e["samples"]:
                print(f"{nodes * 8} GPUs, {label}: no job waited")
                continue
            print(
                f"{nodes * 8} GPUs, {label}: {e['samples']:5.0f} ETAs, error median {e['median_abs_s'] / 3600:6.2f} h  "
                f"mean {e['mean_abs_s'] / 3600:6.2f} h  p90 {e['p90_abs_s'] / 3600:6.2f} h  "
                f"started later than said: {e['late_fraction']:.0%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
