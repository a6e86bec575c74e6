"""What the running jobs add up to, per node and per researcher: the part of a pass
(policy_pass.Pass) that does not depend on the waiting jobs.

The daemon builds one from a Snapshot's running jobs each pass. The simulator keeps one
between passes (add at a start, replace at a preemption, remove at a stop): under load,
with hundreds of jobs running and a pass at nearly every event, rebuilding it was a
quarter of a replay (docs/benchmarks.md). Both give the same numbers: everything is
kept in the order jobs were added, the order of Snapshot.running, and only integers are
kept as running sums. CPUs and memory are floats, so a node's are kept as the jobs'
amounts in that order, for the pass to take off its node one at a time as it always
did (a sum taken off once rounds differently: 4.0 - 0.05 - 1.1 is not 4.0 - 1.15).
What depends on the pass's `now` (ends already passed, the entry penalty) is worked
out by the pass, in that order (tests/unit/test_policy_running.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from scheduler.policy_types import INF, NodeInfo, RunningJob

# One node's share of a running job: (end, GPUs there, end is a prediction, CPUs, memory).
Part = tuple[float, int, bool, float, float]
# A node as a pass starts from it (RunningIndex.node_parts()): (GPUs free, CPUs free,
# memory free, (end, GPUs) of each part in order, the earliest predicted end, the jobs
# on that node alone, whether one of those or of the next was asked to stop, the jobs
# over several nodes with a part here).
NodeParts = tuple[
    int, float, float, tuple[tuple[float, int], ...], float, tuple[RunningJob, ...], bool, tuple[RunningJob, ...]
]


def running_end(r: RunningJob, default_limit: float) -> tuple[float, bool]:
    """(when `r`'s GPUs are expected back, not clamped to any now; whether that is a
    prediction): its limit, or its learned runtime when sooner, or its stop deadline.
    The one place this is worked out (PassCore._end clamps it to the pass's now)."""
    _, _, _, _, start, limit, stop, *_, expected, _ = r
    end = start + (default_limit if limit is None else limit)
    predicted = False
    if expected is not None and start + expected < end:
        end = start + expected
        predicted = True
    if stop is not None and stop < end:
        end = stop
        predicted = False
    return end, predicted


class RunningIndex:
    """Running jobs by node and by researcher; owned by whoever builds the Snapshots."""

    def __init__(
        self, nodes: tuple[NodeInfo, ...], default_limit: float, running: Iterable[RunningJob] = ()
    ) -> None:
        self.nodes = nodes
        self.default_limit = default_limit
        self._size = {n.id: n.gpus for n in nodes}
        self.jobs: dict[int, RunningJob] = {}
        self.parts: dict[str, dict[int, Part]] = {}  # node -> job id -> its part there
        self.used: dict[str, int] = {}  # node -> GPUs its parts hold
        # node -> node_parts() of it, until a part there changes: most nodes do not change
        # between two passes, and a pass per event on a pool of many nodes adds up.
        self.states: dict[str, NodeParts] = {}
        self.by_id = tuple(sorted(nodes, key=lambda n: n.id))  # a pass's order of nodes
        self.single: dict[str, dict[int, RunningJob]] = {}  # node -> jobs on that node alone
        self.multi: dict[str, dict[int, RunningJob]] = {}  # node -> jobs over several nodes, a part here
        self.stopping: dict[str, int] = {}  # node -> jobs on it alone that were asked to stop
        self.held: dict[str, int] = {}
        self.jobs_held: dict[str, int] = {}
        self.scav: dict[str, int] = {}  # GPUs held as scavengers
        self.scav_jobs: dict[str, int] = {}
        self.scav_free = 0  # scavengers' GPUs not yet asked back
        # GPUs of each researcher's regular jobs already asked to stop (an earlier pass's
        # reclaim, a cancel in its grace): gone soon, so they guarantee their owner nothing.
        self.going: dict[str, int] = {}
        self.ends: dict[str, dict[int, tuple[float, int]]] = {}  # user -> (end, GPUs), scavengers not
        # What a pass starts from, beyond node_parts() (policy_pass.PassBase: its NodeStates,
        # shared between passes until one takes GPUs there), and the nodes changed since.
        self.pass_base: object | None = None
        self.dirty: set[str] = set(self._size)
        for r in running:
            self.add(r)

    def add(self, r: RunningJob) -> None:
        """A job started."""
        if r.id in self.jobs:
            raise ValueError(f"job {r.id} is already running")
        self._put(r)

    def replace(self, r: RunningJob) -> None:
        """`r` changed while running (asked to stop, a new prediction); it keeps its
        place in every order. Where it runs and for whom cannot change."""
        old = self.jobs[r.id]
        if (old.user, old.gpus, old.node, old.more_nodes, old.preemptible) != (
            r.user, r.gpus, r.node, r.more_nodes, r.preemptible,
        ):  # fmt: skip
            raise ValueError(f"job {r.id} changed where it runs or whose it is: remove and add it")
        self._take(old, keep_order=True)
        self._put(r)

    def remove(self, job_id: int) -> None:
        self._take(self.jobs.pop(job_id), keep_order=False)

    # -- internals ------------------------------------------------------------------
    def _put(self, r: RunningJob) -> None:
        job_id, u, g, nid0, _, _, stop, cpus, memory, more, _, preemptible = r
        self.jobs[job_id] = r
        end, predicted = running_end(r, self.default_limit)
        # A researcher is in held (and jobs_held) while they run a job, even one of no GPUs.
        self.held[u] = self.held.get(u, 0) + g
        self.jobs_held[u] = self.jobs_held.get(u, 0) + 1
        if preemptible:
            self.scav[u] = self.scav.get(u, 0) + g
            self.scav_jobs[u] = self.scav_jobs.get(u, 0) + 1
            if stop is None:
                self.scav_free += g
        else:
            self.ends.setdefault(u, {})[job_id] = (end, g)
            if stop is not None and g:
                self.going[u] = self.going.get(u, 0) + g
        rest = g
        # A job's GPUs on each node: whole nodes in more_nodes, the rest on its main node.
        # A node named twice (or the main node in more_nodes) is one part holding both.
        on: dict[str, int] = {}
        for nid in more:
            size = self._size.get(nid)
            if size is not None:
                rest -= size
                on[nid] = on.get(nid, 0) + size
        main = nid0 in self._size  # not: a node that left, its jobs reported lost elsewhere
        if main:
            on[nid0] = on.get(nid0, 0) + rest
        for nid, gpus in on.items():
            if nid == nid0:
                self._part(nid, job_id, (end, gpus, predicted, cpus, memory))
            else:
                self._part(nid, job_id, (end, gpus, predicted, 0.0, 0.0))
            if len(on) > 1:
                self.multi.setdefault(nid, {})[job_id] = r
        if not main:
            return
        if not more:
            self.single.setdefault(nid0, {})[job_id] = r
            if stop is not None:
                self.stopping[nid0] = self.stopping.get(nid0, 0) + 1

    def node_parts(self, n: NodeInfo) -> NodeParts | None:
        """What a pass starts from on node `n` (NodeParts), None if nothing runs there;
        kept until a part there changes. CPUs and memory are taken off the node one job
        at a time, in order, as floats always were. Ends are not clamped to a pass's now:
        its earliest() and conflicts() count an end past as now."""
        got = self.states.get(n.id)
        if got is None:
            parts = self.parts.get(n.id)
            if parts is None:
                return None
            ends: list[tuple[float, int]] = []
            first, c, m = INF, n.cpus, n.memory
            for e, g, predicted, cpus, memory in parts.values():
                ends.append((e, g))
                if predicted and e < first:
                    first = e
                if cpus:
                    c -= cpus
                if memory:
                    m -= memory
            on = self.single.get(n.id)
            over = self.multi.get(n.id)
            spread = () if over is None else tuple(over.values())
            got = self.states[n.id] = (
                n.gpus - self.used[n.id], c, m, tuple(ends), first,
                () if on is None else tuple(on.values()),
                n.id in self.stopping or any(r.stop_deadline is not None for r in spread),
                spread,
            )  # fmt: skip
        return got

    def _part(self, nid: str, job_id: int, part: Part) -> None:
        self.states.pop(nid, None)
        self.dirty.add(nid)
        self.parts.setdefault(nid, {})[job_id] = part
        self.used[nid] = self.used.get(nid, 0) + part[1]

    def _take(self, r: RunningJob, keep_order: bool) -> None:
        """Undo _put(r)'s sums. With keep_order (replace()) the job's entries stay, for
        _put to overwrite in place, so that it keeps its position in every dict."""
        job_id, u, g, nid0, _, _, stop, _, _, more, _, preemptible = r
        self.held[u] -= g
        self.jobs_held[u] -= 1
        if not self.jobs_held[u] and not keep_order:
            del self.held[u], self.jobs_held[u]
        if preemptible:
            self.scav[u] -= g
            self.scav_jobs[u] -= 1
            if not self.scav_jobs[u] and not keep_order:
                del self.scav[u], self.scav_jobs[u]
            if stop is None:
                self.scav_free -= g
        else:
            if stop is not None and g:
                _less(self.going, u, g)
            if not keep_order:
                ends = self.ends[u]
                del ends[job_id]
                if not ends:
                    del self.ends[u]
        for nid in dict.fromkeys((*more, nid0)):  # each node once: _put made one part there
            parts = self.parts.get(nid)
            if parts is None or job_id not in parts:
                continue
            self.states.pop(nid, None)
            self.dirty.add(nid)
            self.used[nid] -= parts[job_id][1]
            if not keep_order:
                del parts[job_id]
                if not parts:
                    del self.parts[nid], self.used[nid]
                over = self.multi.get(nid)
                if over is not None and over.pop(job_id, None) is not None and not over:
                    del self.multi[nid]
        if not more and nid0 in self._size:
            if stop is not None:
                _less(self.stopping, nid0, 1)
            if not keep_order:
                single = self.single[nid0]
                del single[job_id]
                if not single:
                    del self.single[nid0]


def _less(counts: dict[str, int], key: str, n: int) -> None:
    """Take `n` off `counts[key]`; a count at 0 goes (readers look keys up with .get)."""
    left = counts[key] - n
    if left:
        counts[key] = left
    else:
        del counts[key]
