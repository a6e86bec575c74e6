"""What the API returns for a job: built field by field, never the database row.

What a caller may see is decided here and only here:
- everyone: id, owner, name, size, state, times, node, reasons, GPU use;
- the owner and admins also: the command, the working directory, the values of
  the environment (often API keys), the notify target (a webhook URL is a secret),
  the job's pid;
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
from scheduler.notify import NOTIFY_EVENT
from scheduler.scheduling import Scheduler
from scheduler.shapes import ACTIVE, JobState, Reason
from scheduler.store import JobRow, Store

# Spec fields only the owner and admins see.
PRIVATE_SPEC = ("command", "workdir", "env", "notify", "sweep", "code")

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
    "kind",
)


def summary(row: JobRow, caller: Caller) -> dict[str, Any]:
    d: dict[str, Any] = {k: getattr(row, k) for k in SUMMARY_FIELDS}
    d["state"] = row.state.value
    d["requeued"] = bool(row.requeued)
    if row.preemptible or (row.scavenging and row.state in ACTIVE):
        # Submitted as one, or running as one now (over budget, the quota's `scavenge`).
        d["preemptible"] = True
    if caller.may_see(row.user):
        d["pid"] = row.pid
    if row.ranks:
        # A job over several nodes: where each rank is (its pid only for who may see it).
        mine = caller.may_see(row.user)
        d["ranks"] = [
            {"rank": i, "node": r["node"], "node_name": r.get("node_name"), "gpus": r.get("gpus"),
             "gpu_ids": r.get("gpu_ids"), "host": r.get("host", ""), **({"pid": r.get("pid")} if mine else {})}
            for i, r in enumerate(row.rank_list())
        ]  # fmt: skip
    if row.array_id is not None:
        d["ref"] = row.ref
        d["array_id"] = row.array_id
        d["array_index"] = row.array_index
    return d


_ARRAY_ONLY = ("array", "sweep", "max_running", "after", "after_any", "notify")
_RUNNING = {JobState.STARTING.value, JobState.RUNNING.value}
_WAITING = {JobState.PENDING.value, JobState.PREEMPTED.value}
_FAILED = {JobState.FAILED.value, JobState.TIMEOUT.value, JobState.LOST.value, JobState.NODE_LOST.value}


def array_facts(row: JobRow, counts: Mapping[str, int]) -> dict[str, Any]:
    """An array's tasks in numbers: `6/48 running, 30 pending, 12 done, 0 failed`."""
    made = sum(counts.values())
    unstarted = 0 if row.state.terminal else row.array_size - made
    return {
        "size": row.array_size,
        "cap": row.array_cap,
        "running": sum(n for s, n in counts.items() if s in _RUNNING),
        "pending": unstarted + sum(n for s, n in counts.items() if s in _WAITING),
        "done": counts.get(JobState.SUCCEEDED.value, 0),
        "failed": sum(n for s, n in counts.items() if s in _FAILED),
        "cancelled": counts.get(JobState.CANCELLED.value, 0) + (row.array_size - made if row.state.terminal else 0),
    }


def spec_for(row: JobRow, caller: Caller) -> dict[str, Any]:
    """The submission as the caller may see it."""
    spec = dict(row.spec)
    if caller.may_see(row.user):
        return spec
    env = spec.get("env") or {}
    out = {k: v for k, v in spec.items() if k not in PRIVATE_SPEC}
    out["env_names"] = sorted(env) if isinstance(env, Mapping) else []
    sweep = spec.get("sweep") or {}
    if isinstance(sweep, Mapping) and sweep:
        # A sweep's values are the command's (often paths or keys): names and counts only.
        out["sweep_sizes"] = {k: len(v) for k, v in sweep.items()}
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
    mine = caller.may_see(row.user)
    # A notification's outcome names the owner's webhook host: others see that it was sent.
    d["events"] = [
        dict(e) if mine or not str(e["reason"]).startswith(NOTIFY_EVENT) else {**e, "reason": "notify: sent to its owner"}
        for e in events
    ]
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

    def job(
        self, row: JobRow, caller: Caller, full: bool = False, counts: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        d = summary(row, caller)
        now = time.time()
        if row.array_size:
            if counts is None:
                counts = self.store.array_counts([row.id]).get(row.id, {})
            d["array"] = array_facts(row, counts)
        if row.state is JobState.PENDING:
            # An array none of whose tasks may start now is not the policy's: its reason
            # (the %N cap is full, or all have started) is the scheduler's own.
            w = self.scheduler.waiting_for(row.id) or self.scheduler.array_waits.get(row.id)
            reasons = w.reasons if w is not None else (NOT_YET,)
            d["reasons"] = [r.text for r in reasons]
            # The structure beside the sentences; a listing leaves out the sentences a
            # second time (10,000 waiting jobs are 10,000 of these).
            d["why"] = [r.as_dict() if full else r.as_dict(text=False) for r in reasons]
            d["eta"] = w.eta if w else None
            if w is not None and w.predicted:
                d["eta_predicted"] = True  # it counts on learned runtimes, not only limits
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
        return self._full(row, caller, d) if full else d

    def _full(self, row: JobRow, caller: Caller, d: dict[str, Any]) -> dict[str, Any]:
        if row.time_limit is None:
            # What "the default" is here, so `show` can say it (it differs per cluster).
            d["default_time_limit"] = self.scheduler.config.default_time_limit_s
        if row.sig and not row.state.terminal and caller.may_see(row.user):
            # Learned runtime (issue 19): what runs like it took; the owner's to see.
            p = self.scheduler.history.predict(row.user, row.sig)
            if p is not None:
                d["predicted"] = {
                    "seconds": round(p.seconds, 1), "high": round(p.high, 1), "runs": p.runs, "confident": p.confident
                }  # fmt: skip
        return detail(row, caller, d, self.store.events(row.id), str(self.logs.path(row.id)))

    def unstarted_task(self, array: JobRow, index: int, caller: Caller) -> dict[str, Any]:
        """`labq show 42.7` before task 7 has started: the array's view, as that task."""
        d = self.job(array, caller, full=True)
        d.pop("array", None)
        d.update(ref=f"{array.id}.{index}", array_id=array.id, array_index=index, start_time=None, node_name=None)
        # A task's spec, as it will run: not the array's (a rerun of it is one job).
        d["spec"] = {k: v for k, v in d["spec"].items() if k not in _ARRAY_ONLY}
        if caller.may_see(array.user):
            spec = array.job_spec().task_spec(array.id, index)
            d["spec"] = {**d["spec"], "command": spec["command"], "env": spec["env"]}
        d["events"] = []
        if array.state is JobState.PENDING:
            d["reasons"] = [f"task {array.id}.{index} has not started yet"] + list(d.get("reasons") or [])
        return d

    def listing(
        self,
        caller: Caller,
        states: tuple[JobState, ...] | None,
        user: str | None,
        limit: int | None,
        after: int | None,
        tasks: bool = False,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of summaries (never specs) and where the next page starts. An array is
        one row with its tasks in numbers; `tasks` lists each started task too."""
        rows = self.store.jobs(states=states, user=user, limit=limit, after=after, with_spec=False, tasks=tasks)
        counts = self.store.array_counts([r.id for r in rows if r.array_size])
        jobs = [self.job(j, caller, counts=counts.get(j.id, {})) for j in rows]
        d = self.scheduler.decision
        rank = {jid: i for i, jid in enumerate(d.order)} if d else {}
        for j in jobs:
            j["rank"] = rank.get(j["id"])
        more = after is not None and limit is not None and len(rows) == limit
        return jobs, rows[-1].id if more else None


NOT_YET = Reason("scheduling", "scheduling: not yet considered")
