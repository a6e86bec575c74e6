"""The scheduling policy: one pure function from a Snapshot to a Decision.

No Ray, no SQLite, no clock: time is `Snapshot.now`. The daemon calls `schedule()`
on every pass and the simulator replays traces through the very same function.
docs/fairshare.md explains the ordering with a worked example.

One pass, in words:
1. Work out who holds what: free GPUs per node, GPUs and jobs held per researcher,
   and each researcher's effective usage = decayed past usage + the expected rest
   of their running jobs (the entry penalty).
2. Rank researchers: those still under their guaranteed GPUs first, then by the
   fair-share factor F = 2^(-U/S) plus a small age bonus. Take the best
   researcher's next job (their own order: requeued first, then priority, then age;
   `duration_hint` orders by highest response ratio instead),
   place it or record why not, recompute that researcher's rank, repeat.
3. Placement is gang and best-fit: the node with the fewest free GPUs that still fits.
4. The first job blocked on resources gets a reservation (EASY backfill): later jobs
   start only if they cannot delay it.
5. A researcher below `guaranteed_gpus` whose job cannot start reclaims borrowed
   GPUs: least work lost first, never a job younger than `min_runtime`, never
   taking a victim's owner below their own guarantee (so nobody preempts back).
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from typing import Any

from scheduler.policy_types import (
    INF,
    Decision,
    NodeInfo,
    PendingJob,
    PolicyConfig,
    Preempt,
    RunningJob,
    Snapshot,
    Start,
    UserShare,
    Waiting,
)
from scheduler.quota import Quota, fair_share_factor
from scheduler.shapes import Reason

__all__ = [
    "Decision",
    "NodeInfo",
    "PendingJob",
    "PolicyConfig",
    "Preempt",
    "RunningJob",
    "Snapshot",
    "Start",
    "UserShare",
    "Waiting",
    "schedule",
]


def _job_key(j: PendingJob) -> tuple[bool, int, float, int]:
    # Within one researcher: requeued (preempted) jobs first, then priority, then age.
    return (not j.requeued, -j.priority, j.submit_time, j.id)


def _hrrn_key(now: float, default_limit: float) -> Any:
    """Requeued first, then priority, then the highest response ratio (see
    PolicyConfig.duration_hint), then age."""

    def key(j: PendingJob) -> tuple[bool, int, float, float, int]:
        e = j.expected if j.expected is not None else (j.time_limit or default_limit)
        e = e if e > 60.0 else 60.0  # a few seconds' estimate must not outrank everyone forever
        return (not j.requeued, -j.priority, -(now - j.submit_time + e) / e, j.submit_time, j.id)

    return key


@dataclass
class _Node:
    info: NodeInfo
    free: int
    cpus: float
    memory: float
    # (end time, gpus) of what runs here now, including jobs started in this pass.
    releases: list[tuple[float, int]]
    sorted_releases: list[tuple[float, int]] | None = None

    def release_order(self) -> list[tuple[float, int]]:
        if self.sorted_releases is None:
            self.sorted_releases = sorted(self.releases)
        return self.sorted_releases


@dataclass
class _Reservation:
    job_id: int
    node: str
    at: float
    gpus: int
    more_nodes: tuple[str, ...] = ()
    # When the reserved job ends if it uses its whole limit: a job held back so as not to
    # delay it can expect to start then at the latest, as far as that reservation goes.
    end: float = INF


class _Pass:
    """Mutable working state of one `schedule()` call; never escapes it."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.cfg = snap.config
        self.now = snap.now
        self.nodes: dict[str, _Node] = {}
        for n in sorted(snap.nodes, key=lambda n: n.id):
            self.nodes[n.id] = _Node(n, n.gpus, n.cpus, n.memory, [])
        # The hottest loop of a pass (every running job, every pass): plain locals and
        # dicts rather than helper calls, the same arithmetic as _end().
        held: dict[str, int] = {}
        jobs_held: dict[str, int] = {}
        penalty: dict[str, float] = {}
        running_by_node: dict[str, list[RunningJob]] = {}
        nodes = self.nodes
        now = self.now
        default_limit = self.cfg.default_time_limit
        held_get, jobs_get, pen_get, node_get, rbn_get = (
            held.get,
            jobs_held.get,
            penalty.get,
            nodes.get,
            running_by_node.get,
        )
        for r in snap.running:
            end = r.start_time + (default_limit if r.time_limit is None else r.time_limit)
            if r.expected is not None and r.start_time + r.expected < end:
                end = r.start_time + r.expected  # predicted (a job past it: now, below)
            if r.stop_deadline is not None and r.stop_deadline < end:
                end = r.stop_deadline
            if end < now:
                end = now
            u = r.user
            g = r.gpus
            held[u] = held_get(u, 0) + g
            jobs_held[u] = jobs_get(u, 0) + 1
            penalty[u] = pen_get(u, 0.0) + g * (end - now)
            rest = g
            if r.more_nodes:
                for nid in r.more_nodes:
                    whole = node_get(nid)
                    if whole is not None:
                        whole.free -= whole.info.gpus
                        rest -= whole.info.gpus
                        whole.releases.append((end, whole.info.gpus))
            node = node_get(r.node)
            if node is None:
                continue  # a node that left: its jobs are being reported lost elsewhere
            node.free -= rest
            if r.cpus:
                node.cpus -= r.cpus
            if r.memory:
                node.memory -= r.memory
            node.releases.append((end, rest))
            if not r.more_nodes:
                lst = rbn_get(r.node)
                if lst is None:
                    running_by_node[r.node] = [r]
                else:
                    lst.append(r)
        self.held: Counter[str] = Counter(held)
        self.jobs_held: Counter[str] = Counter(jobs_held)
        self.penalty = penalty
        self.running_by_node = running_by_node
        # Free-GPU buckets make best-fit O(GPUs per node) instead of O(nodes).
        self.max_per_node = max((n.gpus for n in snap.nodes), default=0)
        self.buckets: list[dict[str, None]] = [dict() for _ in range(self.max_per_node + 1)]
        for nid, node in self.nodes.items():
            if node.info.schedulable and node.free > 0:
                self.buckets[min(node.free, self.max_per_node)][nid] = None
        self.reservations: list[_Reservation] = []
        self._largest: int | None = None
        schedulable = [n.gpus for n in snap.nodes if n.schedulable]
        self.biggest_node: int | None = max(schedulable) if schedulable else None
        self.schedulable_gpus = sum(schedulable)
        self.starts: list[Start] = []
        self.preemptions: list[Preempt] = []
        self.waiting: dict[int, Waiting] = {}
        self.stopping_for: set[int] = set()
        # Claims by researchers under their guarantee, made in this pass.
        self.claimed: Counter[str] = Counter()
        self.node_claimed: Counter[str] = Counter()
        self.reclaimed: Counter[str] = Counter()  # GPUs being taken back from each borrower
        self.easy_reserved = False
        self.quota_cache: dict[str, Quota] = {}

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
        end = r.start_time + self._limit(r.time_limit)
        if r.expected is not None and r.start_time + r.expected < end:
            end = r.start_time + r.expected
        if r.stop_deadline is not None:
            end = min(end, r.stop_deadline)
        return max(end, self.now)

    def _remaining(self, r: RunningJob) -> float:
        return max(0.0, self._end(r) - self.now)

    def quota(self, user: str) -> Quota:
        q = self.quota_cache.get(user)
        if q is None:
            q = self.quota_cache[user] = self.snap.quotas.for_user(user)
        return q

    # -- placement ------------------------------------------------------------------
    def best_fit(self, j: PendingJob, gpus: int | None = None, skip: tuple[str, ...] = ()) -> _Node | None:
        need = j.gpus if gpus is None else gpus
        if need > self.largest_free():
            return None
        only = j.nodes
        for k in range(need, self.max_per_node + 1):
            for nid in self.buckets[k]:
                node = self.nodes[nid]
                if (
                    nid not in skip
                    and (only is None or nid in only)
                    and node.free >= need
                    and node.cpus >= j.cpus
                    and node.memory >= j.memory
                ):
                    return node
        return None

    def split(self, gpus: int) -> tuple[int, int]:
        """(whole nodes, remainder on one more node) for a job larger than a node."""
        whole, rest = divmod(gpus, self.max_per_node)
        return whole, rest

    def multi_fit(self, j: PendingJob) -> tuple[_Node, tuple[str, ...]] | None:
        """Whole free nodes plus a best-fit node for the remainder; None if it does not fit now."""
        whole, rest = self.split(j.gpus)
        full = [
            nid
            for nid in self.buckets[self.max_per_node]
            if self.nodes[nid].free == self.nodes[nid].info.gpus and (j.nodes is None or nid in j.nodes)
        ]
        if len(full) < whole + (1 if rest == 0 else 0):
            return None
        if rest == 0:
            return self.nodes[full[whole - 1]], tuple(full[: whole - 1])
        taken = tuple(full[:whole])
        node = self.best_fit(j, rest, skip=taken)
        return None if node is None else (node, taken)

    def largest_free(self) -> int:
        if self._largest is None:
            self._largest = next((k for k in range(self.max_per_node, 0, -1) if self.buckets[k]), 0)
        return self._largest

    def take(self, node: _Node, j: PendingJob, gpus: int | None = None) -> None:
        need = j.gpus if gpus is None else gpus
        old = min(node.free, self.max_per_node)
        if old > 0:
            self.buckets[old].pop(node.info.id, None)
        node.free -= need
        node.cpus -= j.cpus
        node.memory -= j.memory
        node.releases.append((self.now + self._dur(j), need))
        node.sorted_releases = None
        self._largest = None
        if node.free > 0:
            self.buckets[min(node.free, self.max_per_node)][node.info.id] = None

    def earliest(self, node: _Node, gpus: int) -> float:
        """When `gpus` GPUs will be free on `node` if every job runs to its limit."""
        free = node.free
        if free >= gpus:
            return self.now
        for end, g in node.release_order():
            free += g
            if free >= gpus:
                return end
        return INF

    def conflicts(self, node: _Node, j: PendingJob, gpus: int | None = None) -> _Reservation | None:
        """A reservation that starting `j` on `node` now would delay, if any."""
        end = self.now + self._dur(j)
        need = j.gpus if gpus is None else gpus
        nid = node.info.id
        for res in self.reservations:
            if end <= res.at:
                continue
            if res.node == nid:
                wanted = res.gpus - len(res.more_nodes) * self.max_per_node
            elif nid in res.more_nodes:
                wanted = node.info.gpus
            else:
                continue
            # Would the reserved job still find its GPUs at its reserved time?
            free_then = node.free - need + sum(g for e, g in node.releases if e <= res.at)
            if free_then < wanted:
                return res
        return None

    @staticmethod
    def can_hold(node: _Node, j: PendingJob, gpus: int | None = None) -> bool:
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

    def reserve(self, j: PendingJob) -> _Reservation | None:
        if self.cfg.multi_node and 0 < self.max_per_node < j.gpus:
            return self._reserve_multi(j)
        best: tuple[float, str] | None = None
        for nid, node in self.nodes.items():
            if not self.can_hold(node, j):
                continue
            t = self.earliest(node, j.gpus)
            if t < INF and (best is None or (t, nid) < best):
                best = (t, nid)
        if best is None:
            return None
        res = _Reservation(j.id, best[1], best[0], j.gpus, end=best[0] + self._dur(j))
        self.reservations.append(res)
        return res

    def _reserve_multi(self, j: PendingJob) -> _Reservation | None:
        whole, rest = self.split(j.gpus)
        usable = [n for n in self.nodes.values() if n.info.gpus == self.max_per_node and self.can_hold(n, j, 0)]
        free_at = sorted((self.earliest(n, n.info.gpus), n.info.id) for n in usable)
        if len(free_at) < whole + (1 if rest else 0):
            return None
        chosen = free_at[:whole]
        at = chosen[-1][0] if chosen else self.now
        taken = {nid for _, nid in chosen}
        if rest:
            rest_at = min(
                ((self.earliest(n, rest), n.info.id) for n in usable if n.info.id not in taken),
                default=None,
            )
            if rest_at is None:
                return None
            at = max(at, rest_at[0])
            node = rest_at[1]
            more = tuple(nid for _, nid in chosen)
        else:
            node = chosen[-1][1]
            more = tuple(nid for _, nid in chosen[:-1])
        if at == INF:
            return None
        res = _Reservation(j.id, node, at, j.gpus, more, end=at + self._dur(j))
        self.reservations.append(res)
        return res

    # -- reclaim ------------------------------------------------------------------------
    def reclaim(self, j: PendingJob) -> tuple[list[RunningJob], _Node] | None:
        """Borrowed jobs to preempt so that `j` (within its owner's guarantee) can start.

        GPUs already on their way out (jobs told to stop) count first, minus what
        earlier claims in this pass took of them; only the rest is preempted.
        """
        cfg = self.cfg
        best: tuple[float, str, list[RunningJob]] | None = None
        for nid, node in self.nodes.items():
            if not self.can_hold(node, j):
                continue
            running = self.running_by_node.get(nid, [])
            available = (
                node.free
                + sum(r.gpus for r in running if r.stop_deadline is not None or r.id in self.stopping_for)
                - self.node_claimed[nid]
            )
            if available >= j.gpus:
                # Enough is already on its way out; wait for it rather than preempt more.
                best = (0.0, nid, [])
                break
            taken: Counter[str] = Counter()
            victims: list[RunningJob] = []
            lost = 0.0
            candidates = sorted(
                (
                    r
                    for r in running
                    if r.stop_deadline is None
                    and r.id not in self.stopping_for
                    and r.user != j.user
                    and self.now - r.start_time >= cfg.min_runtime
                ),
                key=lambda r: (r.gpus * (self.now - r.start_time), r.id),
            )
            for r in candidates:
                if available >= j.gpus:
                    break
                # Only borrowed GPUs are taken back: the owner keeps their own guarantee.
                keeps = self.held[r.user] - self.reclaimed[r.user] - taken[r.user] - r.gpus
                if keeps < self.quota(r.user).guaranteed_gpus:
                    continue
                victims.append(r)
                taken[r.user] += r.gpus
                available += r.gpus
                lost += r.gpus * (self.now - r.start_time)
            if available >= j.gpus and (best is None or (lost, nid) < (best[0], best[1])):
                best = (lost, nid, victims)
        if best is None:
            return None
        _, nid, victims = best
        self.node_claimed[nid] += j.gpus
        self.claimed[j.user] += j.gpus
        for r in victims:
            self.stopping_for.add(r.id)
            self.reclaimed[r.user] += r.gpus
        return victims, self.nodes[nid]


def _format_ahead(ahead: Counter[str], total: int) -> Reason:
    top = sorted(ahead.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    who = ", ".join(f"{u} x{c}" if c > 1 else u for u, c in top)
    more = "" if len(ahead) <= 3 else ", ..."
    plural = "job ranks" if total == 1 else "jobs rank"
    return Reason("fairshare", f"fair share: {total} {plural} ahead ({who}{more})", (("ahead", total),))


def schedule(snap: Snapshot) -> Decision:
    """Decide what starts, what is preempted, and why everything else waits."""
    p = _Pass(snap)
    cfg = snap.config

    by_user: dict[str, list[PendingJob]] = {}
    for j in snap.pending:
        by_user.setdefault(j.user, []).append(j)
    pending_count = {u: len(js) for u, js in by_user.items()}
    own_order = _hrrn_key(snap.now, cfg.default_time_limit) if cfg.duration_hint else _job_key
    for jobs in by_user.values():
        if len(jobs) > 1:
            jobs.sort(key=own_order, reverse=True)  # pop() from the end gives the next job

    active = sorted(set(by_user) | set(p.held))
    total_shares = sum(p.quota(u).shares for u in active)
    eff_usage = {u: snap.usage.get(u, 0.0) + p.penalty.get(u, 0.0) for u in active}
    total_usage = sum(eff_usage.values())

    # Ranks use the usage total as it stood when the pass began: a start changes only
    # its owner's usage, so only that researcher's heap entry goes stale, and ordering
    # by F is ordering by usage/share either way.
    ref_usage = total_usage if total_usage > 0 else cfg.default_time_limit

    factors: dict[str, float] = {}  # per pass, dropped for a researcher when they start a job

    def factor(u: str, total: float | None = None) -> float:
        if total is not None:
            return fair_share_factor(eff_usage[u], total, p.quota(u).shares, total_shares)
        f = factors.get(u)
        if f is None:
            f = factors[u] = fair_share_factor(eff_usage[u], ref_usage, p.quota(u).shares, total_shares)
        return f

    def rank(u: str) -> tuple[int, float, float, int, str]:
        head = by_user[u][-1]
        q = p.quota(u)
        under_guarantee = p.held[u] + p.claimed[u] + head.gpus <= q.guaranteed_gpus
        age = min(1.0, max(0.0, snap.now - head.submit_time) / cfg.age_max)
        score = factor(u) + cfg.age_weight * age
        return (0 if under_guarantee else 1, -score, head.submit_time, head.id, u)

    heap = [rank(u) for u in by_user]
    heapq.heapify(heap)

    order: list[int] = []
    # Free space changes only when a job starts, so the same request gets the same text.
    resource_reasons: dict[tuple[int, float, int, frozenset[str] | None, str], Reason] = {}
    etas: dict[tuple[int, frozenset[str] | None], float | None] = {}
    ahead: Counter[str] = Counter()  # waiting jobs ranked ahead, by owner
    n_ahead = 0
    eta_budget = cfg.eta_depth

    explain = cfg.explain

    def wait(j: PendingJob, reasons: list[Reason], eta: float | None) -> None:
        nonlocal n_ahead, eta_budget
        if not explain:
            p.waiting[j.id] = Waiting((), None)
            return
        if n_ahead:
            if len(p.waiting) < cfg.reason_depth:
                reasons.append(_format_ahead(ahead, n_ahead))
            else:
                reasons.append(Reason("fairshare", f"fair share: {n_ahead} jobs rank ahead", (("ahead", n_ahead),)))
        p.waiting[j.id] = Waiting(tuple(reasons), eta)
        ahead[j.user] += 1
        n_ahead += 1

    def shadow_eta(j: PendingJob) -> float | None:
        """When enough GPUs free up on some node if running jobs use their full limits.

        A lower bound: it ignores the jobs ranked ahead that will take GPUs first.
        """
        nonlocal eta_budget
        if eta_budget <= 0 or not explain:
            return None
        eta_budget -= 1
        key = (j.gpus, j.nodes)
        if key in etas:
            return etas[key]
        best = INF
        for node in p.nodes.values():
            if p.can_hold(node, j):
                best = min(best, p.earliest(node, j.gpus))
        etas[key] = None if best == INF else best
        return etas[key]

    while heap:
        top = heapq.heappop(heap)
        if not explain and top[0] == 1 and p.largest_free() == 0:
            # No GPU free and nobody left under a guarantee: nothing else can start.
            break
        u = top[-1]
        j = by_user[u].pop()
        order.append(j.id)
        q = p.quota(u)

        blocked: list[Reason] = []
        if q.max_jobs is not None and p.jobs_held[u] >= q.max_jobs:
            blocked.append(
                Reason(
                    "quota",
                    f"quota: {u} runs {p.jobs_held[u]}/{q.max_jobs} jobs",
                    (("running_jobs", p.jobs_held[u]), ("max_jobs", q.max_jobs)),
                )
            )
        if q.max_gpus is not None and p.held[u] + j.gpus > q.max_gpus:
            blocked.append(
                Reason(
                    "quota",
                    f"quota: {u} holds {p.held[u]}/{q.max_gpus} GPUs, this job needs {j.gpus} more"
                    if p.held[u]
                    else f"quota: needs {j.gpus} GPUs, {u}'s limit is {q.max_gpus}",
                    (("held_gpus", p.held[u]), ("max_gpus", q.max_gpus), ("gpus", j.gpus)),
                )
            )
        if q.gpu_hours_per_week is not None:
            used_h = snap.week_usage.get(u, 0.0) / 3600.0
            if used_h >= q.gpu_hours_per_week:
                blocked.append(
                    Reason(
                        "budget",
                        f"budget: {used_h:.1f}/{q.gpu_hours_per_week:g} GPU-hours used this week",
                        (("used_gpu_hours", round(used_h, 3)), ("gpu_hours_per_week", q.gpu_hours_per_week)),
                    )
                )

        if blocked:
            wait(j, blocked, None)
        else:
            multi = cfg.multi_node and 0 < p.max_per_node < j.gpus
            more: tuple[str, ...] = ()
            if multi:
                fit = p.multi_fit(j)
                node, more = fit if fit is not None else (None, ())
            else:
                node = p.best_fit(j)
            rest = j.gpus - len(more) * p.max_per_node
            conflict = p.conflicts(node, j, rest) if node is not None else None
            for nid in more:
                conflict = conflict or p.conflicts(p.nodes[nid], j, p.nodes[nid].free)
            if node is not None and conflict is None:
                for nid in more:
                    p.take(p.nodes[nid], j, p.nodes[nid].free)
                p.take(node, j, rest)
                p.starts.append(Start(j.id, node.info.id, more))
                p.held[u] += j.gpus
                p.jobs_held[u] += 1
                added = j.gpus * p._dur(j)
                eff_usage[u] += added
                total_usage += added
                factors.pop(u, None)
                resource_reasons.clear()
                etas.clear()
                if j.count > 1:
                    # The array's next task is this researcher's next job, as it was.
                    by_user[u].append(j._replace(count=j.count - 1))
            elif conflict is not None:
                when = conflict.at - snap.now
                wait(
                    j,
                    [
                        Reason(
                            "backfill",
                            f"backfill: would delay job {conflict.job_id}, reserved to start in "
                            f"{_short(when)} on {p.nodes[conflict.node].info.label}",
                            (("delays_job", conflict.job_id), ("reserved_in_s", round(when, 1))),
                        )
                    ]
                    if explain
                    else [],
                    # Free GPUs now are not a start now: the earliest start that delays
                    # nobody is when the reserved job is done (never "now", never unknown).
                    max(shadow_eta(j) or snap.now, conflict.end) if conflict.end < INF else shadow_eta(j),
                )
            else:
                key = (j.gpus, j.cpus, j.memory, j.nodes, j.where)
                why = resource_reasons.get(key) if explain else _NO_REASON
                if why is None:
                    why = resource_reasons[key] = _resource_reason(p, j)
                reasons = [why]
                eta: float | None = None
                claim = None
                if (
                    cfg.preemption
                    and not multi
                    and q.guaranteed_gpus > 0
                    and p.held[u] + p.claimed[u] + j.gpus <= q.guaranteed_gpus
                ):
                    claim = p.reclaim(j)
                if claim is not None:
                    victims, cnode = claim
                    deadline = snap.now + cfg.grace_period
                    for r in victims:
                        p.preemptions.append(
                            Preempt(
                                r.id,
                                j.id,
                                f"reclaimed for {u}'s job {j.id} ({u} is below "
                                f"{q.guaranteed_gpus} guaranteed GPUs)",
                            )
                        )
                    # By id: the snapshot's order of running jobs must not change the text.
                    stopping = sorted(
                        (
                            r
                            for r in p.running_by_node.get(cnode.info.id, [])
                            if r.id in p.stopping_for or r.stop_deadline is not None
                        ),
                        key=lambda r: r.id,
                    )
                    ends = [r.stop_deadline or deadline for r in stopping] or [snap.now]
                    eta = max(ends)
                    names = ", ".join(f"job {r.id} ({r.user})" for r in stopping)
                    reasons.insert(
                        0,
                        Reason(
                            "reclaim",
                            f"reclaim: {u} is below {q.guaranteed_gpus} guaranteed GPUs; "
                            f"waiting for {names or 'GPUs'} to stop on {cnode.info.label}",
                            (("guaranteed_gpus", q.guaranteed_gpus), ("stopping", tuple(r.id for r in stopping))),
                        ),
                    )
                    p.reservations.append(
                        _Reservation(j.id, cnode.info.id, eta, j.gpus, end=eta + p._dur(j))
                    )
                elif cfg.backfill and not p.easy_reserved:
                    res = p.reserve(j)
                    # EASY: one reservation, for the first blocked job that can ever run.
                    p.easy_reserved = res is not None
                    eta = res.at if res is not None else None
                    eta_budget -= 1
                else:
                    eta = shadow_eta(j)
                wait(j, reasons, eta)

        if by_user[u]:
            heapq.heappush(heap, rank(u))

    shares = {
        u: UserShare(
            user=u,
            shares=p.quota(u).shares,
            usage=eff_usage[u],
            factor=factor(u, total_usage),
            held_gpus=p.held[u],
            running_jobs=p.jobs_held[u],
            pending_jobs=pending_count.get(u, 0),
            quota=p.quota(u),
        )
        for u in active
    }
    return Decision(
        starts=tuple(p.starts),
        preemptions=tuple(p.preemptions),
        waiting=p.waiting,
        shares=shares,
        order=tuple(order),
    )


def _short(seconds: float) -> str:
    s = int(max(0, seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


_NO_REASON = Reason("resources", "")


def _resource_reason(p: _Pass, j: PendingJob) -> Reason:
    if j.nodes is not None:
        return _placement_reason(p, j)
    biggest = p.biggest_node
    if biggest is None:
        return Reason("drained", "resources: no schedulable node (all drained, unhealthy or gone)")
    data: tuple[tuple[str, Any], ...] = (("gpus", j.gpus), ("largest_node", biggest))
    if j.gpus > biggest:
        if p.cfg.multi_node:
            whole, rest = p.split(j.gpus)
            full = len(p.buckets[p.max_per_node])
            return Reason(
                "resources",
                f"resources: needs {whole} whole free node{'s' if whole != 1 else ''}"
                f"{f' and {rest} GPUs on another' if rest else ''}; {full} node{'s are' if full != 1 else ' is'} fully free",
                (*data, ("whole_nodes", whole), ("free_nodes", full)),
            )
        return Reason("resources", f"resources: needs {j.gpus} GPUs on one node, the largest node has {biggest}", data)
    if (j.cpus or j.memory) and not any(p.can_hold(n, j, min(j.gpus, n.info.gpus)) for n in p.nodes.values()):
        most_cpus = max((n.info.cpus for n in p.nodes.values() if n.info.schedulable), default=0.0)
        most_mem = max((n.info.memory for n in p.nodes.values() if n.info.schedulable), default=0.0)
        return Reason(
            "resources",
            f"resources: no node can hold {j.cpus:g} CPUs and {j.memory / 2**30:.1f} GiB of memory beside its "
            f"GPUs (the most a node has: {most_cpus:g} CPUs, {most_mem / 2**30:.1f} GiB)",
            (*data, ("cpus", j.cpus), ("memory", j.memory), ("never", True)),
        )
    largest = p.largest_free()
    data = (*data, ("largest_free", largest))
    if largest >= j.gpus:
        # GPUs are there but CPUs or memory are not.
        return Reason(
            "resources",
            f"resources: needs {j.cpus:g} CPUs and {j.memory / 2**30:.1f} GiB of memory beside its GPUs",
            (*data, ("cpus", j.cpus), ("memory", j.memory)),
        )
    need = f"needs {j.gpus} GPU{'s' if j.gpus > 1 else ''} on one node"
    if largest == 0:
        return Reason(
            "resources", f"resources: {need}, none is free ({p.schedulable_gpus}/{p.schedulable_gpus} in use)", data
        )
    return Reason("resources", f"resources: {need}, largest free block is {largest}", data)


def _placement_reason(p: _Pass, j: PendingJob) -> Reason:
    """Why a job that only some nodes may run waits: none of them could ever hold it
    (`where` says why those), or the ones that could are busy."""
    only = j.nodes or frozenset()
    allowed = [n for n in p.nodes.values() if n.info.id in only]
    names = tuple(sorted(n.info.label for n in allowed))
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    data: tuple[tuple[str, Any], ...] = (("gpus", j.gpus), ("nodes", names))
    holding = [n for n in allowed if p.can_hold(n, j, min(j.gpus, n.info.gpus))]
    if not holding:
        if not allowed:
            text = j.where or "no node it may run on is in the cluster"
        else:
            text = f"only {shown} may run it ({j.where}); none can hold it now (drained, unhealthy or too small)"
        return Reason("placement", f"placement: {text}", (*data, ("never", True)))
    largest = max(n.free for n in holding)
    need = f"needs {j.gpus} GPU{'s' if j.gpus > 1 else ''} on {shown}"
    if largest >= j.gpus:
        return Reason(
            "resources",
            f"resources: {need}, with {j.cpus:g} CPUs and {j.memory / 2**30:.1f} GiB of memory beside its GPUs",
            (*data, ("largest_free", largest), ("cpus", j.cpus), ("memory", j.memory)),
        )
    where = f" ({j.where})" if j.where else ""
    free = "none is free there" if largest <= 0 else f"largest free block there is {largest}"
    return Reason("resources", f"resources: {need}{where}, {free}", (*data, ("largest_free", largest)))
