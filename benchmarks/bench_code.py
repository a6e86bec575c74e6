"""Frozen code and sessions (issue 17): what they cost.

    sudo .venv/bin/python benchmarks/bench_code.py [--repeats 9]

1. `labq submit` wall time with the code frozen (the default) next to `--no-snapshot`
   (the baseline, from the same run, alternating), in three directories: a small git
   repository (this project's own sources), a large one (2,000 tracked files, 40 MB,
   50 of them changed), and a plain directory of 200 source files. The jobs wait behind
   a blocker, so only submission is timed.
2. Unpacking on the node (`snapshot.materialize`, as a job's start does it), per case.
3. A shell session's keystroke round trip on a real daemon: typing `echo N` until N is
   on its screen (the log), through API, Executor and the session's runner.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_arrays import Daemon, median_time  # noqa: E402
from scheduler import snapshot  # noqa: E402


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=b@example.org", "-c", "user.name=b", *args],
        check=True, capture_output=True,
    )


def cases(root: Path) -> dict[str, Path]:
    small = root / "small"
    shutil.copytree(REPO / "scheduler", small / "scheduler", ignore=shutil.ignore_patterns("__pycache__"))
    git(small, "init", "-q")
    git(small, "add", "-A")
    git(small, "commit", "-qm", "x")
    (small / "scheduler" / "policy.py").write_text((small / "scheduler" / "policy.py").read_text() + "\n# edit\n")
    large = root / "large"
    for i in range(2000):
        d = large / f"pkg{i // 100}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i}.py").write_bytes(os.urandom(10_000).hex().encode())  # 20 KB each
    git(large, "init", "-q")
    git(large, "add", "-A")
    git(large, "commit", "-qm", "x")
    for i in range(50):
        (large / f"pkg{i // 100}" / f"m{i}.py").write_text(f"changed {i}\n")
    plain = root / "plain"
    for i in range(200):
        d = plain / f"d{i // 20}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.py").write_text("x = 1\n" * 200)
    (plain / "data.bin").write_bytes(b"\0" * (50 << 20))  # not code
    return {"small git repo (this project)": small / "scheduler", "large git repo (2,000 files, 40 MB)": large, "plain dir (200 .py + 50 MB data)": plain}


def submit_times(d: Daemon, where: Path, blocker: int, repeats: int) -> tuple[float, float]:
    frozen: list[float] = []
    live: list[float] = []
    for _ in range(repeats):  # alternating: a noisy machine hurts both alike
        for flag, out in (([], frozen), (["--no-snapshot"], live)):
            t0 = time.perf_counter()
            subprocess.run(
                [*d.cli, "submit", *flag, "--after", str(blocker), "--", "true"],
                env=d.env, check=True, capture_output=True, cwd=str(where),
            )
            out.append(time.perf_counter() - t0)
    return statistics.median(frozen), statistics.median(live)


def keystroke_roundtrip(d: Daemon, samples: int) -> list[float]:
    job = d.c.submit({"command": ["/bin/sh"], "session": "shell", "name": "bench", "workdir": "/tmp"})
    while d.c.job(job)["state"] != "RUNNING":
        time.sleep(0.05)
    out = []
    offset = 0
    for i in range(samples):
        marker = f"mark{i * 7 + 1000}"
        t0 = time.perf_counter()
        d.c.tty(job, f"echo {marker}\n".encode())
        while True:
            chunk = d.c.log(job, offset)
            if f"\n{marker}" in chunk["data"].replace("\r", ""):
                out.append(time.perf_counter() - t0)
                offset = chunk["offset"]
                break
            time.sleep(0.005)
    d.c.cancel(job, now=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lqcode", dir="/tmp"))
    d = Daemon()
    results: dict[str, Any] = {}
    try:
        blocker = d.c.submit({"command": ["sleep", "600"], "gpus": 4, "workdir": "/tmp"})
        for name, where in cases(root).items():
            frozen, live = submit_times(d, where, blocker, args.repeats)
            blob, meta = snapshot.take(str(where), 64 << 20)

            def unpack(blob: bytes = blob) -> None:
                snapshot.materialize(blob, tempfile.mkdtemp(dir=root) + "/out")

            results[name] = (frozen, live, len(blob), median_time(unpack, 5))
        rtt = keystroke_roundtrip(d, 30)
    finally:
        d.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'case':40} {'submit (frozen)':>16} {'--no-snapshot':>14} {'snapshot':>10} {'unpack':>8}")
    for name, (frozen, live, size, unpack_s) in results.items():
        print(f"{name:40} {frozen * 1000:13.0f} ms {live * 1000:11.0f} ms {snapshot.human(size):>10} {unpack_s * 1000:5.0f} ms")
    rtt.sort()
    print(
        f"session keystroke round trip over {len(rtt)}: median {statistics.median(rtt) * 1000:.0f} ms, "
        f"p90 {rtt[int(len(rtt) * 0.9)] * 1000:.0f} ms, max {rtt[-1] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
