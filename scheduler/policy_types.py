"""The policy's plain data: what a pass is given (Snapshot) and what it decides (Decision).

Frozen dataclasses and NamedTuples, no behaviour: the daemon and the simulator build
Snapshots, `policy.schedule()` turns one into a Decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from scheduler.quota import Quota, QuotaBook
from scheduler.shapes import Reason

INF = float("inf")


class PendingJob(NamedTuple):
    # A NamedTuple, not a frozen dataclass: a pass over 10,000 waiting jobs builds one
    # each, and a frozen dataclass pays an object.__setattr__ per field.
    id: int
    user: str
    gpus: int
    submit_time: float
    priority: int = 0
    time_limit: float | None = None
    requeued: bool = False
    cpus: float = 0.0
    memory: int = 0
    # An array's waiting tasks are one entry: this many identical tasks, each placed as
    # a job of its own (a Start per task, all with the array's id).
    count: int = 1  # type: ignore[assignment]  # (shadows tuple.count, which nothing here uses)
    # Only these nodes (ids) may run it (None: any). The daemon sets it for a job that
    # needs a directory not every node has (no shared filesystem, issue 14); `where`
    # then says why, in words the owner may see, for when none of them can hold it.
    nodes: frozenset[str] | None = None
    where: str = ""
    # Its predicted runtime in seconds when the prediction is confident (predict.py:
    # similar runs that have finished agree), else None. At most its limit, it stands
    # for the limit in reservations, backfill and ETAs: a job without --time can fill
    # a hole its 24 h default never could. It is never a limit: a job that runs past
    # it is not stopped (the reservation it would delay moves, pass after pass).
    expected: float | None = None
    # Submitted --preemptible: it runs only on GPUs no other job can use now and is
    # the first to go when one can (scavenger mode).
    preemptible: bool = False


class RunningJob(NamedTuple):
    # A NamedTuple (as PendingJob): every pass walks every running job, and unpacking a
    # tuple is several times cheaper than reading a dozen attributes.
    id: int
    user: str
    gpus: int
    node: str
    start_time: float
    time_limit: float | None = None
    # Set once the job was asked to stop (preempted or cancelled): its GPUs free up by then.
    stop_deadline: float | None = None
    cpus: float = 0.0
    memory: int = 0
    # A job larger than one node: these whole nodes too (its remainder is on `node`).
    more_nodes: tuple[str, ...] = ()
    # Its predicted runtime (as PendingJob.expected): when its GPUs are expected back.
    expected: float | None = None
    # Started as a scavenger (--preemptible, or over its owner's budget with `scavenge`):
    # any job that needs its GPUs takes them, and it counts toward nobody's guarantee.
    preemptible: bool = False


@dataclass(frozen=True)
class NodeInfo:
    id: str
    gpus: int
    name: str = ""
    cpus: float = INF
    memory: float = INF
    schedulable: bool = True  # False while drained or unhealthy
    gpu_type: str = ""  # gputypes.gpu_type of its GPUs ('' unknown): per-type quota caps

    @property
    def label(self) -> str:
        return self.name or self.id[:12]


@dataclass(frozen=True)
class PolicyConfig:
    default_time_limit: float = 24 * 3600.0
    min_runtime: float = 600.0
    grace_period: float = 30.0
    preemption: bool = True
    backfill: bool = True
    # Age adds up to `age_weight` to a researcher's rank after `age_max` seconds of waiting,
    # so a job is never starved forever by others with lower usage.
    age_weight: float = 0.1
    age_max: float = 7 * 86400.0
    # Estimated start times are computed for this many waiting jobs per pass; deeper in
    # the queue an estimate is more noise than information and costs time.
    eta_depth: int = 100
    # Full reason texts (with who ranks ahead) for this many waiting jobs; deeper ones
    # say how many rank ahead without naming them, which keeps a pass O(n log n).
    reason_depth: int = 200
    # Jobs larger than a node take whole free nodes plus a best-fit remainder (the
    # simulator's traces have 32-GPU jobs; the daemon's gangs, config allow_multi_node).
    multi_node: bool = False
    # A researcher's own queue, after requeued jobs and priority: shortest expected run
    # first (a confident learned runtime, else the time limit), then oldest; a job that
    # has waited `hint_age_max` goes before its owner's shorter ones. False (default):
    # oldest first. On the Philly replays it cut mean JCT 2% under load (not at x1.5)
    # and made the replay up to 30% slower (more passes); docs/benchmarks.md.
    duration_hint: bool = False
    hint_age_max: float | None = 7 * 86400.0
    # False skips the reason texts, ETAs and the shares table (the simulator needs only
    # the decisions, which are the same either way) and stops a pass once nothing more
    # can start. Then only `starts` and `preemptions` are whole: `waiting` and `order`
    # leave out jobs that were skipped, and `shares` is empty (the daemon always explains).
    explain: bool = True


@dataclass(frozen=True)
class Snapshot:
    now: float
    pending: tuple[PendingJob, ...]
    running: tuple[RunningJob, ...]
    nodes: tuple[NodeInfo, ...]
    usage: Mapping[str, float] = field(default_factory=dict)  # decayed GPU-seconds
    week_usage: Mapping[str, float] = field(default_factory=dict)  # GPU-seconds, last 7 days
    quotas: QuotaBook = QuotaBook()
    config: PolicyConfig = PolicyConfig()
    # `running` summed by node and researcher, kept between passes by a caller that sees
    # every start and stop (the simulator); it must hold exactly `running`, in its order.
    # It is live: the caller changes it after the pass, so a Snapshot kept for later must
    # drop it (replace(snap, running_index=None)). None: the pass sums them itself (the
    # daemon). A policy_running.RunningIndex, typed Any because that module builds on this.
    running_index: Any = field(default=None, compare=False, repr=False)
    # `pending` by researcher in their own order, kept the same way (the simulator): a
    # policy_queue.PendingIndex holding exactly `pending`. Not used with duration_hint
    # (that order moves with the clock). None: the pass groups and sorts them itself.
    pending_index: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Start:
    job_id: int
    node: str
    more_nodes: tuple[str, ...] = ()  # whole nodes, for a multi-node job
    preemptible: bool = False  # started as a scavenger


@dataclass(frozen=True)
class Preempt:
    job_id: int
    for_job: int
    reason: str


class Waiting(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: one is built per waiting job per
    # pass, and this is several times cheaper to construct.
    reasons: tuple[Reason, ...]
    eta: float | None = None  # None: cannot be estimated (quota, budget, too deep)
    # The ETA counts on learned runtimes (a running job's, or one started this pass),
    # not only on limits: shown as "predicted".
    predicted: bool = False


@dataclass(frozen=True)
class UserShare:
    user: str
    shares: float
    usage: float  # effective (decayed + entry penalty), GPU-seconds
    factor: float
    held_gpus: int
    running_jobs: int
    pending_jobs: int
    quota: Quota


@dataclass(frozen=True)
class Decision:
    starts: tuple[Start, ...]
    preemptions: tuple[Preempt, ...]
    waiting: Mapping[int, Waiting]
    shares: Mapping[str, UserShare]
    order: tuple[int, ...]  # pending job ids in rank order
