"""Interactive sessions (issue 17): what is typed into a `labq shell`.

A session is a job whose command runs on a pty on its node (runner.py); its screen is
the job's log, read by `labq attach` like `labq logs -f`, and what the user types goes
from the API through the launcher to the Executor, which hands it to the session's
runner at its next heartbeat (every 50 ms). Only the owner types into a session: an
admin who could would act as that user on the node. Owns nothing; API threads.
"""

from __future__ import annotations

from typing import Any

from scheduler.auth import Caller
from scheduler.errors import DaemonError
from scheduler.launcher import TTY_FULL, Launcher, LauncherDown
from scheduler.shapes import JobState
from scheduler.store import JobRow

MAX_TYPED = 1 << 16  # bytes in one request


def parse_winsize(raw: Any) -> list[int] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 10000 for v in raw)
    ):
        raise DaemonError("winsize must be [rows, cols], each 1 to 10000")
    return [int(raw[0]), int(raw[1])]


def type_into(launcher: Launcher | None, caller: Caller, job: JobRow, data: bytes, winsize: list[int] | None) -> None:
    if caller.user != job.user:
        raise DaemonError(f"job {job.ref} is {job.user}'s session: only its owner may type into it", 403)
    if job.kind != "shell":
        raise DaemonError(f"job {job.ref} is not a shell session (labq attach is for labq shell's sessions)")
    if job.state is not JobState.RUNNING:
        raise DaemonError(f"session {job.ref} is {job.state.value}, not running", 409)
    if len(data) > MAX_TYPED:
        raise DaemonError(f"at most {MAX_TYPED} bytes at once", 413)
    if launcher is None:
        raise DaemonError("the cluster is not reachable right now", 503)
    try:
        why = launcher.tty(job.id, job.attempt, data, winsize)
    except LauncherDown as e:
        raise DaemonError(str(e), 503) from None
    if why == TTY_FULL:
        # Its own status: the session runs, and `labq attach` keeps going (saying so).
        raise DaemonError(f"session {job.ref} is not reading what you type: this input was dropped", 429)
    if why:
        raise DaemonError(f"session {job.ref} is not running any more", 409)
