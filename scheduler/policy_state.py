"""The plain records a pass works on: each node's free capacity and release times, and
the reservations made so far. Mutable, and never outside the `schedule()` call that
made them (policy_pass.py)."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.policy_running import Part, running_end
from scheduler.policy_types import INF, NodeInfo, PendingJob, PolicyConfig, RunningJob, Snapshot
from scheduler.quota import Quota


@dataclass(slots=True)
class NodeState:
    info: NodeInfo
    free: int
    cpus: float
    memory: float
    # (end time, gpus) of what runs here now, including jobs started in this pass (a
    # start makes a new tuple: most nodes start nothing in a pass, and this one is the
    # RunningIndex's own, shared by every pass until a job here starts or ends). Not
    # clamped: an end already past stands for the pass's now (earliest(), conflicts()).
    releases: tuple[tuple[float, int], ...]
    sorted_releases: list[tuple[float, int]] | None = None  # by PassCore.earliest(), ends past as now
    sorted_at: float = -INF  # the now sorted_releases was made at (a NodeState outlives a pass)
    sorted_raw: list[tuple[float, int]] | None = None  # releases sorted, ends past as they are
    # The earliest release here that rests on a learned runtime, not a limit: an ETA at
    # or after it is a prediction ("predicted" in the views). Possibly before the
    # pass's now (an end past), which counts as now.
    first_predicted: float = INF
    # (end, CPUs, memory) of the jobs started here in this pass that ask for CPUs or
    # memory: with the running jobs there (PassCore.room_at()), when those come back.
    started: tuple[tuple[float, float, float], ...] = ()


@dataclass
class Reservation:
    job_id: int
    node: str
    at: float
    gpus: int
    more_nodes: tuple[str, ...] = ()
    # When the reserved job ends if it uses its whole limit: a job held back so as not to
    # delay it can expect to start then at the latest, as far as that reservation goes.
    end: float = INF
    # What it asks of its (main) node beside GPUs: a job started before it must leave
    # those too, or the reservation is not kept (a review: a backfilled job took the
    # reserved job's CPUs, which then waited the backfilled job's whole limit).
    cpus: float = 0.0
    memory: float = 0.0


def can_hold(node: NodeState, j: PendingJob, gpus: int | None = None) -> bool:
    """Could this node ever run `j` (its whole capacity, not what is free now)?
    A job no node can hold must never hold a reservation: it would block every GPU
    it reserved for a start that cannot come."""
    info = node.info
    return (
        info.schedulable
        and (j.nodes is None or info.id in j.nodes)
        and info.gpus >= (j.gpus if gpus is None else gpus)
        and info.cpus >= j.cpus
        and info.memory >= j.memory
    )


class PassCore:
    """What every part of a pass shares: its state (set up by policy_pass.Pass), the
    time arithmetic (limits, predictions), quotas, and the reservations' conflicts.
    The base of policy_reclaim.Reclaimer, itself the base of Pass."""

    snap: Snapshot
    cfg: PolicyConfig
    now: float
    nodes: dict[str, NodeState]
    running_by_node: dict[str, tuple[RunningJob, ...]]
    multi_by_node: dict[str, tuple[RunningJob, ...]]
    stopping_for: set[int]  # asked to stop in this pass (a claim's victims)
    parts: dict[str, dict[int, Part]]  # RunningIndex.parts: each running job's part of each node
    max_per_node: int
    reservations: list[Reservation]
    quota_cache: dict[str, Quota]

    can_hold = staticmethod(can_hold)

    # -- time helpers -------------------------------------------------------------
    def _limit(self, limit: float | None) -> float:
        return limit if limit is not None else self.cfg.default_time_limit

    def _dur(self, j: PendingJob) -> float:
        """How long a job is taken to run: its predicted runtime when there is a
        confident one (PendingJob.expected), at most its limit; else its limit."""
        lim = j.time_limit if j.time_limit is not None else self.cfg.default_time_limit
        e = j.expected
        return lim if e is None or e >= lim else e

    def _end(self, r: RunningJob) -> float:
        end = running_end(r, self.cfg.default_time_limit)[0]
        return end if end > self.now else self.now

    def _remaining(self, r: RunningJob) -> float:
        return max(0.0, self._end(r) - self.now)

    def quota(self, user: str) -> Quota:
        q = self.quota_cache.get(user)
        if q is None:
            q = self.quota_cache[user] = self.snap.quotas.for_user(user)
        return q

    def here(self, r: RunningJob, nid: str) -> int:
        """The GPUs running job `r` holds on node `nid`: its part there, as RunningIndex
        split it (whole nodes in more_nodes, the rest on its main node)."""
        if not r.more_nodes:
            return r.gpus if r.node == nid else 0
        part = self.parts.get(nid, {}).get(r.id)
        return 0 if part is None else part[1]

    def on_node(self, nid: str) -> tuple[RunningJob, ...]:
        """Every running job with GPUs or CPUs on node `nid`: those there alone, then
        those over several nodes with a part there."""
        over = self.multi_by_node.get(nid)
        alone = self.running_by_node.get(nid, ())
        return alone if over is None else alone + over

    def back_by(
        self, node: NodeState, at: float, going: tuple[RunningJob, ...] = ()
    ) -> tuple[float, float]:
        """(CPUs, memory) that come back on `node` by time `at`: the running jobs there
        that end by then (a job over several nodes holds them on its main node, as
        RunningIndex counts them), those started in this pass, and `going` (stopping
        now) whatever their end."""
        cpus = memory = 0.0
        for end, c, m in self._room_ends(node, going):
            if end <= at:
                cpus += c
                memory += m
        return cpus, memory

    def _room_ends(self, node: NodeState, going: tuple[RunningJob, ...] = ()) -> list[tuple[float, float, float]]:
        """(when, CPUs, memory) each job on `node` gives back, at or after now: the running
        jobs there (on its main node for a job over several, as RunningIndex counts them;
        `going` ones at -INF: whatever their end), and those started in this pass."""
        nid, now = node.info.id, self.now
        ends: list[tuple[float, float, float]] = [
            (-INF if r in going else self._gone_at(r), r.cpus, r.memory) for r in self.on_node(nid) if r.node == nid
        ]
        ends += [(e if e > now else now, c, m) for e, c, m in node.started]
        return ends

    def _gone_at(self, r: RunningJob) -> float:
        """When running job `r` is gone: its end (PassCore._end), or the end of the grace
        period of a stop asked in this pass, if sooner."""
        end = self._end(r)
        if r.id in self.stopping_for:
            deadline = self.now + self.cfg.grace_period
            return deadline if deadline < end else end
        return end

    def room_at(self, node: NodeState, j: PendingJob, t: float) -> float:
        """The first time at or after `t` (when its GPUs are free on `node`) that `j`'s
        CPUs and memory are free there too, if every job runs to its limit; INF if never.
        EASY reservations and ETAs counted GPUs only: one made "at now" for a job whose
        CPUs another held for a day kept GPUs idle all that day (a review)."""
        if t == INF or (node.cpus >= j.cpus and node.memory >= j.memory):
            return t
        cpus, memory = node.cpus, node.memory
        for end, c, m in sorted(self._room_ends(node)):
            cpus += c
            memory += m
            if cpus >= j.cpus and memory >= j.memory:
                return end if end > t else t
        return INF

    def split(self, gpus: int) -> tuple[int, int]:
        """(whole nodes, remainder on one more node) for a job larger than a node."""
        whole, rest = divmod(gpus, self.max_per_node)
        return whole, rest

    def conflicts(
        self, node: NodeState, j: PendingJob, gpus: int | None = None, going: tuple[RunningJob, ...] = ()
    ) -> Reservation | None:
        """A reservation that starting `j` on `node` now would delay, if any. `going`:
        running jobs there whose GPUs come back first (being preempted for `j`)."""
        end = self.now + self._dur(j)
        need = j.gpus if gpus is None else gpus
        nid = node.info.id
        back = sum(self.here(r, nid) for r in going)
        for res in self.reservations:
            if end <= res.at:
                continue
            if res.node == nid:
                wanted = res.gpus - len(res.more_nodes) * self.max_per_node
            elif nid in res.more_nodes:
                wanted = node.info.gpus
            else:
                continue
            # Would the reserved job still find its GPUs at its reserved time? (What is
            # going now does not come back a second time at its own end.)
            # An end already past counts as now: before a reservation made for earlier
            # than now (a stop deadline passed), none; after, all of them.
            later = sum(g for e, g in node.releases if e <= res.at) if res.at >= self.now else 0
            if going:
                later -= sum(self.here(r, nid) for r in going if self._end(r) <= res.at)
            if node.free + back - need + later < wanted:
                return res
            if (res.cpus or res.memory) and res.node == nid:
                # As for GPUs: before a reservation made for earlier than now, only `going`.
                cpus, memory = self.back_by(node, res.at if res.at >= self.now else -INF, going)
                if node.cpus + cpus - j.cpus < res.cpus or node.memory + memory - j.memory < res.memory:
                    return res
        return None
