"""The data shapes every part of labq shares: the daemon, the client, the CLI, the UI.

Standard library only (the client imports it, and must start fast). What crosses the
API is JSON; these types say what that JSON holds, so a field is named once:

- `JobState` and its groups; `Outcome`, how an attempt ended on its node (an outcome
  the daemon does not know is an error, never a silent LOST);
- `Reason`: why a job waits, as a kind (quota, resources, reclaim, ...), the numbers
  behind it and the sentence; front ends branch on `kind`, never on the words;
- the views the API returns (TypedDicts): a job's summary and detail, a node and its
  GPUs, a quota row, a doctor check.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple, TypedDict


class JobState(StrEnum):
    PENDING = "PENDING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"
    LOST = "LOST"
    NODE_LOST = "NODE_LOST"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """Holding (or about to hold) GPUs."""
        return self in (JobState.STARTING, JobState.RUNNING)


TERMINAL = frozenset(
    {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.LOST,
        JobState.NODE_LOST,
    }
)
ACTIVE = (JobState.STARTING, JobState.RUNNING)
WAITING = (JobState.PENDING, JobState.PREEMPTED)
# The states `labq queue` lists by default.
QUEUED = (JobState.PENDING, JobState.STARTING, JobState.RUNNING, JobState.PREEMPTED)

# The same groups as plain strings, for code that holds JSON.
ACTIVE_NAMES = tuple(s.value for s in ACTIVE)
WAITING_NAMES = tuple(s.value for s in WAITING)
TERMINAL_NAMES = tuple(s.value for s in JobState if s in TERMINAL)
STATE_NAMES = tuple(s.value for s in JobState)


class Outcome(StrEnum):
    """How an attempt ended, as the node reports it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    LOST = "lost"  # the Ray task ended without a result (node died, cancelled in Ray)


class Reason(NamedTuple):
    """Why a job waits. `kind` is one of KINDS; `data` holds the numbers in the text."""

    kind: str
    text: str
    data: tuple[tuple[str, Any], ...] = ()

    def as_dict(self, text: bool = True) -> ReasonView:
        out: ReasonView = {"kind": self.kind}
        if text:
            out["text"] = self.text
        if self.data:
            out["data"] = dict(self.data)
        return out


# The kinds of waiting reason, in the order a user meets them.
KINDS = (
    "scheduling",  # not yet considered by a pass
    "drained",  # no schedulable node at all
    "quota",  # a cap of the owner's quota (GPUs, jobs)
    "budget",  # the owner's weekly GPU-hours are used up
    "resources",  # not enough free GPUs/CPUs/memory on any node
    "placement",  # no node it may run on could hold it (e.g. its directory is on none)
    "reclaim",  # GPUs are being reclaimed for it (guarantee)
    "backfill",  # it would delay a job with a reservation
    "fairshare",  # jobs of others rank ahead of it
    "dependency",  # it waits for other jobs to end (--after / --after-any)
    "array",  # an array whose %N cap is full, or whose tasks have all started
)


class ReasonView(TypedDict, total=False):
    kind: str
    text: str
    data: dict[str, Any]


class EventView(TypedDict):
    time: float
    old_state: str | None
    new_state: str
    reason: str


class GpuUse(TypedDict, total=False):
    sampled_s: float
    busy_gpu_s: float
    idle_gpu_s: float
    util_mean: float | None
    mem_peak: int
    util_now: float | None
    mem_now: int | None
    idle_for_s: float | None


class JobSummary(TypedDict, total=False):
    """A row of `GET /v1/jobs` (and the head of `GET /v1/jobs/ID`)."""

    id: int
    user: str
    name: str
    gpus: int
    priority: int
    time_limit: float | None
    state: str
    reason: str
    submit_time: float
    start_time: float | None
    end_time: float | None
    attempt: int
    node: str | None
    node_name: str | None
    gpu_ids: str | None
    exit_code: int | None
    signal: int | None
    requeued: bool
    kind: str  # "batch", or an interactive session: "shell", "notebook"
    pid: int | None  # the owner and admins only
    reasons: list[str]  # the sentences of `why`, or the stop/end reason
    why: list[ReasonView]  # a pending job's reasons, structured
    eta: float | None
    wait_s: float
    runtime_s: float
    flags: list[str]
    gpu: GpuUse | None
    rank: int | None


class LogFacts(TypedDict):
    bytes: int | None
    removed: float | None
    readable: bool


class JobDetail(JobSummary, total=False):
    """`GET /v1/jobs/ID`: the summary plus what the caller may see of the spec."""

    spec: dict[str, Any]  # command, workdir, env only for the owner and admins
    private: bool
    events: list[EventView]
    log: LogFacts
    log_path: str  # admins only


class Check(TypedDict):
    check: str
    ok: bool
    detail: str
