"""Runs one job attempt as a subprocess on the node Ray picked, and watches it.

No Ray here: the Ray task in executor.py calls `run()` with a `report` callback that
carries log bytes and status to the Executor actor and brings back stop requests.
That keeps the process handling (signals, grace, time limit, logs) testable alone.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHUNK = 1 << 20  # log bytes carried per report
HEARTBEAT_S = 0.25  # how often a running job asks whether it should stop

# report(info, offset, data, result) -> stop request or None.
Report = Callable[[dict[str, Any] | None, int, bytes, dict[str, Any] | None], dict[str, Any] | None]


@dataclass(frozen=True)
class Launch:
    job_id: int
    attempt: int
    argv: list[str]
    workdir: str
    env: dict[str, str]
    uid: int
    time_limit: float | None
    grace: float
    # Output beyond this many bytes is read and dropped: a job flooding stdout can fill
    # neither the node's disk nor the Executor's memory while the daemon is away.
    log_limit: int
    preempt_file: str
    # GPU indices labq chose (NVML order), so it can steer around unhealthy GPUs;
    # None leaves Ray's own choice (a node whose Ray and NVML GPU counts disagree).
    gpu_indices: tuple[int, ...] | None = None


def _child_setup() -> None:
    # Die with the Ray worker that watches us: a crashed worker must not leave a job
    # holding GPUs that Ray believes are free.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _user_kwargs(uid: int, env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """Popen arguments that run the job as `uid` when we are root; and its home."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return {}, env.get("HOME", "/")
    env.setdefault("HOME", pw.pw_dir)
    env.setdefault("USER", pw.pw_name)
    env.setdefault("LOGNAME", pw.pw_name)
    if os.geteuid() != 0 or uid == 0:
        return {}, pw.pw_dir
    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    return {"user": uid, "group": pw.pw_gid, "extra_groups": groups}, pw.pw_dir


def run(launch: Launch, gpu_ids: list[str], node: str, report: Report) -> dict[str, Any]:
    """Start the job, stream its log through `report`, enforce limits, return its result."""
    env = dict(launch.env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    # CUDA numbers GPUs fastest-first unless told otherwise; NVML (and labq) by PCI bus.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env["LABQ_JOB_ID"] = str(launch.job_id)
    env["LABQ_ATTEMPT"] = str(launch.attempt)
    env["LABQ_GPUS"] = str(len(gpu_ids))
    env["LABQ_NODE"] = node
    env["LABQ_GRACE_SECONDS"] = f"{launch.grace:g}"
    env["LABQ_PREEMPT_DEADLINE"] = launch.preempt_file
    user_kw, home = _user_kwargs(launch.uid, env)
    cwd = launch.workdir or home
    host = socket.gethostname()

    os.makedirs(os.path.dirname(launch.preempt_file), exist_ok=True)
    open(launch.preempt_file, "w").close()
    if not os.path.isdir(cwd):
        result = _result("failed", None, None, f"workdir {cwd} does not exist on node {host}")
        report(None, 0, f"labq: {result['reason']}\n".encode(), result)
        return result
    # A pipe, not a file: the job's output streams through us, so it is bounded here
    # and a job that writes faster than we forward it waits, as on a terminal.
    rfd, wfd = os.pipe()
    try:
        proc = subprocess.Popen(
            launch.argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=wfd,
            stderr=wfd,
            start_new_session=True,
            preexec_fn=_child_setup,
            **user_kw,
        )
    except OSError as e:
        os.close(rfd)
        result = _result("failed", 127, None, f"cannot run {launch.argv[0]!r}: {e.strerror or e}")
        report(None, 0, f"labq: {result['reason']}\n".encode(), result)
        return result
    finally:
        os.close(wfd)
    os.set_blocking(rfd, False)
    out = _Output(rfd, launch.log_limit)

    started = time.time()
    info = {"pid": proc.pid, "gpu_ids": gpu_ids, "host": host, "start_time": started}
    outcome: str | None = None
    reason = ""
    kill_at: float | None = None
    deadline = started + launch.time_limit if launch.time_limit else None
    stop = report(info, 0, b"", None)
    last_report = time.monotonic()

    while True:
        now = time.time()
        if outcome is None and stop is not None:
            outcome, reason = str(stop["outcome"]), str(stop.get("reason", ""))
            grace = float(stop.get("grace", launch.grace))
            kill_at = now + grace
            _write_deadline(launch.preempt_file, kill_at)
            _signal_group(proc.pid, signal.SIGTERM)
        elif outcome is None and deadline is not None and now >= deadline:
            outcome, reason = "timeout", f"time limit of {launch.time_limit:g}s reached"
            kill_at = now + launch.grace
            _write_deadline(launch.preempt_file, kill_at)
            _signal_group(proc.pid, signal.SIGTERM)
        if kill_at is not None and now >= kill_at:
            _signal_group(proc.pid, signal.SIGKILL)
        wait_s = max(0.0, HEARTBEAT_S - (time.monotonic() - last_report))
        if kill_at is not None:
            wait_s = min(wait_s, max(0.01, kill_at - now))
        if deadline is not None and outcome is None:
            wait_s = min(wait_s, max(0.01, deadline - now))
        out.pump(wait_s)
        if proc.poll() is not None:
            break
        if time.monotonic() - last_report >= HEARTBEAT_S or out.pending() >= CHUNK:
            offset, data = out.take()
            stop = report(None, offset, data, None) or stop
            last_report = time.monotonic()

    # Whatever the job left behind in its process group goes too: nothing may
    # keep GPUs after labq records the job as ended.
    _signal_group(proc.pid, signal.SIGKILL)
    rc = proc.returncode
    exit_code = rc if rc >= 0 else None
    sig = -rc if rc < 0 else None
    if outcome is None:
        outcome = "succeeded" if rc == 0 else "failed"
        reason = "" if rc == 0 else (f"exit code {rc}" if rc > 0 else f"killed by {signal.Signals(-rc).name}")
    result = _result(outcome, exit_code, sig, reason)
    out.drain()
    while out.pending() > CHUNK:
        offset, data = out.take(CHUNK)
        report(None, offset, data, None)
    if out.dropped:
        result["log_dropped"] = out.dropped
    offset, data = out.take()
    report(None, offset, data, result)
    return result


class _Output:
    """The job's output pipe: bytes read but not yet reported, up to a limit."""

    NOTE = b"\nlabq: output beyond this point was discarded (log limit reached)\n"

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = max(0, limit - len(self.NOTE))
        self.buf = bytearray()
        self.offset = 0  # bytes reported so far
        self.dropped = 0
        self.closed = False

    def pending(self) -> int:
        return len(self.buf)

    def _read(self) -> bool:
        """One read; False when nothing more is there right now (or ever)."""
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return False
        if not data:
            os.close(self.fd)
            self.closed = True
            return False
        room = self.limit - self.offset - len(self.buf)
        if room >= len(data):
            self.buf += data
        else:
            if self.dropped == 0:
                self.buf += data[: max(0, room)] + self.NOTE
            self.dropped += len(data) - max(0, room)
        return True

    def pump(self, timeout: float) -> None:
        """Wait up to `timeout` for output, then read what is there (a bounded amount)."""
        if self.closed:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return
        for _ in range(16):  # past the limit we read fast, so a flood never stalls the job
            if not self._read() or (self.pending() >= CHUNK and not self.dropped):
                return

    def drain(self, timeout: float = 2.0) -> None:
        """After the job ended: what is left in the pipe. A descendant that escaped its
        process group may keep the pipe open; don't wait for it beyond `timeout`."""
        end = time.monotonic() + timeout
        while not self.closed and time.monotonic() < end:
            if not self._read():
                if self.closed:
                    break
                select.select([self.fd], [], [], max(0.0, min(0.1, end - time.monotonic())))
        if not self.closed:
            os.close(self.fd)
            self.closed = True

    def take(self, n: int | None = None) -> tuple[int, bytes]:
        n = len(self.buf) if n is None else min(n, len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        offset = self.offset
        self.offset += n
        return offset, data


def _write_deadline(path: str, kill_at: float) -> None:
    try:
        with open(path, "w") as f:
            f.write(f"{kill_at:.3f}\n")
    except OSError:
        pass


def _result(outcome: str, exit_code: int | None, sig: int | None, reason: str) -> dict[str, Any]:
    # The end as the node saw it: the daemon may store it much later (it may be down).
    return {
        "outcome": outcome,
        "exit_code": exit_code,
        "signal": sig,
        "reason": reason,
        "end_time": time.time(),
    }
