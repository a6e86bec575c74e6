"""A researcher's caps and budget within one pass (policy.py): why the quota holds a job
back, per-GPU-type caps (which nodes a job may still use), and the scavengers of an
owner that give way once a regular job of theirs starts. Split out of the pass to keep
each piece small; it owns only its own counts, and changes the Pass only in shed()."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from scheduler.policy_pass import Pass
from scheduler.policy_types import PendingJob, Preempt, RunningJob, Snapshot, Start
from scheduler.shapes import Reason


def placement(start: Start, gpus: int, node_gpus: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """Where a started job's `gpus` are, as (node, GPUs there), rank 0 first: its one
    node; or for a job over several nodes, the remainder on `start.node` and all of
    each whole node in `more_nodes` (`node_gpus`: each node's GPUs, as in the Snapshot).
    The daemon and the simulator both turn a Start into ranks through this."""
    if not start.more_nodes:
        return ((start.node, gpus),)
    whole = tuple((n, node_gpus[n]) for n in start.more_nodes)
    return ((start.node, gpus - sum(g for _, g in whole)), *whole)


class _Sizes(dict[str, int]):
    """Node sizes for placement() of a running job, 0 for a node that left."""

    def __missing__(self, key: str) -> int:
        return 0


class Caps:
    """One pass's quota checks (Pass state read, its own per-type counts kept)."""

    def __init__(self, p: Pass, snap: Snapshot) -> None:
        self.p, self.snap = p, snap
        # GPUs held per GPU type, for those with per-type caps (filled when first asked),
        # and of those, what running scavengers hold (a regular job does not count them).
        self.type_held: dict[str, Counter[str]] = {}
        self.type_scav: dict[str, Counter[str]] = {}
        self.sizes = _Sizes()  # node -> GPUs, filled when first needed (per-type caps only)

    def of_type(self, u: str) -> Counter[str]:
        got = self.type_held.get(u)
        if got is None:
            p = self.p
            got = self.type_held[u] = Counter()
            scav = self.type_scav[u] = Counter()
            self.sizes.update((nid, n.info.gpus) for nid, n in p.nodes.items())
            for r in self.snap.running:
                if r.user == u:
                    for nid, g in placement(Start(r.id, r.node, r.more_nodes), r.gpus, self.sizes):
                        if nid in p.nodes:
                            got[p.nodes[nid].info.gpu_type] += g
                            if r.preemptible:
                                scav[p.nodes[nid].info.gpu_type] += g
        return got

    def took(self, u: str, start: Start, gpus: int) -> None:
        """`u`'s regular job started as `start`: its GPUs count toward per-type caps."""
        held = self.type_held.get(u)
        if held is not None:
            for nid, g in placement(start, gpus, self.sizes):
                held[self.p.nodes[nid].info.gpu_type] += g

    def took_scavenger(self, u: str, gpu_type: str, gpus: int) -> None:
        if u in self.type_held:
            self.type_held[u][gpu_type] += gpus
            self.type_scav[u][gpu_type] += gpus

    def capped(
        self, u: str, j: PendingJob, caps: tuple[tuple[str, int], ...], scavenger: bool = False
    ) -> tuple[PendingJob, Reason | None]:
        """A quota with per-type caps (`max_gpus: {h100: 4}`): `j` may not go to nodes of
        a type its owner would exceed; if no node is left, the cap is why it waits. As
        with max_gpus, a regular job does not count its owner's scavengers (shed())."""
        p = self.p
        held = self.of_type(u)
        if not scavenger:
            held = held - self.type_scav[u]
        over = [(t, cap) for t, cap in caps if held[t] + j.gpus > cap]
        if not over:
            return j, None
        banned = {t for t, _ in over}
        ok = frozenset(nid for nid, n in p.nodes.items() if n.info.gpu_type not in banned)
        if j.nodes is not None:
            ok &= j.nodes
        if ok:
            note = f"not on {', '.join(sorted(banned))} GPUs: {u}'s cap"
            return j._replace(nodes=ok, where=f"{j.where}; {note}" if j.where else note), None
        t, cap = over[0]
        text = f"quota: {u} holds {held[t]}/{cap} {t} GPUs, this job needs {j.gpus} more"
        return j, Reason("quota", text, (("gpu_type", t), ("held_gpus", held[t]), ("max_gpus", cap), ("gpus", j.gpus)))

    def reasons(self, u: str, j: PendingJob, scavenger: bool = False) -> list[Reason]:
        """Why `u`'s quota or budget holds `j` back now (empty: it does not). A regular
        job does not count its owner's scavengers: they give way to it (shed())."""
        p = self.p
        q = p.quota(u)
        blocked: list[Reason] = []
        jobs = p.jobs_held[u] - (0 if scavenger else p.scav_jobs.get(u, 0))
        held = p.held[u] - (0 if scavenger else p.scav.get(u, 0))
        if q.max_jobs is not None and jobs >= q.max_jobs:
            blocked.append(
                Reason(
                    "quota",
                    f"quota: {u} runs {jobs}/{q.max_jobs} jobs",
                    (("running_jobs", jobs), ("max_jobs", q.max_jobs)),
                )
            )
        if q.max_gpus is not None and held + j.gpus > q.max_gpus:
            blocked.append(
                Reason(
                    "quota",
                    f"quota: {u} holds {held}/{q.max_gpus} GPUs, this job needs {j.gpus} more"
                    if held
                    else f"quota: needs {j.gpus} GPUs, {u}'s limit is {q.max_gpus}",
                    (("held_gpus", held), ("max_gpus", q.max_gpus), ("gpus", j.gpus)),
                )
            )
        if q.gpu_hours_per_week is not None:
            used_h = self.snap.week_usage.get(u, 0.0) / 3600.0
            if used_h >= q.gpu_hours_per_week:
                blocked.append(
                    Reason(
                        "budget",
                        f"budget: {used_h:.1f}/{q.gpu_hours_per_week:g} GPU-hours used this week",
                        (("used_gpu_hours", round(used_h, 3)), ("gpu_hours_per_week", q.gpu_hours_per_week)),
                    )
                )

        return blocked

    def shed(self, u: str, j: PendingJob) -> None:
        """After `u`'s regular job `j` starts: `u`'s own scavengers (youngest first) give
        back what now puts `u` over their caps: per GPU type, then max_gpus and max_jobs."""
        p = self.p
        q = p.quota(u)
        if q.max_gpus is None and q.max_jobs is None and not q.max_gpus_per_type:
            return
        scavs = sorted(
            (r for rs in p.running_by_node.values() for r in rs if r.user == u and r.preemptible),
            key=lambda r: (-r.start_time, r.id),
        )
        going = [r for r in scavs if r.stop_deadline is not None or r.id in p.stopping_for]

        def give_back(r: RunningJob, cap: str) -> None:
            p.preemptions.append(Preempt(r.id, j.id, f"{u}'s own job {j.id} needs its room under {u}'s {cap}"))
            p.stop(r)
            p.scav_free -= r.gpus
            going.append(r)

        if q.max_gpus_per_type:
            held = self.of_type(u)
            kind = {r.id: p.nodes[r.node].info.gpu_type if r.node in p.nodes else "" for r in scavs}
            for t, cap in q.max_gpus_per_type:
                over_t = held[t] - sum(r.gpus for r in going if kind[r.id] == t) - cap
                for r in scavs:
                    if over_t <= 0:
                        break
                    if kind[r.id] == t and r not in going:
                        give_back(r, f"{t} cap")
                        over_t -= r.gpus
        over_g = p.held[u] - sum(r.gpus for r in going) - q.max_gpus if q.max_gpus is not None else 0
        over_j = p.jobs_held[u] - len(going) - q.max_jobs if q.max_jobs is not None else 0
        for r in scavs:
            if over_g <= 0 and over_j <= 0:
                break
            if r not in going:
                give_back(r, "caps")
                over_g -= r.gpus
                over_j -= 1
