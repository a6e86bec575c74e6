"""Replay a GPU-cluster trace, event by event, through a scheduling policy.

labq's own policies ("fairshare", "fairshare-nopreempt") call `policy.schedule()`,
the very function the daemon runs, on a Snapshot built from the simulated cluster.
The baselines (FIFO, oracle SJF/SRTF, Tiresias-style 2D-LAS, static partitions) live
here only; they exist to be compared against.

Time is simulated: events are arrivals, completions and the ends of preemption grace
periods. After the events of one instant the policy gets a pass if anything could
change (a job waits and a GPU is free, or someone under their guarantee waits).
No clock is read here; the result is the same on every run.
"""

from __future__ import annotations

import bisect
import heapq
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scheduler.gputypes import matching
from scheduler.policy import NodeInfo, PendingJob, PolicyConfig, RunningJob, Snapshot, placement, schedule
from scheduler.policy_queue import PendingIndex
from scheduler.policy_running import RunningIndex
from scheduler.predict import RuntimeHistory
from scheduler.quota import QuotaBook, quota_book_from_dict
from scheduler.simrecords import SimJob, SimResult, jain, summarize
from scheduler.traces import TRACE_COLUMNS, TraceError, TraceJob, history_trace, load_trace, shares_from_sizes

__all__ = [
    "POLICIES",
    "SimJob",
    "SimResult",
    "jain",
    "summarize",
    "TRACE_COLUMNS",
    "TraceError",
    "TraceJob",
    "history_trace",
    "load_trace",
    "replay",
    "shares_from_sizes",
]

POLICIES = ("fifo", "sjf", "srtf", "tiresias", "partition", "fairshare", "fairshare-nopreempt")


def quotas_from_shares(shares: Mapping[str, float], total_gpus: int, guarantee: bool = True) -> QuotaBook:
    """Each tenant's share of the pool, and (for reclaim) a guarantee of that many GPUs."""
    total = sum(shares.values())
    people: dict[str, dict[str, Any]] = {}
    for t, s in shares.items():
        q: dict[str, Any] = {"shares": s}
        if guarantee:
            q["guaranteed_gpus"] = int(total_gpus * s / total)
        people[t] = q
    return quota_book_from_dict({"researchers": people})


def _kind(gpus: int) -> str:
    return f"gpus:{gpus}"


def checkpoint_cost(gpus: int) -> float:
    """Seconds to save and restore a preempted job, as Helios models it."""
    return 7.0 if gpus <= 1 else 30.0 if gpus <= 8 else 60.0


# -- the simulated cluster ---------------------------------------------------------------------------


class Cluster:
    """Free GPUs per node, bucketed by free count so best fit costs O(GPUs per node)."""

    def __init__(self, nodes: list[NodeInfo]) -> None:
        self.nodes = nodes
        self.per = max(n.gpus for n in nodes)
        self.free = {n.id: n.gpus for n in nodes}
        self.total_free = sum(self.free.values())
        self.buckets: list[dict[str, None]] = [{} for _ in range(self.per + 1)]
        for nid, f in self.free.items():
            self.buckets[f][nid] = None

    def copy(self) -> Cluster:
        c = Cluster.__new__(Cluster)
        c.nodes, c.per, c.free, c.total_free = self.nodes, self.per, dict(self.free), self.total_free
        c.buckets = [dict(b) for b in self.buckets]
        return c

    @property
    def gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    def best_fit(self, gpus: int, only: frozenset[str] | None = None) -> tuple[tuple[str, int], ...] | None:
        """Single node with the fewest free GPUs that fits; for big jobs, whole nodes +
        remainder. `only`: these nodes alone (a job that wants a GPU type)."""
        if gpus > self.total_free:
            return None
        if gpus <= self.per:
            for k in range(gpus, self.per + 1):
                for nid in self.buckets[k]:
                    if only is None or nid in only:
                        return ((nid, gpus),)
            return None
        whole, rest = divmod(gpus, self.per)
        full = [nid for nid in self.buckets[self.per] if only is None or nid in only][:whole]
        if len(full) < whole:
            return None
        out = [(nid, self.per) for nid in full]
        if rest:
            for k in range(rest, self.per + 1):
                for nid in self.buckets[k]:
                    if nid not in full and (only is None or nid in only):
                        return (*out, (nid, rest))
            return None
        return tuple(out)

    def largest_free(self) -> int:
        return next((k for k in range(self.per, 0, -1) if self.buckets[k]), 0)

    def _set(self, nid: str, f: int) -> None:
        del self.buckets[self.free[nid]][nid]
        self.total_free += f - self.free[nid]
        self.free[nid] = f
        self.buckets[f][nid] = None

    def take(self, placement: Iterable[tuple[str, int]]) -> None:
        for nid, g in placement:
            assert self.free[nid] >= g
            self._set(nid, self.free[nid] - g)

    def give(self, placement: Iterable[tuple[str, int]]) -> None:
        for nid, g in placement:
            self._set(nid, self.free[nid] + g)


def make_nodes(count: int, gpus_per_node: int, types: str = "") -> list[NodeInfo]:
    """`count` nodes; or, with `types` ("40:h100,40:a100"), that many of each GPU type."""
    if not types:
        return [NodeInfo(id=f"n{i:03d}", gpus=gpus_per_node, name=f"node-{i}") for i in range(count)]
    out: list[NodeInfo] = []
    for part in types.split(","):
        n, _, t = part.partition(":")
        if not n.strip().isdigit() or not t.strip():
            raise TraceError(f"--nodes {types}: give N:TYPE[,N:TYPE] (e.g. 40:h100,40:a100) or a number")
        for _ in range(int(n)):
            i = len(out)
            out.append(NodeInfo(id=f"n{i:03d}", gpus=gpus_per_node, name=f"node-{i}", gpu_type=t.strip().lower()))
    return out


# -- policies ------------------------------------------------------------------------------------------
# A policy looks at the simulation at time `now` and returns
# (starts: [(job, placement)], preemptions: [job]).
Starts = list[tuple[SimJob, tuple[tuple[str, int], ...]]]
Decide = Callable[["Simulation", float], tuple[Starts, list[SimJob]]]


def _greedy(sim: Simulation, order: Iterable[SimJob], strict: bool) -> Starts:
    scratch = sim.cluster.copy()
    out: Starts = []
    for j in order:
        place = scratch.best_fit(j.trace.gpus, sim.only.get(j.trace.gpu_type))
        if place is None:
            if strict or scratch.total_free == 0:
                break
            continue
        scratch.take(place)
        out.append((j, place))
    return out


def fifo(sim: Simulation, now: float) -> tuple[Starts, list[SimJob]]:
    return _greedy(sim, sim.queued(), strict=True), []


def sjf(sim: Simulation, now: float) -> tuple[Starts, list[SimJob]]:
    return _greedy(sim, sim.queued(), strict=False), []


def _preemptive(
    sim: Simulation, now: float, keys: Callable[[Simulation, float], list[tuple[Any, int]]]
) -> tuple[Starts, list[SimJob]]:
    """Preemptive priority: start waiting jobs in key order where they fit; then, if the
    best job still waiting outranks running ones, preempt the worst-ranked of those
    (worst first) until it fits, and only if it then fits.

    Waiting jobs' keys do not change while they wait, so they come from the
    simulation's sorted queue; only the running jobs are keyed per pass.
    """
    starts = _greedy(sim, sim.queued(), strict=False)
    started = {j.id for j, _ in starts}
    blocked = next((j for j in sim.queued() if j.id not in started), None)
    if blocked is None or not sim.running:
        return starts, []
    bkey = sim.order_key(sim, blocked) if sim.order_key else None
    worse = sorted((k for k in keys(sim, now) if bkey is not None and k[0] > bkey), reverse=True)
    if not worse:
        return starts, []
    scratch = sim.cluster.copy()
    for _, place in starts:
        scratch.take(place)
    victims: list[SimJob] = []
    for _, jid in worse:
        j = sim.running[jid]
        scratch.give(j.placement)
        victims.append(j)
        if scratch.best_fit(blocked.trace.gpus, sim.only.get(blocked.trace.gpu_type)) is not None:
            return starts, victims
    return starts, []  # even all of them would not make room: preempting is pure loss


def _srtf_keys(sim: Simulation, now: float) -> list[tuple[Any, int]]:
    # Inlined sim.remaining(): this runs for every running job on every pass.
    return [
        ((j.start + j.remaining - now if j.start is not None else j.remaining, j.trace.submit, i), i)
        for i, j in sim.running.items()
    ]


def srtf(sim: Simulation, now: float) -> tuple[Starts, list[SimJob]]:
    return _preemptive(sim, now, _srtf_keys)


# Tiresias (NSDI'19) discretized 2D-LAS: queues by attained GPU-seconds, FIFO within one.
LAS_THRESHOLDS = (3600.0 * 1, 3600.0 * 10)


def _las_queue(attained: float) -> int:
    return sum(1 for t in LAS_THRESHOLDS if attained >= t)


def _las_keys(sim: Simulation, now: float) -> list[tuple[Any, int]]:
    t1, t2 = LAS_THRESHOLDS
    out = []
    for i, j in sim.running.items():
        a = j.attained + ((now - j.start) * j.trace.gpus if j.start is not None else 0.0)
        out.append((((a >= t1) + (a >= t2), j.trace.submit, i), i))
    return out


def tiresias(sim: Simulation, now: float) -> tuple[Starts, list[SimJob]]:
    return _preemptive(sim, now, _las_keys)


def partition(sim: Simulation, now: float) -> tuple[Starts, list[SimJob]]:
    """Static partitions: each tenant may hold at most its share of the GPUs, no borrowing.

    A job larger than its tenant's partition may run only when the tenant holds nothing
    (else it could never run at all).
    """
    held = dict(sim.held)  # kept up to date by the simulation as jobs start and stop
    free = sim.cluster.copy()
    blocked: set[str] = set()
    out: Starts = []
    waiting = sum(1 for n in sim.waiting_by_tenant.values() if n > 0)
    for j in sim.queued():
        if len(blocked) >= waiting or free.total_free == 0:
            break  # every partition is blocked at its head: nothing further can start
        t = j.trace.tenant
        if t in blocked:
            continue  # FIFO within a partition
        cap = sim.partition_size.get(t, 0)
        h = held.get(t, 0)
        if h + j.trace.gpus > cap and h > 0:
            blocked.add(t)
            continue
        place = free.best_fit(j.trace.gpus, sim.only.get(j.trace.gpu_type))
        if place is None:
            blocked.add(t)
            continue
        free.take(place)
        held[t] = h + j.trace.gpus
        out.append((j, place))
    return out, []


def fairshare(sim: Simulation, now: float) -> tuple[Starts, list[SimJob]]:
    """labq's own policy: the daemon's `schedule()` on a Snapshot of the simulation."""
    decision = schedule(sim.snapshot(now))
    starts: Starts = []
    per = {n.id: n.gpus for n in sim.cluster.nodes} if decision.starts else {}
    for s in decision.starts:
        j = sim.pending[s.job_id]
        j.scavenging = s.preemptible
        starts.append((j, placement(s, j.trace.gpus, per)))
    preempt = [sim.running[p.job_id] for p in decision.preemptions]
    return starts, preempt


# The order each baseline keeps its waiting jobs in. Stable while a job waits: a
# waiting job's remaining time and attained service do not change.
ORDER_KEYS: dict[str, Callable[[Simulation, SimJob], Any]] = {
    "fifo": lambda sim, j: (not j.requeued, j.trace.submit, j.id),
    "partition": lambda sim, j: (not j.requeued, j.trace.submit, j.id),
    "sjf": lambda sim, j: (j.trace.duration, j.trace.submit, j.id),
    "srtf": lambda sim, j: (j.remaining, j.trace.submit, j.id),
    "tiresias": lambda sim, j: (_las_queue(j.attained), j.trace.submit, j.id),
}

# Running jobs' keys move with time; these key them all at `now` (preemptive baselines).
RUNNING_KEYS: dict[str, Callable[[Simulation, float], list[tuple[Any, int]]]] = {
    "srtf": _srtf_keys,
    "tiresias": _las_keys,
}

POLICY_FUNCS: dict[str, Decide] = {
    "fifo": fifo,
    "sjf": sjf,
    "srtf": srtf,
    "tiresias": tiresias,
    "partition": partition,
    "fairshare": fairshare,
    "fairshare-nopreempt": fairshare,
}


# -- the simulation ---------------------------------------------------------------------------------------


@dataclass
class Simulation:
    jobs: list[TraceJob]
    nodes: list[NodeInfo]
    policy: str
    quotas: QuotaBook = QuotaBook()
    config: PolicyConfig = PolicyConfig()
    shares: Mapping[str, float] = field(default_factory=dict)
    grace: float = 30.0
    half_life: float = 7 * 86400.0
    # Learned runtimes (predict.py) for backfill, reservations and ETAs; False: every
    # job is taken to run to its limit, as before issue 19.
    predict: bool = True
    # Every Nth job (by id) that has to wait on arrival: its ETA then, from an explained
    # pass, against when it really started (eta_errors()). 0: none.
    eta_every: int = 0
    # Tenants whose every job is submitted --preemptible (scavengers).
    scavengers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.policy not in POLICY_FUNCS:
            raise TraceError(f"unknown policy {self.policy!r} (known: {', '.join(POLICIES)})")
        self.cluster = Cluster(self.nodes)
        too_big = [j for j in self.jobs if j.gpus > self.cluster.gpus]
        if too_big:
            j = too_big[0]
            raise TraceError(
                f"job {j.name} asks for {j.gpus} GPUs but the simulated cluster has {self.cluster.gpus}"
            )
        # A typed cluster: the nodes each GPU type a job may want is on (gputypes.matching,
        # as the daemon narrows a job that wants one).
        view = [(n.id, n.gpu_type, ()) for n in self.nodes]
        self.only: dict[str, frozenset[str]] = {}
        for t in sorted({j.gpu_type for j in self.jobs if j.gpu_type}):
            self.only[t], why = matching(f"{t}|", view)
            if not self.only[t]:
                raise TraceError(f"the trace asks for {why.removeprefix('no node has ')}: no simulated node has them")
        self.decide = POLICY_FUNCS[self.policy]
        self.order_key = ORDER_KEYS.get(self.policy)
        self.queue: list[tuple[Any, int]] = []  # (order key, job id) of waiting jobs, sorted
        self.held: dict[str, int] = {}
        self.waiting_by_tenant: dict[str, int] = {}
        # GPU counts of each tenant's waiting jobs: the smallest decides whether a pass
        # could start or reclaim anything (_worth_a_pass).
        self.waiting_gpus: dict[str, Counter[int]] = {}
        self.sim_jobs = {j.id: SimJob(j, j.duration) for j in self.jobs}
        self.overhead_gpu_s = 0.0
        self.pending: dict[int, SimJob] = {}
        self.running: dict[int, SimJob] = {}
        self._pending_objs: dict[int, PendingJob] = {}
        self._running_objs: dict[int, RunningJob] = {}
        # _running_objs summed per node and tenant, kept as jobs start and stop rather than
        # redone by every pass (policy_running.py; the same sums either way).
        self._nodes = tuple(self.nodes)
        self._index = RunningIndex(self._nodes, self.config.default_time_limit)
        # _pending_objs by tenant, in each one's order: for schedule() (fairshare) only; a
        # FIFO replay's queue of tens of thousands would pay for inserts it never uses.
        self._queues: PendingIndex | None = PendingIndex() if self.decide is fairshare else None
        self.events: list[tuple[float, int, int, int]] = []  # (time, kind, seq, job id)
        self._seq = 0
        self.busy_gpu_s = 0.0
        self.passes = 0
        total = sum(self.shares.values()) or 1.0
        self.partition_size = {t: max(1, int(self.cluster.gpus * s / total)) for t, s in self.shares.items()}
        # Decayed usage, kept incrementally: finished work decays as a whole; running
        # jobs contribute g/k * (1 - e^{-k (now - start)}) = (A - e^{-k now} B) / k.
        self._k = math.log(2) / self.half_life
        self._done_usage: dict[str, float] = {}
        self._done_at = 0.0
        self._run_a: dict[str, float] = {}
        self._run_b: dict[str, float] = {}
        self._t0 = self.jobs[0].submit if self.jobs else 0.0
        self._guarantees: dict[str, int] = {}
        # Runtimes learned as jobs finish in simulated time (a trace knows a job only by
        # its tenant and GPU count): a waiting job's `expected`, never its true duration.
        self.history = RuntimeHistory()
        self.etas: dict[int, float] = {}

    # -- views the policies use ---------------------------------------------------------------------
    def queued(self) -> Iterator[SimJob]:
        """Waiting jobs in the policy's order (kept sorted as jobs come and go)."""
        return (self.sim_jobs[i] for _, i in self.queue)

    def active(self) -> list[SimJob]:
        return list(self.running.values())

    def remaining(self, j: SimJob, now: float) -> float:
        if j.start is not None and j.id in self.running:
            return max(0.0, j.remaining - (now - j.start))
        return j.remaining

    def attained(self, j: SimJob, now: float) -> float:
        run = (now - j.start) * j.trace.gpus if j.start is not None and j.id in self.running else 0.0
        return j.attained + run

    def usage(self, now: float) -> dict[str, float]:
        decay = math.exp(-self._k * (now - self._done_at))
        out = {u: v * decay for u, v in self._done_usage.items()}
        e = math.exp(-self._k * (now - self._t0))
        for u, a in self._run_a.items():
            out[u] = out.get(u, 0.0) + max(0.0, (a - e * self._run_b[u]) / self._k)
        return out

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(
            now=now,
            pending=tuple(self._pending_objs.values()),
            running=tuple(self._running_objs.values()),
            nodes=self._nodes,
            usage=self.usage(now),
            quotas=self.quotas,
            config=self.config,
            running_index=self._index,
            pending_index=self._queues,
        )

    # -- events ------------------------------------------------------------------------------------------
    ARRIVE, FINISH, STOPPED, MATURE = 0, 1, 2, 3

    def _push(self, t: float, kind: int, job_id: int) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, kind, self._seq, job_id))

    def _usage_start(self, j: SimJob, now: float) -> None:
        u, g = j.trace.tenant, j.trace.gpus
        self._run_a[u] = self._run_a.get(u, 0.0) + g
        self._run_b[u] = self._run_b.get(u, 0.0) + g * math.exp(self._k * (now - self._t0))

    def _usage_end(self, j: SimJob, now: float) -> None:
        assert j.start is not None
        u, g = j.trace.tenant, j.trace.gpus
        self._run_a[u] -= g
        self._run_b[u] -= g * math.exp(self._k * (j.start - self._t0))
        decay = math.exp(-self._k * (now - self._done_at))
        for k in self._done_usage:
            self._done_usage[k] *= decay
        self._done_at = now
        self._done_usage[u] = (
            self._done_usage.get(u, 0.0) + g * (1 - math.exp(-self._k * (now - j.start))) / self._k
        )

    def _enqueue(self, j: SimJob) -> None:
        self.pending[j.id] = j
        t = j.trace.tenant
        self.waiting_by_tenant[t] = self.waiting_by_tenant.get(t, 0) + 1
        self.waiting_gpus.setdefault(t, Counter())[j.trace.gpus] += 1
        if self.order_key is not None:
            bisect.insort(self.queue, (self.order_key(self, j), j.id))
        expected = self._expected(j)
        self._pending_objs[j.id] = obj = PendingJob(
            id=j.id, user=j.trace.tenant, gpus=j.trace.gpus, submit_time=j.trace.submit, requeued=j.requeued,
            expected=expected, preemptible=j.trace.tenant in self.scavengers,
            nodes=self.only.get(j.trace.gpu_type), where=f"{j.trace.gpu_type} GPUs only" if j.trace.gpu_type else "",
        )  # fmt: skip
        if self._queues is not None:
            self._queues.add(obj)

    def _expected(self, j: SimJob) -> float | None:
        """A confident prediction of what is left of the job's run (PendingJob.expected)."""
        if not self.predict:
            return None
        p = self.history.predict(j.trace.tenant, _kind(j.trace.gpus))
        if p is None or not p.confident:
            return None
        ran = j.attained / j.trace.gpus  # a requeued job's attempts so far
        return max(p.seconds - ran, 0.1 * p.seconds)

    def _start(self, j: SimJob, placement: tuple[tuple[str, int], ...], now: float) -> None:
        del self.pending[j.id]
        t = j.trace.tenant
        self.waiting_by_tenant[t] -= 1
        sizes = self.waiting_gpus[t]
        sizes[j.trace.gpus] -= 1
        if not sizes[j.trace.gpus]:
            del sizes[j.trace.gpus]
        self.held[t] = self.held.get(t, 0) + j.trace.gpus
        if self.order_key is not None:
            entry = (self.order_key(self, j), j.id)
            i = bisect.bisect_left(self.queue, entry)
            assert self.queue[i] == entry
            del self.queue[i]
        obj = self._pending_objs.pop(j.id, None)
        if obj is not None and self._queues is not None:
            self._queues.remove(obj)
        self.cluster.take(placement)
        j.start, j.placement, j.stop_at = now, placement, None
        if j.first_start is None:
            j.first_start = now
        self.running[j.id] = j
        self._running_objs[j.id] = r = RunningJob(
            id=j.id,
            user=j.trace.tenant,
            gpus=j.trace.gpus,
            node=placement[0][0],
            start_time=now,
            more_nodes=tuple(n for n, _ in placement[1:]),
            expected=None if obj is None else obj.expected,
            preemptible=j.scavenging,
        )
        self._index.add(r)
        self._usage_start(j, now)
        self._push(now + j.remaining, self.FINISH, j.id)
        if self.config.preemption and self.decide is fairshare and not j.scavenging:
            # Once past min_runtime it may be reclaimed: the daemon's next pass (one a
            # second) would see that; here it is an event of its own.
            self._push(now + self.config.min_runtime, self.MATURE, j.id)

    def _preempt(self, j: SimJob, now: float) -> None:
        if j.stop_at is not None:
            return
        j.stop_at = now + self.grace
        self._running_objs[j.id] = r = self._running_objs[j.id]._replace(stop_deadline=j.stop_at)
        self._index.replace(r)
        self._push(j.stop_at, self.STOPPED, j.id)

    def _stop(self, j: SimJob, now: float, finished: bool, lost_s: float = 0.0) -> None:
        """End the current attempt; `lost_s` of it (the grace period) did no work."""
        assert j.start is not None
        ran = now - j.start
        g = j.trace.gpus
        self.busy_gpu_s += ran * g
        self._usage_end(j, now)
        self.cluster.give(j.placement)
        self.held[j.trace.tenant] -= j.trace.gpus
        del self.running[j.id]
        del self._running_objs[j.id]
        self._index.remove(j.id)
        j.attained += ran * g
        # An attempt first restores its checkpoint, then works; the grace period after a
        # SIGTERM (the job saves its checkpoint) does no work.
        effective = max(0.0, ran - lost_s)
        paid = min(j.restore, effective)
        done = min(j.work_left, effective - paid)
        j.restore -= paid
        j.work_left -= done
        j.run_gpu_s += done * g
        self.overhead_gpu_s += (ran - done) * g
        if finished:
            j.work_left, j.restore = 0.0, 0.0
            j.end = now
            self.history.add(j.trace.tenant, _kind(g), j.trace.duration)
        else:
            j.restore += checkpoint_cost(g)
            j.preemptions += 1
            j.requeued = True
            j.start = None
            self._enqueue(j)

    def run(self) -> SimResult:
        arrivals = iter(self.jobs)
        nxt = next(arrivals, None)
        while nxt is not None or self.events:
            t = min(
                nxt.submit if nxt is not None else math.inf, self.events[0][0] if self.events else math.inf
            )
            arrived: list[int] = []
            while nxt is not None and nxt.submit <= t:
                self._enqueue(self.sim_jobs[nxt.id])
                arrived.append(nxt.id)
                nxt = next(arrivals, None)
            # A pass runs when something happened: an arrival, or a job that finished or
            # stopped. A preempted job's finish event stays in the heap, stale: a pass at
            # its time (19,000 of the first 53,000 passes of the x1.5 replay) changed
            # nothing but the clock. The clock alone can change a decision (decayed
            # usage, aging: a review found 1 of 1,500 random traces decided otherwise,
            # 12 of 150 with scavengers); the daemon passes once a second and the replay
            # at events, so neither those stale times nor skipping them is its timing.
            # Baselines whose priorities move with time (srtf, tiresias) keep them, so
            # their numbers stay as they were.
            happened = bool(arrived) or self.policy in RUNNING_KEYS
            while self.events and self.events[0][0] <= t:
                _, kind, _, jid = heapq.heappop(self.events)
                j = self.sim_jobs[jid]
                if jid not in self.running:
                    continue
                if kind == self.FINISH and j.start is not None and abs(j.start + j.remaining - t) < 1e-6:
                    self._stop(j, t, finished=True)
                    happened = True
                elif kind == self.STOPPED and j.stop_at == t:
                    self._stop(j, t, finished=False, lost_s=self.grace)
                    happened = True
                elif kind == self.MATURE and j.start is not None and j.stop_at is None:
                    happened = happened or abs(j.start + self.config.min_runtime - t) < 1e-6
            if happened and self.pending and self._worth_a_pass(t):
                self.passes += 1
                starts, preempts = self.decide(self, t)
                for j, place in starts:
                    self._start(j, place, t)
                for j in preempts:
                    if self.policy in ("srtf", "tiresias"):
                        # Baselines stop at once; their checkpoint cost models the rest.
                        j.stop_at = t
                        self._stop(j, t, finished=False)
                    else:
                        self._preempt(j, t)
                rounds = 0
                while preempts and self.policy in ("srtf", "tiresias") and self.pending and rounds < 64:
                    # The stopped jobs' GPUs are free now: place the job they made room for.
                    rounds += 1
                    starts, preempts = self.decide(self, t)
                    for j, place in starts:
                        self._start(j, place, t)
                    for j in preempts:
                        j.stop_at = t
                        self._stop(j, t, finished=False)
            if self.eta_every and arrived:
                self._sample_etas(arrived, t)
        return self.result()

    def _sample_etas(self, arrived: list[int], now: float) -> None:
        sample = [i for i in arrived if i % self.eta_every == 0 and i in self.pending]
        if not sample or self.decide is not fairshare:
            return
        cfg = replace(self.config, explain=True, eta_depth=1 << 30, reason_depth=0)
        d = schedule(replace(self.snapshot(now), config=cfg))
        for i in sample:
            w = d.waiting.get(i)
            if w is not None and w.eta is not None:
                self.etas[i] = w.eta

    def eta_errors(self) -> dict[str, float]:
        """How far each sampled ETA was from the job's real first start (+: later)."""
        errs = [
            self.sim_jobs[i].first_start - eta  # type: ignore[operator]
            for i, eta in self.etas.items()
            if self.sim_jobs[i].first_start is not None
        ]
        if not errs:
            return {"samples": 0}
        ab = sorted(abs(e) for e in errs)
        return {
            "samples": len(errs),
            "median_abs_s": statistics.median(ab),
            "mean_abs_s": statistics.fmean(ab),
            "p90_abs_s": ab[int(0.9 * (len(ab) - 1))],
            "late_fraction": sum(e > 0 for e in errs) / len(errs),
        }

    def _worth_a_pass(self, now: float) -> bool:
        """Could a pass change anything now? Skipping one that cannot is what keeps a
        deep queue on a busy pool fast; a pass that could is never skipped."""
        running_key = RUNNING_KEYS.get(self.policy)
        if running_key is not None:
            if self.cluster.total_free > 0:
                return True
            # Only if the best waiting job outranks the worst running one.
            worst = max((k for k, _ in running_key(self, now)), default=None)
            return worst is not None and bool(self.queue) and self.queue[0][0] < worst
        if self.scavengers and any(j.scavenging for j in self.running.values()):
            return True  # any waiting job may take a scavenger's GPUs
        if self.policy == "fairshare" and self.config.preemption:
            # A reclaim needs someone waiting whose smallest job fits under their guarantee.
            for t, sizes in self.waiting_gpus.items():
                if sizes and self.held.get(t, 0) + min(sizes) <= self._guaranteed(t):
                    return True
        if self.cluster.total_free == 0:
            return False
        # A start needs a waiting job that fits the largest free block (a job over a node
        # needs a whole free node, so the block must be a whole node).
        per = self.cluster.per
        largest = self.cluster.largest_free()
        return any(sizes and min(min(sizes), per) <= largest for sizes in self.waiting_gpus.values())

    def _guaranteed(self, tenant: str) -> int:
        g = self._guarantees.get(tenant)
        if g is None:
            g = self._guarantees[tenant] = self.quotas.for_user(tenant).guaranteed_gpus
        return g

    def result(self) -> SimResult:
        return SimResult.from_jobs(
            self.policy,
            list(self.sim_jobs.values()),
            self.cluster.gpus,
            self.overhead_gpu_s,
            self.busy_gpu_s,
            self.passes,
        )


# -- running a comparison ---------------------------------------------------------------------------------


def policy_config(policy: str, base: PolicyConfig | None = None) -> PolicyConfig:
    cfg = base or PolicyConfig()
    return replace(cfg, multi_node=True, explain=False, preemption=policy == "fairshare")


def replay(
    jobs: list[TraceJob],
    nodes: int,
    gpus_per_node: int,
    policy: str,
    shares: Mapping[str, float],
    base: PolicyConfig | None = None,
    half_life: float = 7 * 86400.0,
    alone: bool = True,
    quotas: QuotaBook | None = None,
    predict: bool = True,
    scavengers: frozenset[str] = frozenset(),
    types: str = "",
) -> dict[str, Any]:
    """Replay `jobs` under `policy`; with `alone`, also each tenant on its own slice, for rho.

    `quotas`: a full quota book (guarantees, caps, budgets: what `--quotas` gives);
    without one, each tenant is guaranteed the GPUs its share of the pool is worth.
    `types`: a typed cluster ("40:h100,40:a100", instead of `nodes`); no rho then (a
    tenant's slice would not have the types its jobs want).
    """
    node_list = make_nodes(nodes, gpus_per_node, types)
    nodes = len(node_list)
    alone = alone and not types
    total = nodes * gpus_per_node
    quotas = quotas if quotas is not None else quotas_from_shares(shares, total)
    cfg = policy_config(policy, base)
    sim = Simulation(
        jobs, node_list, policy, quotas, cfg, shares, cfg.grace_period, half_life, predict, scavengers=scavengers
    )
    res = sim.run()
    alone_jct: dict[str, float] = {}
    if alone:
        alone_jct = alone_jcts(jobs, nodes, gpus_per_node, policy, shares, cfg, half_life, predict)
    out = summarize(res, alone_jct)
    out["nodes"], out["gpus_per_node"] = nodes, gpus_per_node
    out["conservation_error_gpu_s"] = sum(j.run_gpu_s for j in sim.sim_jobs.values()) - res.demand_gpu_s
    return out


def slice_nodes(share: float, total_shares: float, nodes: int, biggest_job: int, gpus_per_node: int) -> int:
    """A dedicated slice the size of a tenant's share (whole nodes; big enough for its largest job)."""
    by_share = round(nodes * share / total_shares) if total_shares > 0 else nodes
    return max(1, by_share, math.ceil(biggest_job / gpus_per_node))


def alone_jcts(
    jobs: list[TraceJob],
    nodes: int,
    gpus_per_node: int,
    policy: str,
    shares: Mapping[str, float],
    cfg: PolicyConfig,
    half_life: float,
    predict: bool = True,
) -> dict[str, float]:
    by_tenant: dict[str, list[TraceJob]] = {}
    for j in jobs:
        by_tenant.setdefault(j.tenant, []).append(j)
    total_shares = sum(shares.get(t, 0.0) for t in by_tenant) or 1.0
    out: dict[str, float] = {}
    for t, tj in sorted(by_tenant.items()):
        n = slice_nodes(shares.get(t, 0.0), total_shares, nodes, max(j.gpus for j in tj), gpus_per_node)
        quotas = quotas_from_shares({t: 1.0}, n * gpus_per_node)
        sim = Simulation(
            tj, make_nodes(n, gpus_per_node), policy, quotas, cfg, {t: 1.0}, cfg.grace_period, half_life, predict
        )
        r = sim.run()
        out[t] = r.per_tenant_jct.get(t, 0.0)
    return out
