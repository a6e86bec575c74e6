"""The working state of one `schedule()` call (policy.py): who holds what, free GPUs
per node (bucketed for best fit), the reservations and claims made so far. Reclaim is
in the base class (policy_reclaim.py), the time arithmetic and reservations' conflicts
in its base (policy_state.PassCore)."""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Collection
from operator import attrgetter

from scheduler.policy_reclaim import Reclaimer
from scheduler.policy_running import RunningIndex
from scheduler.policy_state import NodeState, Reservation
from scheduler.policy_types import INF, PendingJob, Preempt, RunningJob, Snapshot, Start, Waiting
from scheduler.quota import Quota

_node_gpus = attrgetter("gpus")


class Pass(Reclaimer):
    """Mutable working state of one `schedule()` call; never escapes it."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.cfg = snap.config
        self.now = snap.now
        idx: RunningIndex | None = snap.running_index
        if idx is None or (idx.nodes is not snap.nodes and idx.nodes != snap.nodes) or (
            idx.default_limit != self.cfg.default_time_limit
        ):
            idx = RunningIndex(snap.nodes, self.cfg.default_time_limit, snap.running)
        now = self.now
        # Each node's state from its running jobs' parts (RunningIndex).
        nodes: dict[str, NodeState] = {}
        running_by_node: dict[str, tuple[RunningJob, ...]] = {}
        # Nodes where a job (on that node alone) is on its way out: see Reclaimer.stop().
        stop_nodes: set[str] = set()
        kept, node_parts = idx.states, idx.node_parts
        for n in idx.by_id:
            nid = n.id
            v = kept.get(nid) or node_parts(n)  # (a call per node was a tenth of this loop)
            if v is None:
                nodes[nid] = NodeState(n, n.gpus, n.cpus, n.memory, ())
                continue
            free, c, m, ends, first, on, stop = v
            nodes[nid] = NodeState(n, free, c, m, ends, first_predicted=first if first > now else now)
            if on:
                running_by_node[nid] = on
                if stop:
                    stop_nodes.add(nid)
        self.nodes = nodes
        # The entry penalty: what each researcher's running jobs will still use, by their
        # expected ends (scavengers weigh on nobody's fair share, their owner's included).
        penalty: dict[str, float] = {}
        for u, by_job in idx.ends.items():
            pen = 0.0
            for e, g in by_job.values():
                pen += g * (e - now) if e > now else 0.0
            penalty[u] = pen
        self.held: Counter[str] = Counter(idx.held)
        self.jobs_held: Counter[str] = Counter(idx.jobs_held)
        self.penalty = penalty
        self.scav = dict(idx.scav)  # GPUs each researcher holds as scavengers
        self.scav_jobs = dict(idx.scav_jobs)
        # Scavenger GPUs not yet asked back: while there are some, a blocked job may take them.
        self.scav_free = idx.scav_free
        self.running_by_node = running_by_node
        self.stop_nodes = stop_nodes
        # Free-GPU buckets make best-fit O(GPUs per node) instead of O(nodes).
        self.max_per_node = top = max(map(_node_gpus, snap.nodes), default=0)
        self.buckets: list[dict[str, None]] = [{} for _ in range(top + 1)]
        buckets = self.buckets
        for nid, node in nodes.items():
            free = node.free
            if free > 0 and node.info.schedulable:
                buckets[free if free < top else top][nid] = None
        self.reservations: list[Reservation] = []
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
        # The fewest GPUs a reclaim already failed to find, per (kind, researcher): within a
        # pass what can be reclaimed only shrinks (starts, claims), so a bigger ask fails too.
        self.no_reclaim: dict[tuple[str, str], int] = {}
        self.easy_reserved = False
        self.quota_cache: dict[str, Quota] = {}

    # -- placement ------------------------------------------------------------------
    def best_fit(
        self, j: PendingJob, gpus: int | None = None, skip: Collection[str] = ()
    ) -> NodeState | None:
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

    def multi_fit(self, j: PendingJob) -> tuple[NodeState, tuple[str, ...]] | None:
        """Whole free nodes plus a best-fit node for the remainder; None if it does not fit now."""
        whole, rest = self.split(j.gpus)
        nodes = self.nodes
        full = [
            nid
            for nid in self.buckets[self.max_per_node]
            if nodes[nid].free == nodes[nid].info.gpus
            and (j.nodes is None or nid in j.nodes)
            # Each rank asks its node for the job's CPUs and memory (per node).
            and nodes[nid].cpus >= j.cpus
            and nodes[nid].memory >= j.memory
        ]
        if len(full) < whole:
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

    def take(self, node: NodeState, j: PendingJob, gpus: int | None = None) -> None:
        need = j.gpus if gpus is None else gpus
        old = min(node.free, self.max_per_node)
        if old > 0:
            self.buckets[old].pop(node.info.id, None)
        node.free -= need
        node.cpus -= j.cpus
        node.memory -= j.memory
        end = self.now + self._dur(j)
        node.releases = (*node.releases, (end, need))
        if (
            j.expected is not None
            and end < node.first_predicted
            and end < self.now + self._limit(j.time_limit)
        ):
            node.first_predicted = end
        node.sorted_releases = None
        self._largest = None
        if node.free > 0:
            self.buckets[min(node.free, self.max_per_node)][node.info.id] = None

    def earliest(self, node: NodeState, gpus: int) -> float:
        """When `gpus` GPUs will be free on `node` if every job runs to its limit."""
        free = node.free
        if free >= gpus:
            return self.now
        order = node.sorted_releases
        if order is None:
            order = node.sorted_releases = sorted(node.releases)
            now = self.now
            if order and order[0][0] < now:
                # Ends already past are now, so among them the order is by GPUs (a part
                # can be negative: a job whose more_nodes hold more than it has).
                k = bisect_right(order, (now, INF))
                order[:k] = [(now, g) for g in sorted([g for _, g in order[:k]])]
        for end, g in order:
            free += g
            if free >= gpus:
                return end
        return INF

    def reserve(self, j: PendingJob) -> Reservation | None:
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
        res = Reservation(j.id, best[1], best[0], j.gpus, end=best[0] + self._dur(j))
        self.reservations.append(res)
        return res

    def _reserve_multi(self, j: PendingJob) -> Reservation | None:
        whole, rest = self.split(j.gpus)
        usable = [
            n for n in self.nodes.values() if n.info.gpus == self.max_per_node and self.can_hold(n, j, 0)
        ]
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
        res = Reservation(j.id, node, at, j.gpus, more, end=at + self._dur(j))
        self.reservations.append(res)
        return res
