"""A toast when one of your own jobs ends, as a researcher expects of a launcher.

Worked out in the poll's worker thread from two consecutive polls: a job of the
caller's that was starting or running and is now ended gets one toast; a failed one
names its exit code and its log's last line (one small `tail=` read, never the log).
A job that went back to the queue (preempted, its node lost) is not "ended".
"""

from __future__ import annotations

from typing import Any

from scheduler.present import clean
from tui.api import Backend, BackendError
from tui.model import ACTIVE_STATES, TERMINAL_STATES

MAX_TOASTS = 5  # per poll: a cancelled sweep must not bury the screen


def ended_jobs(
    before: set[int] | None, jobs: list[dict[str, Any]], me: str, backend: Backend
) -> tuple[set[int], list[tuple[str, str]]]:
    """(my running job ids now, [(message, severity)] for those that ended since `before`;
    None before: the first poll, when nothing has "just" ended)."""
    mine = {j["id"]: j for j in jobs if j.get("user") == me}
    # An array runs while any of its tasks does (its own state stays PENDING till the end).
    running = {i for i, j in mine.items() if j["state"] in ACTIVE_STATES or (j.get("array") or {}).get("running")}
    if before is None:
        return running, []
    toasts: list[tuple[str, str]] = []
    for job_id in sorted(before - running)[:MAX_TOASTS]:
        j = mine.get(job_id)
        if j is None:  # beyond the listing's recent finished jobs: ask
            try:
                j = backend.job(job_id)
            except BackendError:
                continue
        if j["state"] not in TERMINAL_STATES:
            continue
        text = f"{'array' if j.get('array') else 'job'} {job_id} {clean(j.get('name') or '')} {j['state']}"
        if j["state"] == "SUCCEEDED":
            toasts.append((text, "information"))
            continue
        if j.get("exit_code") not in (None, 0):
            text += f" (exit code {j['exit_code']})"
        last = "" if j.get("array") else last_line(backend, job_id)
        if last:
            text += f"\n{last}"
        toasts.append((text, "warning" if j["state"] == "CANCELLED" else "error"))
    return running, toasts


def last_line(backend: Backend, job_id: int) -> str:
    try:
        data = str(backend.log(job_id, tail=4096).get("data") or "")
    except BackendError:
        return ""
    lines = [ln for ln in data.splitlines() if ln.strip()]
    return clean(lines[-1][:200]) if lines else ""
