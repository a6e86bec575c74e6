"""Burst load: 2,000 submissions from 10 users at once while jobs run.

    sudo .venv/bin/python benchmarks/bench_load.py [--users 10] [--per-user 200]

A real daemon with 8 logical GPUs, all busy with running jobs. Ten clients, each a
process with its own Unix identity (test users created when run as root; otherwise
all are the current user), open the socket and submit as fast as they can, all
starting together. A probe client meanwhile asks for `health`, one job and the queue
listing, as the TUI does. Baseline in the same run: the same calls on the same daemon
before the burst. Then every job is checked: exactly `per-user` per user, none twice,
and all end SUCCEEDED after the queue drains.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scheduler.client import Client  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def users(n: int) -> list[int]:
    if os.geteuid() != 0:
        return [os.getuid()] * n
    uids = []
    for i in range(n):
        name = f"labqbench{i}"
        try:
            uids.append(pwd.getpwnam(name).pw_uid)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", name], check=True, capture_output=True)
            uids.append(pwd.getpwnam(name).pw_uid)
    return uids


def submitter(sock: str, uid: int, count: int, go: Any, out: Any) -> None:
    if os.geteuid() == 0 and uid != 0:
        os.setgid(uid)
        os.setuid(uid)
    c = Client(Path(sock), timeout=60)
    spec = {"command": ["sleep", "0.2"], "gpus": 1, "workdir": "/tmp", "time": "1m"}
    c.health()  # connect before the start line, as a client that is already open
    go.wait()
    lat, ids = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        ids.append(c.submit(spec))
        lat.append(time.perf_counter() - t0)
    out.put((uid, lat, ids))


def probe(c: Client, stop: threading.Event, some_job: int) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {"health": [], "show job": [], "queue listing": []}
    while not stop.is_set():
        for name, call in (
            ("health", c.health),
            ("show job", lambda: c.job(some_job)),
            ("queue listing", c.jobs),
        ):
            t0 = time.perf_counter()
            call()
            lat[name].append(time.perf_counter() - t0)
        time.sleep(0.05)
    return lat


def row(name: str, base: list[float], burst: list[float]) -> str:
    f = lambda xs, q: f"{1000 * pct(xs, q):.1f}"  # noqa: E731
    return (
        f"| {name} | {len(base)} | {f(base, 0.5)} | {f(base, 0.99)} | "
        f"{len(burst)} | {f(burst, 0.5)} | {f(burst, 0.99)} | {1000 * max(burst):.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--per-user", type=int, default=200)
    args = ap.parse_args()
    uids = users(args.users)
    root = Path(tempfile.mkdtemp(prefix="lql", dir="/tmp"))
    os.chmod(root, 0o755)
    sock = root / "labq.sock"
    env = dict(os.environ, LABQ_SOCKET=str(sock), PYTHONPATH=str(REPO))
    labq = [sys.executable, "-m", "scheduler.cli"]
    (root / "state").mkdir()
    # shared_account lets the non-root fallback (all clients as one user) still work.
    (root / "state" / "labq.yaml").write_text("grace_period_s: 1\nmin_runtime_s: 0\nshared_account: true\n")
    subprocess.run(
        [*labq, "up", "--gpus", "8", "--state-dir", str(root / "state")],
        env=env,
        check=True,
        capture_output=True,
    )
    c = Client(sock, timeout=60)
    print(f"machine: {os.cpu_count()} CPUs; 8 logical GPUs; {args.users} users x {args.per_user} submissions")
    try:
        busy = [c.submit({"command": ["sleep", "30"], "gpus": 1, "workdir": "/tmp"}) for _ in range(8)]
        while any(c.job(j)["state"] != "RUNNING" for j in busy):
            time.sleep(0.1)

        # Baseline: the probe on the same daemon, jobs running, no burst.
        stop = threading.Event()
        base: dict[str, list[float]] = {}
        base_c = Client(sock, timeout=60)  # a connection per thread, as separate clients have
        t = threading.Thread(target=lambda: base.update(probe(base_c, stop, busy[0])))
        t.start()
        base_submit = []
        for _ in range(100):
            t0 = time.perf_counter()
            c.submit({"command": ["true"], "gpus": 1, "workdir": "/tmp", "priority": -1000})
            base_submit.append(time.perf_counter() - t0)
            time.sleep(0.02)
        stop.set()
        t.join()

        ctx = mp.get_context("fork")
        go, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=submitter, args=(str(sock), u, args.per_user, go, out)) for u in uids]
        for p in procs:
            p.start()
        time.sleep(1.0)
        stop = threading.Event()
        burst: dict[str, list[float]] = {}
        probe_c = Client(sock, timeout=60)
        t = threading.Thread(target=lambda: burst.update(probe(probe_c, stop, busy[0])))
        t.start()
        t0 = time.perf_counter()
        go.set()
        results = [out.get(timeout=600) for _ in procs]
        burst_s = time.perf_counter() - t0
        stop.set()
        t.join()
        for p in procs:
            p.join()

        lat = [x for _, xs, _ in results for x in xs]
        ids = [i for _, _, xs in results for i in xs]
        print(f"burst: {len(ids)} submissions in {burst_s:.1f} s ({len(ids) / burst_s:.0f}/s)")
        print("| call | baseline n | p50 ms | p99 ms | under burst n | p50 ms | p99 ms | max ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print(row("submit", base_submit, lat))
        for name in ("health", "show job", "queue listing"):
            print(row(name, base[name], burst[name]))

        # Every job accounted for: the right count per user, no id twice, all run once.
        assert len(set(ids)) == len(ids) == args.users * args.per_user, "duplicate or missing ids"
        for _uid, _, mine in results:
            assert len(mine) == args.per_user
        for j in busy:
            c.cancel(j)
        t0 = time.perf_counter()
        while c.jobs():
            time.sleep(1.0)
        drain_s = time.perf_counter() - t0
        jobs = {j["id"]: j for j in c.jobs(include_finished=True)}
        states = statistics.multimode([jobs[i]["state"] for i in ids])
        bad = [i for i in ids if jobs[i]["state"] != "SUCCEEDED" or jobs[i]["attempt"] != 1]
        per_user = {}
        for i in ids:
            per_user[jobs[i]["user"]] = per_user.get(jobs[i]["user"], 0) + 1
        print(
            f"accounted: {len(ids)} jobs, {len(per_user)} users x {sorted(set(per_user.values()))}, "
            f"states {states}, not SUCCEEDED-on-first-attempt: {len(bad)}; queue drained in {drain_s:.0f} s"
        )
        assert not bad, bad[:10]
    finally:
        subprocess.run([*labq, "down", "--kill"], env=env, capture_output=True)
        from scheduler import raycluster

        raycluster.stop_embedded(root / "state")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
