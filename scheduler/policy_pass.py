"""The working state of one `schedule()` call (policy.py): who holds what, free GPUs
per node (bucketed for best fit), the reservations and claims made so far. Reclaim is
in the base class (policy_reclaim.py), the time arithmetic and reservations' conflicts
in its base (policy_state.PassCore)."""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Collection
from dataclasses import replace
from operator import attrgetter

from scheduler.policy_reclaim import Reclaimer
from scheduler.policy_running import RunningIndex
from scheduler.policy_state import NodeState, Reservation
from scheduler.policy_types import INF, NodeInfo, PendingJob, Preempt, RunningJob, Snapshot, Start, Waiting
from scheduler.quota import Quota

_node_gpus = attrgetter("gpus")


class PassBase:
    """What every pass starts from, given the running jobs: each node's NodeState, the
    jobs on each node alone, the nodes where one is stopping, the free-GPU buckets (in
    node id order). Kept on a RunningIndex and redone for the nodes where a job started
    or ended since (RunningIndex.dirty): the simulator's index lives for a whole replay,
    and building every node's state each pass was a sixth of it. A pass copies the
    containers, and a NodeState before it takes GPUs there (Pass.take())."""

    __slots__ = (
        "nodes", "running_by_node", "multi_by_node", "stop_nodes", "buckets", "max_per_node", "biggest_node", "gpus",
    )  # fmt: skip

    def __init__(self, idx: RunningIndex) -> None:
        by_id = idx.by_id
        self.max_per_node = top = max(map(_node_gpus, by_id), default=0)
        schedulable = [n.gpus for n in by_id if n.schedulable]
        self.biggest_node: int | None = max(schedulable) if schedulable else None
        self.gpus = sum(schedulable)
        self.nodes: dict[str, NodeState] = {n.id: _state(idx, n) for n in by_id}
        self.running_by_node: dict[str, tuple[RunningJob, ...]] = {}
        self.multi_by_node: dict[str, tuple[RunningJob, ...]] = {}
        self.stop_nodes: set[str] = set()
        for n in by_id:
            self._jobs(idx, n)
        self.buckets: list[dict[str, None]] = [{} for _ in range(top + 1)]
        self._bucket()
        idx.dirty.clear()

    def update(self, idx: RunningIndex) -> None:
        """Redo the nodes changed since the last pass."""
        dirty = idx.dirty
        if not dirty:
            return
        nodes = self.nodes
        for n in idx.by_id:
            if n.id in dirty:
                nodes[n.id] = _state(idx, n)  # an existing key: the dict keeps its order
                self._jobs(idx, n)
        dirty.clear()
        for b in self.buckets:
            b.clear()
        self._bucket()

    def _jobs(self, idx: RunningIndex, n: NodeInfo) -> None:
        v = idx.states.get(n.id)
        nid = n.id
        if v is not None and v[5]:
            self.running_by_node[nid] = v[5]
        else:
            self.running_by_node.pop(nid, None)
        if v is not None and v[7]:
            self.multi_by_node[nid] = v[7]
        else:
            self.multi_by_node.pop(nid, None)
        if v is not None and v[6]:
            self.stop_nodes.add(nid)
        else:
            self.stop_nodes.discard(nid)

    def _bucket(self) -> None:
        buckets, top = self.buckets, self.max_per_node
        for nid, node in self.nodes.items():
            free = node.free
            if free > 0 and node.info.schedulable:
                buckets[free if free < top else top][nid] = None


def _state(idx: RunningIndex, n: NodeInfo) -> NodeState:
    """Node `n`'s state as a pass starts from it. Its earliest predicted end is kept as
    it is (an end already past is not clamped to a now: predicted() and take() compare
    with times at or after the pass's now, where either gives the same answer)."""
    v = idx.node_parts(n)
    if v is None:
        return NodeState(n, n.gpus, n.cpus, n.memory, ())
    free, c, m, ends, first, *_ = v
    return NodeState(n, free, c, m, ends, first_predicted=first)


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
        base = idx.pass_base
        if isinstance(base, PassBase):
            base.update(idx)
        else:
            base = idx.pass_base = PassBase(idx)
        # Copies of what this pass changes; the NodeStates themselves are copied by take().
        self.nodes = dict(base.nodes)
        self._own: set[str] = set()  # nodes whose NodeState is this pass's own copy
        self.running_by_node = base.running_by_node  # read only
        self.multi_by_node = base.multi_by_node  # read only
        self.parts = idx.parts  # read only
        self.stop_nodes = set(base.stop_nodes)
        self.buckets = [dict(b) for b in base.buckets]
        self.max_per_node = base.max_per_node
        self.biggest_node = base.biggest_node
        self.schedulable_gpus = base.gpus
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
        self.going = idx.going  # read only: regular jobs' GPUs asked to stop before this pass
        self.scav_jobs = dict(idx.scav_jobs)
        # Scavenger GPUs not yet asked back: while there are some, a blocked job may take them.
        self.scav_free = idx.scav_free
        self.reservations: list[Reservation] = []
        self._largest: int | None = None
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
        if need == 0:
            # A job that holds no GPU (CPU only) fits where no GPU is free too, which no
            # bucket holds: those nodes first, as the fullest (it takes no GPU from anyone).
            for nid, node in self.nodes.items():
                if (
                    node.free <= 0
                    and node.info.schedulable
                    and nid not in skip
                    and (only is None or nid in only)
                    and node.cpus >= j.cpus
                    and node.memory >= j.memory
                ):
                    return node
        for k in range(max(need, 1), self.max_per_node + 1):
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

    def multi_fit(self, j: PendingJob, clear: bool = False) -> tuple[NodeState, tuple[str, ...]] | None:
        """Whole free nodes plus a best-fit node for the remainder; None if it does not fit now.
        `clear`: only nodes where starting it delays no reservation (as a job on one node
        tries the next node: a job over several once waited for a reservation on its
        remainder's node while another node had room and none, a review)."""
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
            and not (clear and self.conflicts(nodes[nid], j, nodes[nid].free))
        ]
        if len(full) < whole:
            return None
        if rest == 0:
            return self.nodes[full[whole - 1]], tuple(full[: whole - 1])
        taken = tuple(full[:whole])
        skip = set(taken)
        while (node := self.best_fit(j, rest, skip=skip)) is not None:
            if not clear or self.conflicts(node, j, rest) is None:
                return node, taken
            skip.add(node.info.id)
        return None

    def largest_free(self) -> int:
        if self._largest is None:
            self._largest = next((k for k in range(self.max_per_node, 0, -1) if self.buckets[k]), 0)
        return self._largest

    def take(self, node: NodeState, j: PendingJob, gpus: int | None = None) -> None:
        need = j.gpus if gpus is None else gpus
        nid = node.info.id
        if nid in self._own:
            node = self.nodes[nid]
        else:  # the first start here in this pass: the shared state is left as it was
            self._own.add(nid)
            node = self.nodes[nid] = replace(self.nodes[nid], sorted_releases=None, sorted_raw=None)
        old = min(node.free, self.max_per_node)
        if old > 0:
            self.buckets[old].pop(node.info.id, None)
        node.free -= need
        node.cpus -= j.cpus
        node.memory -= j.memory
        end = self.now + self._dur(j)
        node.releases = (*node.releases, (end, need))
        if j.cpus or j.memory:
            node.started = (*node.started, (end, j.cpus, j.memory))
        if (
            j.expected is not None
            and end < node.first_predicted
            and end < self.now + self._limit(j.time_limit)
        ):
            node.first_predicted = end
        node.sorted_releases = node.sorted_raw = None
        self._largest = None
        if node.free > 0:
            self.buckets[min(node.free, self.max_per_node)][node.info.id] = None

    def earliest(self, node: NodeState, gpus: int) -> float:
        """When `gpus` GPUs will be free on `node` if every job runs to its limit."""
        free = node.free
        if free >= gpus:
            return self.now
        order = node.sorted_releases
        now = self.now
        if order is None or node.sorted_at != now:  # for this now; the sort for its life
            raw = node.sorted_raw
            if raw is None:
                raw = node.sorted_raw = sorted(node.releases)
            if raw and raw[0][0] < now:
                # Ends already past are now, so among them the order is by GPUs (a part
                # can be negative: a job whose more_nodes hold more than it has).
                k = bisect_right(raw, (now, INF))
                order = [(now, g) for g in sorted([g for _, g in raw[:k]])]
                order += raw[k:]
            else:
                order = raw
            node.sorted_releases, node.sorted_at = order, now
        for end, g in order:
            free += g
            if free >= gpus:
                return end
        return INF

    def reserve(self, j: PendingJob) -> Reservation | None:
        if self.cfg.multi_node and 0 < self.max_per_node < j.gpus:
            return self._reserve_multi(j)
        best: tuple[float, str] | None = None
        room = j.cpus or j.memory
        for nid, node in self.nodes.items():
            if not self.can_hold(node, j):
                continue
            t = self.earliest(node, j.gpus)
            if room:
                t = self.room_at(node, j, t)
            if t < INF and (best is None or (t, nid) < best):
                best = (t, nid)
        if best is None:
            return None
        res = Reservation(
            j.id, best[1], best[0], j.gpus, end=best[0] + self._dur(j), cpus=j.cpus, memory=j.memory
        )
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
