"""The UI under real use: opening a job with a huge log, and idling on a quiet queue.

    sudo .venv/bin/python benchmarks/bench_ui.py [--log-mib 256] [--idle-s 60] [--base DIR]

One real daemon (embedded Ray, 4 logical GPUs) from this checkout; then, for this
checkout's UI and (with --base) another checkout's (its own .venv), in the same run:

- open: a job whose log is --log-mib MiB (a job writes it through the runner); the
  UI runs headless in a child process against the daemon's socket, and the time from
  opening the job screen to its details and to its log being shown, and the child's
  peak RSS, are measured. Both UIs also open the issue's smaller log: --small-lines
  short lines (200,000 lines, 1.3 MiB), --open-timeout seconds each; the baseline
  gets 5 s on the big one (it reads a log whole, and was seen at 2.2 GB).
- idle: `labq tui` in a real terminal (tmux, 160x48) with three running `sleep` jobs
  and nothing changing: CPU time of the UI process over --idle-s seconds on the queue
  screen, then on the GPUs screen, as % of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

LOG_WRITER = r"""
import sys
line = b"step %07d loss 0.1234 lr 3e-4 grad-norm 1.02 tokens/s 51234 " + b"x" * 40 + b"\n"
want = int(sys.argv[1])
out = sys.stdout.buffer
n = 0
chunk = []
while n < want:
    for i in range(1000):
        chunk.append(line % (n // len(line) + i))
    data = b"".join(chunk)
    chunk.clear()
    out.write(data)
    n += len(data)
out.flush()
"""


def labq(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "scheduler.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        cwd="/tmp",
    )


def submit(env: dict[str, str], *args: str) -> int:
    return int(json.loads(labq(env, "submit", "--json", *args).stdout)["id"])


def wait_state(env: dict[str, str], job_id: int, states: tuple[str, ...], timeout: float = 600) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if json.loads(labq(env, "show", str(job_id), "--json").stdout)["state"] in states:
            return
        time.sleep(0.5)
    raise SystemExit(f"job {job_id} never became {states}")


# -- open: runs in a child process, with the checkout under test first on sys.path ------------------
def open_child(sock: str, job_id: int, timeout: float) -> None:
    import asyncio
    import resource

    from tui.api import ClientBackend
    from tui.app import LabqApp

    async def go() -> dict[str, Any]:
        app = LabqApp(ClientBackend(Path(sock)), auto_refresh=False)
        async with app.run_test(size=(160, 48)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            t0 = time.perf_counter()
            app.open_job(job_id)
            details = shown = None
            while time.perf_counter() - t0 < timeout:
                await pilot.pause(0.005)
                screen: Any = app.screen
                fields = screen.query("#fields")
                if details is None and fields and "loading" not in str(fields.first().render()):
                    details = time.perf_counter() - t0
                if shown is None and getattr(screen, "lines", None):
                    shown = time.perf_counter() - t0
                if details is not None and shown is not None:
                    break
            lines = len(getattr(app.screen, "lines", []))
            # Still responsive? A key press goes through after the log is shown.
            t1 = time.perf_counter()
            await pilot.press("w")
            key = time.perf_counter() - t1
            return {"details_s": details, "log_s": shown, "lines": lines, "key_s": key}

    out = asyncio.run(go())
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def measure_open(repo: Path, env: dict[str, str], sock: Path, job_id: int, timeout: float) -> dict[str, Any]:
    code = (
        f"import sys; sys.path.insert(0, {str(repo)!r}); sys.path.insert(1, {str(REPO / 'benchmarks')!r});"
        f"import bench_ui; bench_ui.open_child({str(sock)!r}, {job_id}, {timeout})"
    )
    try:
        out = subprocess.run(
            [str(repo / ".venv" / "bin" / "python"), "-c", code],
            env={**env, "PYTHONPATH": str(repo)},
            capture_output=True,
            text=True,
            timeout=timeout + 60,
            cwd="/tmp",
        )
    except subprocess.TimeoutExpired:
        return {"details_s": None, "log_s": None, "note": f"killed after {timeout + 60:.0f} s"}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# -- idle: `labq tui` in tmux ---------------------------------------------------------------------------
def measure_idle(repo: Path, env: dict[str, str], seconds: float) -> dict[str, float]:
    import psutil

    session = f"lqbench{os.getpid()}"
    py = repo / ".venv" / "bin" / "python"
    cmd = f"exec env PYTHONPATH={repo} {py} -m scheduler.cli tui"
    tmux_env = [f"-e{k}={env[k]}" for k in ("LABQ_SOCKET", "LABQ_STATE_DIR")]
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "48", *tmux_env, cmd], check=True)
    try:
        pane = int(subprocess.run(
            ["tmux", "list-panes", "-t", session, "-F", "#{pane_pid}"], capture_output=True, text=True, check=True
        ).stdout.split()[0])
        time.sleep(8)  # started, first polls done
        proc = psutil.Process(pane)
        out = {}
        for screen, key in (("queue", "1"), ("gpus", "2")):
            subprocess.run(["tmux", "send-keys", "-t", session, key], check=True)
            time.sleep(3)
            c0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
            time.sleep(seconds)
            c1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
            out[f"idle CPU, {screen} screen (% of a core)"] = 100 * (c1 - c0) / (t1 - t0)
        out["UI RSS (MiB)"] = proc.memory_info().rss / 2**20
        return out
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log-mib", type=int, default=256)
    ap.add_argument("--small-lines", type=int, default=200_000)
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--skip-open", action="store_true")
    ap.add_argument("--open-timeout", type=float, default=120)
    ap.add_argument("--idle-s", type=float, default=60)
    ap.add_argument("--base", help="another checkout (with its .venv) to measure the same way")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lqbu", dir="/tmp"))
    root.chmod(0o755)
    state, sock = root / "state", root / "labq.sock"
    state.mkdir()
    (state / "labq.yaml").write_text(f"log_max_bytes: {(args.log_mib + 1) * 2**20}\n")
    env = {**os.environ, "LABQ_SOCKET": str(sock), "LABQ_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
    env.pop("TMUX", None)
    versions = [("this checkout", REPO)] + ([("base", Path(args.base).resolve())] if args.base else [])
    results: dict[str, dict[str, Any]] = {}
    try:
        labq(env, "up", "--state-dir", str(state), "--gpus", "4")
        if not args.skip_open:
            writer = root / "writer.py"
            writer.write_text(LOG_WRITER)
            writer.chmod(0o644)
            big = submit(env, "--time", "1h", "--", sys.executable, str(writer), str(args.log_mib * 2**20))
            small = submit(
                env, "--time", "1h", "--", sys.executable, "-c",
                f"import sys\nsys.stdout.write(''.join('%06d\\n' % i for i in range({args.small_lines})))",
            )
            wait_state(env, big, ("SUCCEEDED",))
            wait_state(env, small, ("SUCCEEDED",))
            size = (state / "logs" / f"{big}.log").stat().st_size
            small_size = (state / "logs" / f"{small}.log").stat().st_size
            print(f"job {big}: a {size / 2**20:.0f} MiB log; job {small}: {small_size / 2**20:.2f} MiB", file=sys.stderr)
            for name, repo in versions:
                r = results.setdefault(name, {})
                r[f"open {args.log_mib} MiB log"] = measure_open(repo, env, sock, big, 5 if name == "base" else args.open_timeout)
                r[f"open {args.small_lines:,}-line log"] = measure_open(repo, env, sock, small, args.open_timeout)
        if not args.skip_idle:
            sleepers = [submit(env, "--gpus", "1", "--name", f"idle{i}", "--", "sleep", "3600") for i in range(3)]
            for job_id in sleepers:
                wait_state(env, job_id, ("RUNNING",))
            for name, repo in versions:
                results.setdefault(name, {}).update(measure_idle(repo, env, args.idle_s))
            for job_id in sleepers:
                labq(env, "cancel", "--now", str(job_id), check=False)
    finally:
        labq(env, "down", "--kill", check=False)
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
