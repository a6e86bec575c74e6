"""What the API returns for a job: built field by field, never the database row.

What a caller may see is decided here and only here:
- everyone: id, owner, name, size, state, times, node, reasons, GPU use;
- the owner and admins also: the command, the working directory, the values of
  the environment (often API keys), the job's pid;
- admins alone: where the log lives on the head node.
Another user sees the *names* of the environment variables, so a colleague can tell
what a job was given without reading the secrets.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.auth import Caller
from scheduler.gpuwatch import GpuWatch
from scheduler.logbook import LogBook
from scheduler.scheduling import Scheduler
from scheduler.shapes import ACTIVE, JobState, Reason
from scheduler.store import JobRow, Store

# Spec fields only the owner and admins see.
PRIVATE_SPEC = ("command", "workdir", "env")

# Every list row has exactly these keys (plus what the caller may see).
SUMMARY_FIELDS = (
    "id",
    "user",
    "name",
    "gpus",
    "priority",
    "time_limit",
    "state",
    "reason",
    "submit_time",
    "start_time",
    "end_time",
    "attempt",
    "node",
    "node_name",
    "gpu_ids",
    "exit_code",
    "signal",
    "requeued",
)


def summary(row: JobRow, caller: Caller) -> dict[str, Any]:
    d: dict[str, Any] = {k: getattr(row, k) for k in SUMMARY_FIELDS}
    d["state"] = row.state.value
    d["requeued"] = bool(row.requeued)
    if caller.may_see(row.user):
        d["pid"] = row.pid
    return d


def spec_for(row: JobRow, caller: Caller) -> dict[str, Any]:
    """The submission as the caller may see it."""
    spec = dict(row.spec)
    if caller.may_see(row.user):
        return spec
    env = spec.get("env") or {}
    out = {k: v for k, v in spec.items() if k not in PRIVATE_SPEC}
    out["env_names"] = sorted(env) if isinstance(env, Mapping) else []
    return out


def detail(
    row: JobRow,
    caller: Caller,
    base: dict[str, Any],
    events: Sequence[Mapping[str, Any]],
    log_path: str,
) -> dict[str, Any]:
    """`labq show`: the summary `base` plus the spec, history and log facts."""
    d = dict(base)
    d["spec"] = spec_for(row, caller)
    d["private"] = not caller.may_see(row.user)
    d["events"] = [dict(e) for e in events]
    d["log"] = {
        "bytes": row.log_bytes,
        "removed": row.log_removed,
        "readable": caller.may_see(row.user),
    }
    if caller.admin:
        d["log_path"] = log_path
    return d


class JobViews:
    """Jobs as the API returns them: the row, what the last pass said of a waiting job,
    and a running job's GPU use. Reads only."""

    def __init__(self, store: Store, scheduler: Scheduler, gpus: GpuWatch, logs: LogBook) -> None:
        self.store = store
        self.scheduler = scheduler
        self.gpus = gpus
        self.logs = logs

    def job(self, row: JobRow, caller: Caller, full: bool = False) -> dict[str, Any]:
        d = summary(row, caller)
        now = time.time()
        if row.state is JobState.PENDING:
            w = self.scheduler.waiting_for(row.id)
            reasons = w.reasons if w is not None else (NOT_YET,)
            d["reasons"] = [r.text for r in reasons]
            # The structure beside the sentences; a listing leaves out the sentences a
            # second time (10,000 waiting jobs are 10,000 of these).
            d["why"] = [r.as_dict() if full else r.as_dict(text=False) for r in reasons]
            d["eta"] = w.eta if w else None
            d["wait_s"] = now - row.submit_time
        elif row.state in ACTIVE:
            d["reasons"] = [row.stop_reason] if row.stop_reason else []
            d["runtime_s"] = now - (row.start_time or now)
            d["flags"] = self.gpus.gpu_flags(row, now)
            gpu = self.gpus.job_gpu(row.id, now)
            if gpu is not None:
                d["gpu"] = gpu
        else:
            d["reasons"] = [row.reason] if row.reason else []
            if row.start_time and row.end_time:
                d["runtime_s"] = row.end_time - row.start_time
            if full:
                d["gpu"] = self.store.job_gpu_totals(row.id)
        if full:
            if row.time_limit is None:
                # What "the default" is here, so `show` can say it (it differs per cluster).
                d["default_time_limit"] = self.scheduler.config.default_time_limit_s
            return detail(row, caller, d, self.store.events(row.id), str(self.logs.path(row.id)))
        return d

    def listing(
        self,
        caller: Caller,
        states: tuple[JobState, ...] | None,
        user: str | None,
        limit: int | None,
        after: int | None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of summaries (never specs) and where the next page starts."""
        rows = self.store.jobs(states=states, user=user, limit=limit, after=after, with_spec=False)
        jobs = [self.job(j, caller) for j in rows]
        d = self.scheduler.decision
        rank = {jid: i for i, jid in enumerate(d.order)} if d else {}
        for j in jobs:
            j["rank"] = rank.get(j["id"])
        more = after is not None and limit is not None and len(rows) == limit
        return jobs, rows[-1].id if more else None


NOT_YET = Reason("scheduling", "scheduling: not yet considered")
