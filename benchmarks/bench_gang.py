"""Submit to running, a job over two nodes next to a job on one (issue 15).

    sudo .venv/bin/python benchmarks/bench_gang.py [--repeats 10]

Two "hosts" are network namespaces (benchmarks/netns.py), set up as in
bench_faults.py: a head with `labq up --advertise` and a worker joined by invite, 2
GPUs each, the cluster otherwise idle. Each round submits, through the real `labq`
command, a 1-node job (`--gpus 2`, the baseline) and then a 2-node job (`--nodes 2
--gpus-per-node 2`), alternating so that both see the same cluster, each a command
that writes when it started on each rank. Measured per job, from just before `labq
submit` runs: until labq shows it RUNNING (all ranks started: the `started` event of
a gang waits for every rank), and until the last rank's command itself started (its
own clock, written to a file; the namespace hosts share one clock). The 2-node job
also pays for its placement group and the ranks' meeting (gang.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_faults import Labq, join, node_names, up, wait_for  # noqa: E402
from benchmarks.netns import hosts  # noqa: E402

MARK = "/tmp/lq-bench-gang"


def one(lq: Labq, args: list[str], ranks: int) -> dict[str, float]:
    t0 = time.time()
    job = lq.submit(*args, "--", "sh", "-c", f"date +%s.%N > {MARK}.$LABQ_JOB_ID.${{LABQ_NODE_RANK:-0}}; sleep 1")
    j = lq.wait(job, ("RUNNING", "SUCCEEDED", "FAILED"), timeout=120)
    running = next(e["time"] for e in j["events"] if e["new_state"] == "RUNNING")
    marks = [Path(f"{MARK}.{job}.{r}") for r in range(ranks)]
    wait_for("every rank's mark", lambda: all(m.exists() and m.read_text().strip() for m in marks), 60)
    started = max(float(m.read_text()) for m in marks)
    j = lq.wait(job, ("SUCCEEDED", "FAILED"), timeout=120)
    assert j["state"] == "SUCCEEDED", j["reason"]
    for m in marks:
        m.unlink()
    return {"running_s": running - t0, "all_ranks_started_s": started - t0}


def summary(xs: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in xs[0]:
        v = sorted(x[k] for x in xs)
        out[k] = {"median": round(statistics.median(v), 3), "min": round(v[0], 3), "max": round(v[-1], 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    with hosts("lq-head", "lq-w1") as (head, worker):
        lq = Labq("grace_period_s: 2\nmin_runtime_s: 0\nmonitor_interval_s: 1\n")
        agent = None
        try:
            up(lq, head)
            agent = join(lq, worker, lq.json("node", "invite"), lq.root / "w1")
            wait_for("the worker", lambda: "lq-w1" in node_names(lq), 120)
            one(lq, ["--gpus", "2"], 1)  # warm: the first task on each node starts a worker process
            one(lq, ["--nodes", "2", "--gpus-per-node", "2"], 2)
            single, gang = [], []
            for _ in range(args.repeats):
                single.append(one(lq, ["--gpus", "2"], 1))
                gang.append(one(lq, ["--nodes", "2", "--gpus-per-node", "2"], 2))
            print(json.dumps({"repeats": args.repeats, "one_node": summary(single), "two_nodes": summary(gang)}, indent=2))
        finally:
            if agent is not None:
                agent.kill()
            lq.cleanup()


if __name__ == "__main__":
    import os
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        sys.exit("run as root: namespace hosts need it")
    main()
