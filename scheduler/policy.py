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
   researcher's next job (their own order: requeued first, then priority, then the
   shortest expected run (`duration_hint`: a learned runtime, else the limit), then age),
   place it or record why not, recompute that researcher's rank, repeat.
3. Placement is gang and best-fit: the node with the fewest free GPUs that still fits.
4. The first job blocked on resources gets a reservation (EASY backfill): later jobs
   start only if they cannot delay it.
5. A researcher below `guaranteed_gpus` whose job cannot start reclaims borrowed
   GPUs: least work lost first, never a job younger than `min_runtime` or holding
   no GPU, never taking a victim's owner below their own guarantee (so nobody
   preempts back).
"""

from __future__ import annotations

import gc
import heapq
from collections import Counter
from itertools import islice
from operator import attrgetter, itemgetter
from typing import Any

from scheduler.policy_caps import Caps, placement
from scheduler.policy_pass import Pass
from scheduler.policy_queue import queues, scavenge
from scheduler.policy_reasons import NO_REASON, format_ahead, resource_reason, short
from scheduler.policy_state import NodeState, Reservation
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
from scheduler.quota import fair_share_factor
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
    "placement",
    "Waiting",
    "schedule",
]


# The sorted merge of a pass's quiet stretches (see _schedule.merged); off only in the test
# that checks it gives the same decision as the heap alone.
_MERGE = True
# deep_run() and the cache of failed fits (no_fit): off only in the test that checks they
# decide and explain as the plain path does, which reads _deep_explained.
_DEEP, _deep_explained = True, 0
_gpus = attrgetter("gpus")
_id = attrgetter("id")
# What a deep job's reasons depend on (user, gpus, cpus, memory, nodes, where): one
# C-level call instead of six attribute reads per job.
_why_key = itemgetter(*(PendingJob._fields.index(f) for f in ("user", "gpus", "cpus", "memory", "nodes", "where")))
# What a job's fit depends on (GPUs, CPUs, memory, nodes, and its length: limit and
# prediction): jobs alike in these start or fail alike until something starts.
_FIT_FIELDS = ("gpus", "cpus", "memory", "nodes", "time_limit", "expected")
_fit_key = itemgetter(*(PendingJob._fields.index(f) for f in _FIT_FIELDS))
# ... and what its reasons say besides (`where` is in a placement reason's text).
_told_key = itemgetter(*(PendingJob._fields.index(f) for f in _FIT_FIELDS + ("where",)))


def schedule(snap: Snapshot) -> Decision:
    """Decide what starts, what is preempted, and why everything else waits."""
    if not gc.isenabled():
        return _schedule(snap)
    # A pass allocates a few objects per waiting job and frees them all, with no cycles;
    # the cyclic collector's scans of them (and of the snapshot) were ~40% of a
    # 100,000-job pass. Another thread racing this only gets a collection back early.
    gc.disable()
    try:
        return _schedule(snap)
    finally:
        gc.enable()


def _schedule(snap: Snapshot) -> Decision:
    p = Pass(snap)
    cfg = snap.config

    # Each researcher's queue in their own order (next job last), and the scavengers.
    by_user, scavengers, pending_count = queues(snap)

    active = sorted(set(pending_count) | set(p.held))
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
        # A job that holds no GPU is not a guarantee's: it would rank ahead of everyone.
        under_guarantee = head.gpus > 0 and p.own(u) + p.claimed[u] + head.gpus <= q.guaranteed_gpus
        age = min(1.0, max(0.0, snap.now - head.submit_time) / cfg.age_max)
        score = factor(u) + cfg.age_weight * age
        return (0 if under_guarantee else 1, -score, head.submit_time, head.id, u)

    heap = [rank(u) for u in by_user]
    heapq.heapify(heap)

    order: list[int] = []
    # Free space changes only when a job starts, so the same request gets the same text.
    resource_reasons: dict[tuple[int, float, int, frozenset[str] | None, str], Reason] = {}
    etas: dict[tuple[int, frozenset[str] | None, float, float], float | None] = {}
    ahead: Counter[str] = Counter()  # waiting jobs ranked ahead, by owner
    n_ahead = 0
    eta_budget = cfg.eta_depth

    explain = cfg.explain
    # Where a job of one shape and length failed to start (no node fits, or it would
    # delay a reservation), until the next start: free GPUs change only then, and
    # reservations are only added, so each failure stands.
    no_fit: dict[tuple[Any, ...], tuple[NodeState | None, Reservation | None]] = {}
    delay_reasons: dict[tuple[int, str, float], Reason] = {}
    # deep_run(): a failed fit's reasons, ETA and whether the ETA is predicted, by _told_key.
    deep_told: dict[tuple[Any, ...], tuple[tuple[Reason, ...], float | None, bool]] = {}

    predicted_cache: dict[tuple[float, int, frozenset[str] | None], bool] = {}

    def predicted(j: PendingJob, eta: float) -> bool:
        """Does an ETA rest on a prediction: a learned runtime's release at or before it,
        on a node that could hold the job?"""
        key = (eta, j.gpus, j.nodes)
        got = predicted_cache.get(key)
        if got is None:
            got = predicted_cache[key] = any(
                # A predicted end already past counts as now (PassBase keeps it as it was).
                max(n.first_predicted, snap.now) <= eta and p.can_hold(n, j, min(j.gpus, n.info.gpus))
                for n in p.nodes.values()
            )
        return got

    def wait(j: PendingJob, reasons: list[Reason], eta: float | None) -> None:
        nonlocal n_ahead, eta_budget
        if not explain:
            p.waiting[j.id] = Waiting((), None)
            return
        if n_ahead:
            if len(p.waiting) < cfg.reason_depth:
                reasons.append(format_ahead(ahead, n_ahead))
            else:
                reasons.append(
                    Reason("fairshare", f"fair share: {n_ahead} jobs rank ahead", (("ahead", n_ahead),))
                )
        p.waiting[j.id] = Waiting(tuple(reasons), eta, eta is not None and predicted(j, eta))
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
        key = (j.gpus, j.nodes, j.cpus, j.memory)
        if key in etas:
            return etas[key]
        best = INF
        for node in p.nodes.values():
            if p.can_hold(node, j):
                best = min(best, p.room_at(node, j, p.earliest(node, j.gpus)))
        etas[key] = None if best == INF else best
        return etas[key]

    caps = Caps(p, snap)  # quotas and caps, and the scavengers they shed (policy_caps.py)

    def scavenges(u: str, blocked: list[Reason]) -> bool:
        """Over budget and nothing else in the way: the quota may let it scavenge."""
        return p.quota(u).scavenge and all(r.kind == "budget" for r in blocked)

    least_of: dict[str, int] = {}

    def least(u: str) -> int:
        """`u`'s smallest waiting job, in GPUs, taken once per pass: of what is left then,
        so never above the smallest of what is left later (safe for both uses below)."""
        smallest = least_of.get(u)
        if smallest is None:
            smallest = least_of[u] = min(map(_gpus, by_user[u]))
        return smallest

    def waits_cpu_only(u: str | None = None) -> bool:
        """Does `u` (None: anyone) wait with a job that holds no GPU? It may start where
        no GPU is free, so "no GPU free: nothing more starts" does not hold for it."""
        if u is not None:
            return least(u) == 0
        return any(least(v) == 0 for v in by_user if by_user[v])

    def may_reclaim(u: str) -> bool:
        # Someone whose smallest waiting job fits under their guarantee may still
        # reclaim GPUs when none is free.
        return p.own(u) + p.claimed[u] + least(u) <= p.quota(u).guaranteed_gpus

    def merged() -> list[PendingJob]:
        """Every waiting job in the order the heap would pop them while no rank moves.

        A researcher's key is their queue head's rank; with ranks frozen the heap's
        merge of the queues is a sort: each job keyed by its rank as head, raised to
        the highest key before it in its own queue (a head ranked below an earlier one
        is popped right after it, as the heap would). (key, seq) is unique, so jobs
        themselves are never compared."""
        keyed: list[tuple[tuple[int, float, float, int, str], int, PendingJob]] = []
        append = keyed.append
        seq = 0
        w, age_max, now = cfg.age_weight, cfg.age_max, snap.now
        for u, jobs in by_user.items():
            if not jobs:
                continue
            f = factor(u)
            room = p.quota(u).guaranteed_gpus - p.own(u) - p.claimed[u]
            best: tuple[int, float, float, int, str] | None = None
            for j in reversed(jobs):
                age = now - j.submit_time
                age = 0.0 if age < 0.0 else (1.0 if age >= age_max else age / age_max)
                k = (0 if j.gpus <= room else 1, -(f + w * age), j.submit_time, j.id, u)
                if best is None or k > best:
                    best = k
                seq += 1
                append((best, seq, j))
        keyed.sort()
        return [t[2] for t in keyed]

    def saturated() -> bool:
        """No GPU free, the reservation made, and nobody left who may reclaim: nothing
        can start or change rank any more in this pass."""
        return (
            p.largest_free() == 0
            and (p.easy_reserved or not cfg.backfill or not explain)
            and not waits_cpu_only()
            # A running scavenger yields to anyone: not saturated while one runs.
            and not (cfg.preemption and (p.scav_free > 0 or any(may_reclaim(v) for v in by_user if by_user[v])))
        )

    def deep_end(rest: list[PendingJob]) -> None:
        """Explain the jobs left once the pass is saturated: the same reasons and ETAs
        as consider() gives them, but past both depths a job costs a lookup."""
        nonlocal n_ahead
        for v in by_user.values():
            v.clear()
        held_back: dict[tuple[str, int], list[Reason]] = {}

        def why(j: PendingJob) -> list[Reason]:
            hk = (j.user, j.gpus)
            blocked = held_back.get(hk)
            if blocked is None:
                blocked = held_back[hk] = caps.reasons(j.user, j)
            if blocked:
                return blocked
            key = (j.gpus, j.cpus, j.memory, j.nodes, j.where)
            r = resource_reasons.get(key)
            if r is None:
                r = resource_reasons[key] = resource_reason(p, j)
            return [r]

        # Scavengers-to-be are placed (or explained) after everyone, as in consider().
        if any(p.quota(u).scavenge for u in by_user):
            kept = []
            for j in rest:
                b = caps.reasons(j.user, j) if p.quota(j.user).scavenge else None
                if b and scavenges(j.user, b):
                    scavengers.append((j, b))
                else:
                    kept.append(j)
            rest = kept
        waiting = p.waiting
        i = 0
        while i < len(rest) and (len(waiting) < cfg.reason_depth or eta_budget > 0):
            j = rest[i]
            order.append(j.id)
            reasons = why(j)
            wait(j, list(reasons), None if reasons[0].kind in ("quota", "budget") else shadow_eta(j))
            i += 1
        n = n_ahead
        same: dict[tuple[Any, ...], tuple[Reason, ...]] = {}
        make = tuple.__new__  # NamedTuples without their Python-level __new__
        deep = rest[i:]
        order.extend(map(_id, deep))
        if n == 0 and deep:
            # The first job with nobody ahead says nothing about who ranks ahead.
            j = deep[0]
            waiting[j.id] = make(Waiting, (same.setdefault(_why_key(j), tuple(why(j))), None, False))
            deep = deep[1:]
            n = 1
        for j in deep:
            sk = _why_key(j)
            base = same.get(sk)
            if base is None:
                base = same[sk] = tuple(why(j))
            r = make(Reason, ("fairshare", f"fair share: {n} jobs rank ahead", (("ahead", n),)))
            waiting[j.id] = make(Waiting, ((*base, r), None, False))
            n += 1
        n_ahead = n

    def delay_reason(conflict: Reservation) -> Reason:
        key = (conflict.job_id, conflict.node, conflict.at)
        r = delay_reasons.get(key)
        if r is None:
            when = conflict.at - snap.now
            r = delay_reasons[key] = Reason(
                "backfill",
                f"backfill: would delay job {conflict.job_id}, reserved to start in "
                f"{short(when)} on {p.nodes[conflict.node].info.label}",
                (("delays_job", conflict.job_id), ("reserved_in_s", round(when, 1))),
            )
        return r

    def deep_run(rest: list[PendingJob], i: int) -> int:
        """consider() for a stretch of merged(), from rest[i] on, while each job is past
        both depths (reason texts, ETAs), nothing but a wait can come of it (no claim,
        type cap or scavenging; the EASY reservation made) and its shape and length
        already failed to fit since the last start: the very reasons and ETA consider()
        would give, from caches. A deep queue behind free GPUs that only the reservation
        may use then costs a few lookups per job. Returns where it stopped."""
        nonlocal n_ahead
        if eta_budget > 0 or len(p.waiting) < cfg.reason_depth or not n_ahead:
            return i
        if (cfg.backfill and not p.easy_reserved) or (cfg.preemption and p.scav_free > 0):
            return i
        multi_from = p.max_per_node if cfg.multi_node and p.max_per_node > 0 else 1 << 30
        # Per researcher: jobs of up to `claim` GPUs may claim (or, with type caps or
        # scavenging, none is taken here), so those go to consider(); and caps.reasons()
        # by GPUs asked (nothing starts within the stretch, so they hold).
        users: dict[str, tuple[int, dict[int, tuple[Reason, ...]]]] = {}
        waiting, make, n, start = p.waiting, tuple.__new__, n_ahead, i
        told_get, users_get = deep_told.get, users.get
        # (`ahead` is not counted on: past reason_depth nobody reads it any more.)
        for j in islice(rest, i, None):
            u = j.user
            known = users_get(u)
            if known is None:
                q = p.quota(u)
                if q.max_gpus_per_type or q.scavenge:
                    claim = 1 << 30
                elif cfg.preemption and q.guaranteed_gpus > 0:
                    claim = q.guaranteed_gpus - p.own(u) - p.claimed[u]
                else:
                    claim = 0
                known = users[u] = (claim, {})
            g = j.gpus
            if g <= known[0] or g > multi_from:
                break
            tk = _told_key(j)
            told = told_get(tk)
            if told is None:
                failed = no_fit.get(_fit_key(j))
                if failed is None:
                    break
                conflict = failed[1]
                if conflict is not None:
                    eta = max(snap.now, conflict.end) if conflict.end < INF else None
                    told = (delay_reason(conflict),), eta, eta is not None and predicted(j, eta)
                else:
                    key = (g, j.cpus, j.memory, j.nodes, j.where)
                    why = resource_reasons.get(key)
                    if why is None:
                        why = resource_reasons[key] = resource_reason(p, j)
                    told = (why,), None, False
                deep_told[tk] = told
            blocked = known[1].get(g)
            if blocked is None:
                blocked = known[1][g] = tuple(caps.reasons(u, j))
            if blocked:
                told = blocked, None, False
            by_user[u].pop()
            r = make(Reason, ("fairshare", f"fair share: {n} jobs rank ahead", (("ahead", n),)))
            waiting[j.id] = make(Waiting, ((*told[0], r), told[1], told[2]))
            n += 1
        i = start + n - n_ahead
        order.extend(map(_id, rest[start:i]))
        global _deep_explained
        _deep_explained += i - start
        n_ahead = n
        return i

    def consider(u: str, j: PendingJob) -> bool:
        """Start `j`, reclaim for it, or record why it waits. True when its owner's rank
        moved (a start or a claim): no one else's rank ever moves within a pass."""
        nonlocal total_usage, eta_budget
        q = p.quota(u)

        blocked = caps.reasons(u, j)
        if q.max_gpus_per_type and not blocked:
            j, capped = caps.capped(u, j, q.max_gpus_per_type)
            if capped is not None:
                blocked = [capped]
        if blocked and scavenges(u, blocked):
            scavengers.append((j, blocked))
            return False
        order.append(j.id)

        if blocked:
            wait(j, blocked, None)
        else:
            multi = cfg.multi_node and 0 < p.max_per_node < j.gpus
            more: tuple[str, ...] = ()
            fk = None if multi or not _DEEP else _fit_key(j)
            failed = no_fit.get(fk) if fk is not None else None
            if failed is not None:
                node, conflict = failed
            else:
                if multi:
                    fit = p.multi_fit(j)
                    node, more = fit if fit is not None else (None, ())
                    rest = j.gpus - len(more) * p.max_per_node
                    conflict = p.conflicts(node, j, rest) if node is not None else None
                    for nid in more:
                        conflict = conflict or p.conflicts(p.nodes[nid], j, p.nodes[nid].free)
                    if conflict is not None and (elsewhere := p.multi_fit(j, clear=True)) is not None:
                        node, more = elsewhere
                        rest, conflict = j.gpus - len(more) * p.max_per_node, None
                else:
                    rest = j.gpus
                    node, conflict = p.best_fit(j), None
                    if node is not None and p.reservations:
                        # Best fit among the nodes where it delays no reservation: the
                        # tightest node may be the reserved one while another has room.
                        conflict = p.conflicts(node, j, rest)
                        tried = {node.info.id}
                        while conflict is not None:
                            other = p.best_fit(j, skip=tried)
                            if other is None:
                                break
                            if p.conflicts(other, j, rest) is None:
                                node, conflict = other, None
                            tried.add(other.info.id)
                if fk is not None and (node is None or conflict is not None):
                    no_fit[fk] = (node, conflict)
            if node is not None and conflict is None:
                for nid in more:
                    p.take(p.nodes[nid], j, p.nodes[nid].free)
                p.take(node, j, rest)
                p.starts.append(Start(j.id, node.info.id, more))
                caps.took(u, p.starts[-1], j.gpus)
                p.held[u] += j.gpus
                p.jobs_held[u] += 1
                if p.scav_jobs.get(u):
                    caps.shed(u, j)
                added = j.gpus * p._dur(j)
                eff_usage[u] += added
                total_usage += added
                factors.pop(u, None)
                resource_reasons.clear()
                no_fit.clear()
                deep_told.clear()
                etas.clear()
                predicted_cache.clear()
                if j.count > 1:
                    # The array's next task is this researcher's next job, as it was.
                    by_user[u].append(j._replace(count=j.count - 1))
                return True
            elif conflict is not None:
                wait(
                    j,
                    [delay_reason(conflict)] if explain else [],
                    # Free GPUs now are not a start now: the earliest start that delays
                    # nobody is when the reserved job is done (never "now", never unknown).
                    max(shadow_eta(j) or snap.now, conflict.end) if conflict.end < INF else shadow_eta(j),
                )
            else:
                key = (j.gpus, j.cpus, j.memory, j.nodes, j.where)
                why = resource_reasons.get(key) if explain else NO_REASON
                if why is None:
                    why = resource_reasons[key] = resource_reason(p, j)
                reasons = [why]
                eta: float | None = None
                claim: tuple[list[RunningJob], NodeState, tuple[str, ...]] | None = None
                evict = False
                if cfg.preemption and p.scav_free > 0 and j.gpus > 0:
                    # GPUs a scavenger holds are anyone's for the asking (a job that needs
                    # none waits for CPUs or memory, which no claim frees).
                    claim = p.claim_for(j, multi, scavengers_only=True)
                    evict = claim is not None
                if (
                    claim is None
                    and cfg.preemption
                    and q.guaranteed_gpus > 0
                    and j.gpus > 0
                    and p.own(u) + p.claimed[u] + j.gpus <= q.guaranteed_gpus
                ):
                    claim = p.claim_for(j, multi)
                if claim is not None:
                    victims, cnode, cmore = claim
                    deadline = snap.now + cfg.grace_period
                    for r in victims:
                        p.preemptions.append(
                            Preempt(
                                r.id,
                                j.id,
                                f"a preemptible job yields its GPUs to {u}'s job {j.id}"
                                if r.preemptible
                                else f"reclaimed for {u}'s job {j.id} ({u} is below "
                                f"{q.guaranteed_gpus} guaranteed GPUs)",
                            )
                        )
                    # By id: the snapshot's order of running jobs must not change the text.
                    stopping = sorted(
                        {
                            r.id: r
                            for nid in (cnode.info.id, *cmore)
                            for r in p.on_node(nid)
                            # What it waits for: a stopping job that frees no GPU is not.
                            if r.gpus > 0 and (r.id in p.stopping_for or r.stop_deadline is not None)
                        }.values(),
                        key=lambda r: r.id,
                    )
                    ends = [r.stop_deadline or deadline for r in stopping] or [snap.now]
                    eta = max(*ends, snap.now)  # a victim past its deadline is stopping now
                    names = ", ".join(f"job {r.id} ({r.user})" for r in stopping)
                    where = ", ".join(p.nodes[nid].info.label for nid in (*cmore, cnode.info.id))
                    why_claim = (
                        "preemptible jobs yield their GPUs"
                        if evict
                        else f"{u} is below {q.guaranteed_gpus} guaranteed GPUs"
                    )
                    reasons.insert(
                        0,
                        Reason(
                            "reclaim",
                            f"reclaim: {why_claim}; waiting for {names or 'GPUs'} to stop on {where}",
                            (
                                ("guaranteed_gpus", q.guaranteed_gpus),
                                ("stopping", tuple(r.id for r in stopping)),
                            ),
                        ),
                    )
                    p.reservations.append(
                        Reservation(
                            j.id, cnode.info.id, eta, j.gpus, cmore, end=eta + p._dur(j),
                            cpus=j.cpus, memory=j.memory,
                        )  # fmt: skip
                    )
                    wait(j, reasons, eta)
                    return True
                elif j.gpus == 0:
                    # It waits for CPUs or memory, whose ends no ETA here counts; and a
                    # reservation of no GPU would only take the EASY one from a job after it.
                    eta = None
                elif cfg.backfill and not p.easy_reserved:
                    res = p.reserve(j)
                    # EASY: one reservation, for the first blocked job that can ever run.
                    p.easy_reserved = res is not None
                    eta = res.at if res is not None else None
                    eta_budget -= 1
                    if res is not None and res.more_nodes and explain and reasons[0].kind == "resources":
                        # A job over several nodes: which nodes it is to start on, too.
                        ids = (res.node, *res.more_nodes)
                        on = ", ".join(sorted(p.nodes[n].info.label for n in ids))
                        first = reasons[0]
                        reasons = [first._replace(text=f"{first.text}; reserved on {on}", data=(*first.data, ("reserved_nodes", ids))), *reasons[1:]]
                else:
                    eta = shadow_eta(j)
                wait(j, reasons, eta)
        return False

    # The heap pops one researcher's head at a time. Once `patience` jobs in a row
    # moved no rank, the rest are taken from one sorted list (merged()) instead, until
    # a job starts or claims; then back to the heap, with twice the patience.
    def hopeless(u: str) -> bool:
        """Without reasons to give (the simulator), once no GPU is free and no scavenger
        is left to take, a researcher none of whose jobs may reclaim can change nothing
        more in this pass: their jobs are skipped. Exact for starts and preemptions: free
        GPUs, scavengers and a researcher's room under their guarantee only shrink."""
        if explain or p.scav_free > 0 or p.largest_free() > 0 or waits_cpu_only(u):
            return False
        if cfg.backfill and not p.easy_reserved and waits_cpu_only():
            return False  # its reservation holds CPUs and memory back from a CPU-only job
        return not cfg.preemption or p.quota(u).guaranteed_gpus <= 0 or not may_reclaim(u)

    def futile(u: str, j: PendingJob) -> bool:
        """hopeless() for one job, without reasons to give: a job that cannot start (no
        free block is big enough), whose reservation would change nothing (made already,
        or no GPU is free so nothing more starts in this pass), that no scavenger can
        make room for, and whose claim cannot succeed (it does not fit under its owner's
        guarantee, or a claim for one no bigger already failed): consider() would only
        record that it waits. Free blocks, scavengers and room only shrink in a pass.
        Skipping consider() also skips two things that cannot matter then: a job over its
        budget joining the scavengers (scavenge() needs a free block it does not have),
        and the EASY reservation when no GPU is free and no CPU-only job waits
        (reservations only hold back starts and evictions of scavengers, and neither can
        happen any more)."""
        if explain or p.scav_free > 0:
            return False
        free = p.largest_free()
        multi = cfg.multi_node and 0 < p.max_per_node < j.gpus
        if free >= (p.max_per_node if multi else j.gpus):
            return False
        if (free > 0 or waits_cpu_only()) and cfg.backfill and not p.easy_reserved:
            # The EASY reservation it would make holds back later jobs: those on free
            # GPUs, and CPU-only ones even with none free (it keeps the CPUs and memory
            # it will need: Reservation.cpus).
            return False
        if not cfg.preemption:
            return True
        g = p.quota(u).guaranteed_gpus
        if g <= 0 or p.own(u) + p.claimed[u] + j.gpus > g:
            return True
        return p.known_to_fail(j, multi)

    quiet = 0
    patience = 16
    deep_ok = _DEEP and explain
    saturated_checked = False
    while heap:
        if _MERGE and quiet >= patience:
            rest = merged()
            heap = []
            i, n_rest = 0, len(rest)
            while i < n_rest:
                if not saturated_checked and p.largest_free() == 0:
                    saturated_checked = True
                    if saturated():
                        if explain:
                            deep_end(rest[i:])
                        break
                if deep_ok:
                    i = deep_run(rest, i)
                    if i == n_rest:
                        break
                j = rest[i]
                i += 1
                u = j.user
                skip = hopeless(u)  # before the pop: may_reclaim() counts `j` in
                by_user[u].pop()
                if skip or futile(u, j):
                    continue
                if consider(u, j):
                    heap = [rank(v) for v in by_user if by_user[v]]
                    heapq.heapify(heap)
                    quiet, patience = 0, patience * 2
                    saturated_checked = False
                    break
            continue
        top = heapq.heappop(heap)
        u = top[-1]
        if not saturated_checked and p.largest_free() == 0:
            saturated_checked = True
            if saturated():
                if explain:
                    heapq.heappush(heap, top)
                    deep_end(merged())
                break
        if hopeless(u):
            by_user[u].clear()
            continue
        j = by_user[u].pop()
        if not futile(u, j) and consider(u, j):
            quiet = 0
            saturated_checked = False
        else:
            quiet += 1
        if by_user[u]:
            heapq.heappush(heap, rank(u))

    if scavengers:
        scavenge(p, scavengers, order, wait, caps)

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
    } if explain else {}  # fmt: skip
    return Decision(
        starts=tuple(p.starts),
        preemptions=tuple(p.preemptions),
        waiting=p.waiting,
        shares=shares,
        order=tuple(order),
    )

