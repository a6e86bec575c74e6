"""A long queue: what everyone's `labq queue` costs when one user has thousands waiting.

    sudo .venv/bin/python benchmarks/bench_queue.py [--jobs 10000] [--repo DIR]

A real daemon (embedded Ray, 4 logical GPUs, its node drained so nothing starts),
`--jobs` pending jobs submitted through the API, then, each repeated and the median
kept: `labq queue` as a command (wall time, the whole process), `GET /v1/jobs` through
a kept-alive client, and one job's `show`. Baseline in the same run: the same calls
with 100 jobs queued. `--repo` runs the daemon and the CLI from another checkout (with
its own .venv), to compare two versions on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(repo / ".venv" / "bin" / "python"), "-m", "scheduler.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd="/tmp",
    )


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(repo: Path, env: dict[str, str], sock: Path, repeats: int) -> dict[str, float]:
    sys.path.insert(0, str(repo))
    from scheduler.client import Client

    c = Client(sock, timeout=120)
    first = c.request("GET", "/v1/jobs", limit=1)["jobs"][0]["id"]
    out = {
        "labq queue (CLI, s)": timed(lambda: run(repo, env, "queue"), repeats),
        "GET /v1/jobs (s)": timed(lambda: c.request("GET", "/v1/jobs"), repeats),
        "labq show (CLI, s)": timed(lambda: run(repo, env, "show", str(first)), repeats),
    }
    health = c.health()
    if "pass_s" in health:
        out["scheduling pass (s)"] = float(health["pass_s"])
    c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--repo", default=str(REPO))
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    root = Path(tempfile.mkdtemp(prefix="lqbq", dir="/tmp"))
    root.chmod(0o755)
    state, sock = root / "state", root / "labq.sock"
    state.mkdir()
    (state / "labq.yaml").write_text(
        "max_pending_jobs_per_user: 1000000\nmax_submissions_per_minute: 0\n"
        if (repo / "scheduler" / "admission.py").exists()
        else ""
    )
    env = {**os.environ, "LABQ_SOCKET": str(sock), "LABQ_STATE_DIR": str(state), "PYTHONPATH": str(repo)}
    try:
        run(repo, env, "up", "--state-dir", str(state), "--gpus", "4")
        node = json.loads(run(repo, env, "gpus", "--json").stdout)["nodes"][0]["name"]
        run(repo, env, "node", "drain", node)
        sys.path.insert(0, str(repo))
        from scheduler.client import Client

        c = Client(sock, timeout=120)
        spec = {"command": ["true"], "gpus": 1, "workdir": "/tmp", "env": {"PATH": "/usr/bin:/bin"}}
        results = {}
        done = 0
        for size in (100, args.jobs):
            t0 = time.perf_counter()
            while done < size:
                c.submit(spec)
                done += 1
            print(f"{size} queued ({time.perf_counter() - t0:.1f} s to submit)", file=sys.stderr)
            time.sleep(3)  # a few passes over the full queue
            results[size] = measure(repo, env, sock, args.repeats)
        c.close()
        print(f"{'':28}{'100 queued':>14}{f'{args.jobs:,} queued':>16}")
        for key in results[100]:
            print(f"{key:28}{results[100][key]:>14.3f}{results[args.jobs][key]:>16.3f}")
    finally:
        subprocess.run(
            [str(repo / ".venv" / "bin" / "python"), "-m", "scheduler.cli", "down", "--kill"],
            env=env,
            capture_output=True,
            cwd="/tmp",
        )
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
