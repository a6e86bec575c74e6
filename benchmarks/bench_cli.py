"""How long a researcher waits for the CLI: `labq queue` and `labq submit` against an idle daemon.

    sudo .venv/bin/python benchmarks/bench_cli.py [--runs 30] [--base DIR]

One real daemon (embedded Ray, 4 logical GPUs) from this checkout, with a queue of 40
jobs (4 running, 36 pending). Each command runs as a whole new process through the
checkout's installed `labq` entry point (so the console script, the editable install's
.pth and site imports are all paid, as at a shell prompt), round-robin with the others
so that the machine's drift spreads over all of them:

- `python -c pass` with the same interpreter: the floor no Python CLI gets under;
- `labq --help`, `labq queue`, `labq submit --time 1m -- true` (the submitted jobs
  start and end at once, the queue stays the same length);
- with --base, the same commands of another checkout (its own .venv) against the same
  daemon, in the same rounds.

Printed: median and 90th percentile of wall time and of the process's own CPU time
(user + system, from wait4), in milliseconds.
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


def labq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "labq"), *args], env=env, capture_output=True, text=True, check=True, cwd="/tmp"
    )


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall and CPU seconds of one run of argv, and its exit status."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd="/tmp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--base", help="another checkout (with its .venv) to time the same way")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lqbc", dir="/tmp"))
    root.chmod(0o755)
    state, sock = root / "state", root / "labq.sock"
    env = {**os.environ, "LABQ_SOCKET": str(sock), "LABQ_STATE_DIR": str(state)}
    env.pop("PYTHONPATH", None)  # each checkout's own install decides what it imports
    versions = [("this checkout", REPO)] + ([("base", Path(args.base).resolve())] if args.base else [])
    commands: dict[str, list[str]] = {}
    for name, repo in versions:
        bin_ = repo / ".venv" / "bin"
        commands[f"{name}: python -c pass"] = [str(bin_ / "python"), "-c", "pass"]
        commands[f"{name}: labq --help"] = [str(bin_ / "labq"), "--help"]
        commands[f"{name}: labq queue"] = [str(bin_ / "labq"), "queue"]
        commands[f"{name}: labq submit"] = [str(bin_ / "labq"), "submit", "--time", "1m", "--", "true"]
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    failures: dict[str, int] = {k: 0 for k in commands}
    try:
        labq(env, "up", "--state-dir", str(state), "--gpus", "4")
        for i in range(40):
            labq(env, "submit", "--time", "1h", "--name", f"q{i}", "--", "sleep", "3600")
        deadline = time.time() + 120
        while len([j for j in json.loads(labq(env, "queue", "--json").stdout) if j["state"] == "RUNNING"]) < 4:
            if time.time() > deadline:
                raise SystemExit("the daemon never started 4 jobs")
            time.sleep(0.5)
        for argv in commands.values():  # warm the page cache and the daemon's paths
            timed(argv, env)
        for _ in range(args.runs):
            for key, argv in commands.items():
                wall, cpu, rc = timed(argv, env)
                if rc != 0:
                    failures[key] += 1
                samples[key].append((wall, cpu))
    finally:
        subprocess.run([str(REPO / ".venv" / "bin" / "labq"), "down", "--kill"], env=env, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    def ms(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return 1000 * (statistics.median(xs) if q == 0.5 else xs[min(len(xs) - 1, int(q * len(xs)))])

    print(f"{'command':<40} {'wall p50':>9} {'wall p90':>9} {'cpu p50':>8} {'cpu p90':>8}  (ms, {args.runs} runs)")
    for key, rows in samples.items():
        walls, cpus = [w for w, _ in rows], [c for _, c in rows]
        bad = f"  {failures[key]} failed" if failures[key] else ""
        print(f"{key:<40} {ms(walls, .5):9.1f} {ms(walls, .9):9.1f} {ms(cpus, .5):8.1f} {ms(cpus, .9):8.1f}{bad}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
