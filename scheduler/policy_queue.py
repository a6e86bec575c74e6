"""The waiting side of a pass (policy.py): each researcher's queue in their own order,
and the scavengers, placed after everyone else."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import Counter
from collections.abc import Iterable
from operator import attrgetter
from typing import Any

from scheduler.policy_caps import Caps
from scheduler.policy_pass import Pass
from scheduler.policy_reasons import resource_reason
from scheduler.policy_types import INF, PendingJob, Snapshot, Start
from scheduler.shapes import Reason

_age_key = attrgetter("submit_time", "id")
_submit = attrgetter("submit_time")
_length_fields = attrgetter("expected", "time_limit")
_priority = attrgetter("priority")
_requeued = attrgetter("requeued")


def _own_key(j: PendingJob) -> tuple[bool, int, float, int]:
    # Ascending, so the next job is last: requeued first, then priority, then oldest.
    return (j.requeued, j.priority, -j.submit_time, -j.id)


class PendingIndex:
    """Each researcher's waiting jobs kept in the order queues() gives them (next job
    last), and the scavengers apart, for a caller that sees every arrival and start:
    the simulator. Under load its queue holds hundreds to thousands of jobs and it passes
    at nearly every event; grouping and sorting them again each pass was a seventh of a
    replay. The daemon's pass builds the queues from its Snapshot as before. Owned by
    whoever builds the Snapshots; it must hold exactly Snapshot.pending."""

    def __init__(self, pending: Iterable[PendingJob] = ()) -> None:
        self.queues: dict[str, list[PendingJob]] = {}
        # Preemptible jobs, in the order they came (Snapshot.pending's order).
        self.scavengers: dict[int, PendingJob] = {}
        self.size = 0
        for j in pending:
            self.add(j)

    def add(self, j: PendingJob) -> None:
        self.size += 1
        if j.preemptible:
            self.scavengers[j.id] = j
        else:
            insort(self.queues.setdefault(j.user, []), j, key=_own_key)

    def remove(self, j: PendingJob) -> None:
        if j.preemptible:
            del self.scavengers[j.id]
        else:
            q = self.queues.get(j.user, [])
            i = bisect_left(q, _own_key(j), key=_own_key)
            if i == len(q) or q[i].id != j.id:
                raise KeyError(j.id)
            del q[i]
        self.size -= 1


def queues(snap: Snapshot) -> tuple[dict[str, list[PendingJob]], list[tuple[PendingJob, list[Reason]]], Counter[str]]:
    """(each researcher's waiting jobs, their next job last; the scavengers, with the
    reasons they would otherwise wait for (filled in by the pass); waiting jobs per
    researcher)."""
    cfg = snap.config
    idx: PendingIndex | None = snap.pending_index
    if idx is not None and not cfg.duration_hint and idx.size == len(snap.pending):
        # Kept by the caller (the simulator) in this very order; copied, as the pass
        # pops from them. (Which researcher comes first in the dict does not matter:
        # every use of it is keyed or sorted.)
        kept = {u: q[:] for u, q in idx.queues.items() if q}
        kept_scav: list[tuple[PendingJob, list[Reason]]] = [(j, []) for j in idx.scavengers.values()]
        counts = Counter({u: len(q) for u, q in kept.items()})
        for j, _ in kept_scav:
            counts[j.user] += 1
        return kept, kept_scav, counts
    by_user: dict[str, list[PendingJob]] = {}
    # Scavengers (scavenge()): --preemptible jobs, and jobs over their owner's budget
    # when the quota says `scavenge`, with the reasons they would otherwise wait for.
    scavengers: list[tuple[PendingJob, list[Reason]]] = []
    queue_of = by_user.get
    for j in snap.pending:
        if j.preemptible:
            scavengers.append((j, []))
        else:
            q = queue_of(j.user)
            if q is None:
                by_user[j.user] = [j]
            else:
                q.append(j)
    pending_count = Counter({u: len(js) for u, js in by_user.items()})
    for j, _ in scavengers:
        pending_count[j.user] += 1
    # A researcher's own order, in stable sorts on C-level keys where it can, least
    # significant first (several times cheaper than a Python key per job; ids make the
    # keys unique, so the order is exact): age, then (duration_hint) expected length,
    # then priority, then requeued first.
    young_after = snap.now - (cfg.hint_age_max if cfg.hint_age_max is not None else INF)
    for jobs in by_user.values():
        if len(jobs) < 2:
            continue
        jobs.sort(key=_age_key)
        if cfg.duration_hint:
            jobs[:] = _shortest_first(jobs, cfg.default_time_limit, young_after)
        if any(map(_priority, jobs)):
            jobs.sort(key=_priority, reverse=True)  # reverse keeps a sort stable
        if any(map(_requeued, jobs)):
            jobs.sort(key=_requeued, reverse=True)
        jobs.reverse()  # pop() from the end gives the next job
    return by_user, scavengers, pending_count


def _shortest_first(jobs: list[PendingJob], default_limit: float, young_after: float) -> list[PendingJob]:
    """`jobs` (oldest first) in the order of PolicyConfig.duration_hint: those submitted
    at or before `young_after` (they have waited hint_age_max) as they are, then the
    rest by expected length (a confident prediction capped by the limit, else the time
    limit, else the default), oldest first among equals. Every pass sorts every queue,
    so the lengths are one comprehension and the sort a C-level key (a Python key per
    job cost the x1.25 replay a third of its speed)."""
    k = bisect_right(jobs, young_after, key=_submit)
    rest = jobs[k:] if k else jobs
    if len(rest) < 2:
        return jobs
    # A prediction counts at most up to the limit (as PassCore._dur has it).
    lens = [
        e if e is not None and e < limit else limit
        for e, t in map(_length_fields, rest)
        for limit in (t or default_limit,)
    ]
    if min(lens) == max(lens):
        return jobs
    order = sorted(range(len(rest)), key=lens.__getitem__)  # stable: ties stay oldest first
    return jobs[:k] + list(map(rest.__getitem__, order))


def scavenge(
    p: Pass,
    jobs: list[tuple[PendingJob, list[Reason]]],
    order: list[int],
    wait: Any,
    caps: Caps,
) -> None:
    """Place scavengers after everyone else: oldest first, on GPUs that are free now,
    best fit, never on a node where GPUs are being claimed (they would be taken back
    at once). Reservations do not hold them back: whoever needs their GPUs later takes
    them (consider() preempts scavengers first). A job over a node does not scavenge."""
    claimed = tuple(nid for nid, g in p.node_claimed.items() if g > 0)
    for j, budget in sorted(jobs, key=lambda t: (t[0].submit_time, t[0].id)):
        u = j.user
        order.append(j.id)
        left = j.count
        held_back: list[Reason] = []
        while left:
            # Caps still hold (a scavenger is over its budget, not over its caps).
            held_back = [r for r in caps.reasons(u, j, scavenger=True) if r.kind != "budget"]
            typed = j
            if not held_back and p.quota(u).max_gpus_per_type:
                typed, capped = caps.capped(u, j, p.quota(u).max_gpus_per_type, scavenger=True)
                held_back = [capped] if capped is not None else []
            if held_back:
                break
            node = p.best_fit(typed, skip=claimed) if j.gpus <= p.max_per_node else None
            if node is None:
                break
            p.take(node, j)
            p.starts.append(Start(j.id, node.info.id, (), preemptible=True))
            caps.took_scavenger(u, node.info.gpu_type, j.gpus)
            p.held[u] += j.gpus
            p.scav[u] = p.scav.get(u, 0) + j.gpus
            p.scav_jobs[u] = p.scav_jobs.get(u, 0) + 1
            p.jobs_held[u] += 1
            left -= 1
        if not left:
            continue
        rest = j if left == j.count else j._replace(count=left)
        if held_back:
            wait(rest, [*held_back, *budget], None)
        elif j.gpus <= p.max_per_node and p.best_fit(j) is not None:
            why = Reason(
                "reclaim",
                "reclaim: as a preemptible job it takes only idle GPUs; the free ones are "
                "being taken back for a waiting job",
                (("gpus", j.gpus), ("preemptible", True)),
            )
            wait(rest, [why, *budget], None)
        elif j.nodes is not None:
            wait(rest, [resource_reason(p, j), *budget], None)
        else:
            why = Reason(
                "resources",
                f"resources: as a preemptible job it takes only idle GPUs; no node has {j.gpus} free now"
                if j.gpus <= p.max_per_node
                else "resources: a preemptible job must fit on one node",
                (("gpus", j.gpus), ("preemptible", True)),
            )
            wait(rest, [why, *budget], None)
