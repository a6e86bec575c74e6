"""The scheduler loop: build a Snapshot, call the one policy, carry out its Decision.

Owns the last Decision (read by the API for reasons, ETAs, ranks and shares), why each
waiting array can start no task (`array_waits`), and when the last pass ran. It settles
chains (`--after`) and ended arrays before each pass: the only thread that drops a met
dependency, cancels a job whose dependency failed, or ends an array. A waiting array
reaches the policy as one entry with a count (its `%N` cap applied here); its task's
row is made when the policy starts one. It is the only
thread that starts jobs; it asks jobs to stop only
through the job-control core. The policy (`policy.schedule`) is pure: this module is
the side that reads the store, the nodes and the GPU monitors, and the clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

from scheduler.auth import Caller
from scheduler.config import DaemonConfig
from scheduler.control import JobControl
from scheduler.dirbook import DirBook
from scheduler.gputypes import matching
from scheduler.ledger import UsageLedger
from scheduler.nodes import NodeBook, NodeRecord
from scheduler.policy import (
    Decision,
    NodeInfo,
    PendingJob,
    PolicyConfig,
    RunningJob,
    Snapshot,
    Waiting,
    placement,
    schedule,
)
from scheduler.predict import RuntimeHistory
from scheduler.quota import QuotaBook
from scheduler.shapes import ACTIVE, JobState, Reason
from scheduler.store import JobRow, Store
from scheduler.store_arrays import ArrayEntry

log = logging.getLogger("labq.scheduler")

LEARN_FROM_S = 30 * 86400.0  # a restarted daemon learns from the last 30 days of runs


def held_gpus(active: list[JobRow]) -> dict[str, set[int]]:
    """GPU indices each node's active jobs hold (as labq assigned them)."""
    held: dict[str, set[int]] = {}
    for j in active:
        for node, _gpus, ids in j.placements():
            if node and ids:
                held.setdefault(node, set()).update(int(g) for g in ids.split(",") if g.isdigit())
    return held


def unplaced(active: list[JobRow]) -> set[str]:
    """Nodes where an active job holds GPUs whose indices labq does not know yet: Ray
    chose them (pick_gpus gave None) and the job has not said which. labq cannot pick
    around those, so Ray chooses there too until they are known (pick_gpus)."""
    return {node for j in active for node, gpus, ids in j.placements() if node and gpus > 0 and not ids}


class Scheduler:
    def __init__(
        self,
        store: Store,
        config: DaemonConfig,
        nodes: NodeBook,
        control: JobControl,
        ledger: UsageLedger,
        quotas: Callable[[], QuotaBook],
        unusable: Callable[[str], set[int]],
        closed: Callable[[], bool] = lambda: False,
        wake: threading.Event | None = None,
        dirs: DirBook | None = None,
        look: Callable[[], None] = lambda: None,
        joined: Callable[[], bool] = lambda: False,
    ) -> None:
        """`dirs`: which nodes have the directories jobs need (the GPU thread asks the
        agents; `look` asks it to at once)."""
        self.store = store
        self.config = config
        self.nodes = nodes
        self.control = control
        self.ledger = ledger
        self._quotas = quotas
        self._unusable = unusable
        self._closed = closed
        self.dirs = dirs
        self._look = look
        self._joined = joined
        self._cluster_seen = False
        # Learned runtimes (issue 19): the finished runs, read as they end (this thread
        # only; the API reads predictions through `expected`).
        self.history = RuntimeHistory()
        self._runs_upto = time.time() - LEARN_FROM_S
        self.decision: Decision | None = None
        # Everyone's decayed usage (GPU-seconds) as the last snapshot read it, those with
        # no job now included (the decision's shares are only those with one). This
        # thread replaces the dict whole; the API reads it (`labq quota show`).
        self.usage_seen: dict[str, float] = {}
        self.last_pass = 0.0
        self.pass_s = 0.0  # how long the last pass took (health, benchmarks)
        self.wake = wake or threading.Event()
        self.api_busy_until = 0.0  # monotonic; the API handlers push it forward
        # Arrays none of whose tasks may start now, and why (the policy never sees them).
        self.array_waits: dict[int, Waiting] = {}

    def policy_config(self) -> PolicyConfig:
        c = self.config
        return PolicyConfig(
            default_time_limit=c.default_time_limit_s,
            min_runtime=c.min_runtime_s,
            grace_period=c.grace_period_s,
            preemption=c.preemption,
            backfill=c.backfill,
            multi_node=c.allow_multi_node,
            duration_hint=c.shortest_first,
        )

    def waiting_for(self, job_id: int) -> Waiting | None:
        d = self.decision
        return None if d is None else d.waiting.get(job_id)

    # -- the snapshot -------------------------------------------------------------------------
    def snapshot(
        self, now: float, chained: Collection[int] = (), arrays: list[ArrayEntry] | None = None, want: bool = True
    ) -> Snapshot:
        """`chained`: waiting jobs that wait for others (not the policy's to place yet).
        `arrays`: the waiting arrays (read here when not given). `want`: say which
        directories the waiting jobs need (the scheduler thread's own pass only)."""
        pending_rows = self.store.policy_rows((JobState.PENDING,))
        if chained:
            pending_rows = [r for r in pending_rows if r[0] not in chained]
        arrays_in = [
            e
            for e in (self.store.array_entries() if arrays is None else arrays)
            if e.startable and e.id not in chained
        ]
        active = self.store.jobs(states=ACTIVE, with_spec=False)
        decayed, week = self.ledger.usage(now, active)
        self.usage_seen = decayed  # a fresh dict from the ledger each pass; nobody changes it
        held = held_gpus(active)
        closed = self._closed()
        nodes = tuple(
            NodeInfo(
                id=n.id,
                name=n.name,
                # An unhealthy GPU, or one a stray process holds, is not offered to new
                # jobs unless a labq job already has it.
                gpus=n.gpus - len(self._unusable(n.id) - held.get(n.id, set())),
                cpus=n.cpus,
                memory=n.memory,
                schedulable=n.schedulable and n.alive and not closed,
                gpu_type=n.gpu_type,
            )
            for n in self.nodes.all()
        )
        place = self._placer(arrays_in, want)
        expected = self.expected
        if place is None:  # one node, the common case: no call per waiting job
            pending = [
                PendingJob(jid, user, gpus, submit, prio, limit, bool(requeued), cpus, memory, 1, None, "",
                           expected(user, sig) if sig else None, bool(pre))
                for jid, user, gpus, submit, prio, limit, requeued, cpus, memory, _n, _s, _d, sig, pre, _w in pending_rows
            ]
            pending += [
                PendingJob(e.id, e.user, e.gpus, e.submit_time, e.priority, e.time_limit, False, e.cpus, e.memory,
                           e.startable, None, "", expected(e.user, e.sig) if e.sig else None, bool(e.preemptible))
                for e in arrays_in
            ]  # fmt: skip
        else:
            needs = place.needs
            pending = [
                PendingJob(jid, user, gpus, submit, prio, limit, bool(requeued), cpus, memory, 1,
                           *place(*needs.get(jid, _NO_NEED)), expected(user, sig) if sig else None, bool(pre))
                for jid, user, gpus, submit, prio, limit, requeued, cpus, memory, _n, _s, _d, sig, pre, _w in pending_rows
            ]
            pending += [
                PendingJob(e.id, e.user, e.gpus, e.submit_time, e.priority, e.time_limit, False, e.cpus, e.memory,
                           e.startable, *place(e.uid, e.user, e.needs_dir), expected(e.user, e.sig) if e.sig else None,
                           bool(e.preemptible))
                for e in arrays_in
            ]  # fmt: skip
        # Jobs that want a kind of node (POLICY_COLUMNS' last, `wants`), arrays too.
        kinds = {r[0]: r[-1] for r in pending_rows if r[-1]}
        kinds.update((e.id, e.wants) for e in arrays_in if e.wants)
        if kinds:
            pending = narrow(pending, kinds, self.nodes.all())
        return Snapshot(
            now=now,
            pending=tuple(pending),
            running=tuple(
                RunningJob(
                    id=j.id,
                    user=j.user,
                    gpus=j.gpus,
                    node=j.node or "",
                    start_time=j.start_time or now,
                    time_limit=j.time_limit,
                    stop_deadline=j.stop_deadline,
                    cpus=j.cpus,
                    memory=j.memory,
                    expected=expected(j.user, j.sig) if j.sig else None,
                    preemptible=bool(j.scavenging),
                    more_nodes=j.more_nodes,
                )
                for j in active
            ),
            nodes=nodes,
            usage=decayed,
            week_usage=week,
            quotas=self._quotas(),
            config=self.policy_config(),
        )

    def expected(self, user: str, sig: str) -> float | None:
        """A job's predicted runtime when the prediction is confident (PendingJob.expected)."""
        p = self.history.predict(user, sig)
        return p.seconds if p is not None and p.confident else None

    def learn(self) -> None:
        """Add the runs that have finished since the last pass (scheduler thread)."""
        for user, sig, start, end in self.store.finished_runs(self._runs_upto):
            self.history.add(user, sig, end - start)
            self._runs_upto = end

    def clustered(self) -> bool:
        """More than one machine: this daemon has seen two trusted nodes at once, or a
        machine has joined it. Sticky: with the other machines away, one node left is
        still a cluster (a job whose directory only they have waits for them)."""
        if not self._cluster_seen:
            alive = sum(1 for n in self.nodes.all() if n.alive and n.trusted)
            self._cluster_seen = alive > 1 or self._joined()
        return self._cluster_seen

    def _placer(self, arrays: list[ArrayEntry], want: bool = True) -> _Place | None:
        """Which nodes may run each waiting job that needs directories (PendingJob.nodes,
        .where). None: any node for every job (one machine, the embedded default, or
        before the agents are up). On a cluster, only the nodes whose agent found every
        directory the job needs; while they have not all been asked, the job waits a
        moment (and the GPU thread is asked to look at once). `want`: this is the
        scheduler thread's pass (a preview only reads what is known)."""
        # Drained nodes too: a job must wait for the node with its directory, not fail
        # on the only other one.
        alive = frozenset(n.id for n in self.nodes.all() if n.alive and n.trusted)
        if self.dirs is None or not self.dirs.active or not self.clustered():
            if self.dirs is not None and want:
                self.dirs.want((), alive)
            return None
        place = _Place(self.dirs, alive, self.store.needs_dirs() if want else {})
        if want:
            wanted = {
                (uid, user, d)
                for uid, user, dirs in (*place.needs.values(), *((e.uid, e.user, e.needs_dir) for e in arrays))
                for d in dirs.split("\n")
                if d
            }
            if self.dirs.want(wanted, alive):
                self._look()
        return place

    def pick_gpus(
        self, node_id: str, count: int, held: dict[str, set[int]], unknown: Collection[str] = ()
    ) -> tuple[int, ...] | None:
        """Healthy free GPU indices for a job on this node; None = let Ray choose.

        labq picks the indices itself so that a GPU NVML calls unhealthy (or one a stray
        process holds) is never handed out; Ray still counts them. Where Ray and NVML
        disagree on the count (e.g. the raylet was started with CUDA_VISIBLE_DEVICES),
        the indices would not mean the same thing, so Ray chooses. Ray chooses too on a
        node in `unknown` (unplaced()): a job Ray placed there before the node's first
        GPU report has not said which GPUs it got, and labq picking GPU 0 for the next
        one while Ray gives the first GPU 0 would put both on one GPU.
        """
        node = self.nodes.get(node_id)
        if node is None or node.nvml_gpus is None or node_id in unknown:
            return None
        if not node.simulated and node.nvml_gpus != node.gpus:
            return None
        bad = self._unusable(node_id)
        free = [i for i in range(node.gpus) if i not in held.get(node_id, set()) and i not in bad]
        if len(free) < count:
            return None
        return tuple(free[:count])

    # -- dependencies ---------------------------------------------------------------------------
    def resolve_dependencies(self, now: float) -> dict[int, tuple[str, list[tuple[int, str, JobState]]]]:
        """Chains: each waiting job's dependencies, settled once they have ended. A met one
        is dropped; an `--after` one that ended otherwise cancels its job (through the
        job-control core, saying which); what is left still holds its job back. Done in
        the scheduler loop, after the end is stored: a dependency that ends while its
        dependent is being submitted is seen by the next pass, never missed."""
        held: dict[int, tuple[str, list[tuple[int, str, JobState]]]] = {}
        for job_id, (user, deps) in self.store.dependency_waits().items():
            failed = next(
                ((d, st) for d, kind, st in deps if kind == "ok" and st.terminal and st is not JobState.SUCCEEDED), None
            )
            if failed is not None:
                self.control.dependency_failed(job_id, failed[0], failed[1], now)
                continue
            met = [d for d, kind, st in deps if st.terminal]
            if met:
                self.store.drop_deps(job_id, met)
            rest = [x for x in deps if x[0] not in met]
            if rest:
                held[job_id] = (user, rest)
        return held

    # -- one pass -------------------------------------------------------------------------------
    def one_pass(self) -> Decision:
        t0 = time.perf_counter()
        now = time.time()
        arrays = self.store.array_entries()
        if any(e.done for e in arrays):
            ended = {a for a, _ in self.store.settle_arrays(now, arrays)}
            arrays = [e for e in arrays if e.id not in ended]
        chained = self.resolve_dependencies(now)
        self.learn()
        array_ids = {e.id for e in arrays}
        snap = self.snapshot(now, chained, arrays)
        decision = schedule(snap)
        if chained:
            by_id = {e.id: e for e in arrays}
            waits = {j: dependency_wait(d, by_id) for j, (_, d) in chained.items()}
            decision = replace(decision, waiting={**decision.waiting, **waits})
        active = self.store.jobs(states=ACTIVE, with_spec=False) if decision.starts else []
        held, unknown = held_gpus(active), unplaced(active)
        sizes = {n.id: n.gpus for n in snap.nodes} if decision.starts else {}
        for start in decision.starts:
            if start.job_id in array_ids:
                # One of the array's tasks: its row is made now, with the next index.
                task = self.store.add_task(start.job_id, now)
                if task is None:
                    continue  # cancelled while we were deciding
                row = self.store.get(task)
            else:
                row = self.store.get(start.job_id)
            if row.state is not JobState.PENDING:
                continue  # cancelled while we were deciding
            # Rank by rank (one, or one per node of a job over several: the same
            # `placement()` the simulator uses), healthy free GPUs on each node.
            ranks = []
            for node, gpus in placement(start, row.gpus, sizes):
                picked = self.pick_gpus(node, gpus, held, unknown)
                if picked is not None:
                    held.setdefault(node, set()).update(picked)
                elif gpus > 0:
                    unknown.add(node)
                ranks.append((node, gpus, picked))
            if len(ranks) > 1:
                self.control.start_gang(row.id, ranks, now, start.preemptible)
            else:
                self.control.start(row.id, start.node, ranks[0][2], now, start.preemptible)
        for pre in decision.preemptions:
            row = self.store.get(pre.job_id)
            if row.state in ACTIVE and row.stop_outcome is None:
                self.store.note(row.id, f"preemption requested: {pre.reason}", now)
                self.control.request_stop(row, "preempted", pre.reason, self.control.grace(row))
        # Why an array none of whose tasks may start now waits (the policy says why the
        # others do), counting the tasks this pass started.
        begun = Counter(s.job_id for s in decision.starts if s.job_id in array_ids)
        self.array_waits = {
            e.id: array_wait(e._replace(made=e.made + begun[e.id], live=e.live + begun[e.id]))
            for e in arrays
            if e.id not in decision.waiting and e.id not in chained
        }
        self.decision = decision
        self.last_pass = now
        pending = {u: s.pending_jobs for u, s in decision.shares.items()}
        for user, _ in chained.values():
            pending[user] = pending.get(user, 0) + 1  # they count toward the pending cap too
        for e in arrays:
            # An array's tasks not started yet count one each; its entry counted one already.
            counted = e.id in chained or e.startable > 0
            pending[e.user] = pending.get(e.user, 0) + (e.size - e.made) - (1 if counted else 0)
        self.control.admission.seen_pending(pending)
        self.pass_s = time.perf_counter() - t0
        return decision

    def preview(self, caller: Caller, spec_data: dict[str, Any]) -> dict[str, Any]:
        """What would happen if this job were submitted now: the policy's own answer."""
        self.control.admission.check_rate(caller, time.monotonic())
        spec = self.control.admission.accept(caller, spec_data)
        now = time.time()
        unmet = [
            (d, "ok" if d in spec.after else "any", st)
            for d in dict.fromkeys((*spec.after, *spec.after_any))
            if not (st := self.store.get(d).state).terminal
        ]
        if unmet:
            return _preview_answer(dependency_wait(unmet), spec.time)
        snap = self.snapshot(now, self.store.dependency_waits(), want=False)
        probe = PendingJob(
            id=-1,
            user=caller.user,
            gpus=spec.gpus,
            submit_time=now,
            priority=spec.priority,
            time_limit=spec.time,
            cpus=float(spec.cpus),
            memory=int(spec.memory or 0),
            preemptible=spec.preemptible,
        )
        place = self._placer([], want=False)
        only, where = _ANYWHERE if place is None else place(caller.uid, caller.user, spec.needs_dir)
        probe = probe._replace(nodes=only, where=where, expected=self.expected(caller.user, spec.signature))
        if spec.wants:
            probe = narrow([probe], {-1: spec.wants}, self.nodes.all())[0]
        decision = schedule(replace(snap, pending=(*snap.pending, probe)))
        start = next((s for s in decision.starts if s.job_id == -1), None)
        if start is not None:
            names = ", ".join(self.nodes.name_of(n) for n in (start.node, *start.more_nodes))
            return _preview_answer(None, spec.time, node=names, now=now)
        return _preview_answer(decision.waiting.get(-1), spec.time)

    # -- the loop ---------------------------------------------------------------------------------
    def loop(
        self,
        stop: threading.Event,
        connected: Callable[[], bool],
        refresh_nodes: Callable[[], None],
        after: Callable[[], None] = lambda: None,
    ) -> None:
        """The scheduler thread: a pass when woken (any event, any submission) and at
        least every pass_interval_s; the node list every 2 s; nothing while Ray is away."""
        last_nodes = 0.0
        pass_s = 0.0
        while not stop.is_set():
            self.wake.wait(timeout=self.config.pass_interval_s)
            # Under a burst of requests, passes over a long queue would run back to back
            # and starve the API threads of the GIL: while the API is busy, rest twice as
            # long as the last pass took (a third of the time for scheduling), gathering
            # the submissions meanwhile. An idle cluster's pass takes ~1 ms, and with a
            # quiet API a backlog drains at full speed.
            if pass_s > 0.005 and time.monotonic() < self.api_busy_until:
                stop.wait(min(1.0, 2 * pass_s))
            self.wake.clear()
            try:
                if connected() and time.monotonic() - last_nodes > 2.0:
                    refresh_nodes()
                    last_nodes = time.monotonic()
                if connected():
                    t0 = time.monotonic()
                    self.one_pass()
                    pass_s = time.monotonic() - t0
                after()
            except Exception:  # noqa: BLE001 - the loop must survive any one bad pass
                log.exception("scheduling pass failed")
                time.sleep(0.5)


def prediction_report(store: Store, caller: Caller, since_s: float = LEARN_FROM_S) -> dict[str, Any]:
    """How good the predictions were on the runs of the last `since_s` (each predicted
    from those that ended before it), and what is known per kind of job: the
    caller's own, or everyone's for an admin. Built apart from the scheduler's own
    history (this is an API thread)."""
    from dataclasses import asdict

    from scheduler.predict import accuracy

    runs = [
        (u, k, end - start)
        for u, k, start, end in store.finished_runs(time.time() - since_s, limit=200_000)
        if caller.admin or u == caller.user
    ]
    h = RuntimeHistory()
    for u, k, r in runs:
        h.add(u, k, r)
    kinds = []
    for u, k in sorted({(u, k) for u, k, _ in runs}):
        p = h.predict(u, k)
        if p is not None:
            kinds.append(
                {"user": u, "kind": k, "runs": p.runs, "median_s": round(p.seconds, 1),
                 "p90_s": round(p.high, 1), "confident": p.confident}
            )  # fmt: skip
    return {"since_s": since_s, "accuracy": asdict(accuracy(runs)), "kinds": kinds}


def narrow(pending: list[PendingJob], kinds: dict[int, str], nodes: list[NodeRecord]) -> list[PendingJob]:
    """Jobs that want a kind of node (--gpu-type, --constraint) may run only on the
    nodes of that kind: a node restriction, as for a directory (both apply)."""
    view = [(n.id, n.gpu_type, n.labels) for n in nodes if n.alive and n.trusted]
    memo: dict[str, tuple[frozenset[str], str]] = {}
    out = []
    for j in pending:
        w = kinds.get(j.id)
        if w:
            ok, why = memo.get(w) or memo.setdefault(w, matching(w, view))
            if j.nodes is None:
                j = j._replace(nodes=ok, where=why)
            else:
                j = j._replace(nodes=j.nodes & ok, where=f"{j.where}; {why}" if j.where else why)
        out.append(j)
    return out


_ANYWHERE: tuple[frozenset[str] | None, str] = (None, "")
_NO_NEED = (-1, "", "")
_NOWHERE = (
    "no node has its directory (without a code snapshot a job runs in its workdir; a git "
    "snapshot reads its commit from the repository): make it on a node, or submit with a snapshot"
)


class _Place:
    """One pass's answers to "which nodes may run a job that needs these directories"."""

    def __init__(self, dirs: DirBook, alive: frozenset[str], needs: dict[int, tuple[int, str, str]]) -> None:
        self.dirs = dirs
        self.alive = alive
        self.needs = needs  # waiting job id -> (uid, user, directories one per line)
        self.memo: dict[tuple[int, str, str], tuple[frozenset[str] | None, str]] = {}

    def __call__(self, uid: int, user: str, need: str) -> tuple[frozenset[str] | None, str]:
        if not need:
            return _ANYWHERE
        got = self.memo.get((uid, user, need))
        if got is None:
            found = [self.dirs.where((uid, user, d), self.alive) for d in need.split("\n")]
            silent = len(self.dirs.silent & self.alive)
            if any(h is not None and not h for h in found):
                got = (frozenset(), _nowhere(silent))  # one of them is on no node
            elif any(h is None for h in found):
                got = (frozenset(), "looking for its directory on the nodes (a few seconds)")
            else:
                have = frozenset.intersection(*(h for h in found if h is not None))
                got = (have, "its directory is there only") if have else (frozenset(), _nowhere(silent))
            self.memo[(uid, user, need)] = got
        return got


def _nowhere(silent: int) -> str:
    quiet = f"; {silent} node{'s' if silent > 1 else ''} did not answer" if silent else ""
    return _NOWHERE + quiet


def dependency_wait(deps: list[tuple[int, str, JobState]], arrays: Mapping[int, ArrayEntry] | None = None) -> Waiting:
    """Why a chained job waits: the jobs it waits for, and for what of each. An array
    waited for is told by its tasks: its own row stays PENDING while they run, which
    read "job 40 (PENDING)" beside a queue showing it RUNNING."""

    def what(d: int, st: JobState) -> str:
        e = (arrays or {}).get(d)
        if e is None:
            return f"job {d} ({st.value})"
        return f"array {d} ({e.made - e.live} of {e.size} tasks ended)"

    parts = [f"{what(d, st)} to {'succeed' if kind == 'ok' else 'end'}" for d, kind, st in deps[:5]]
    more = f" and {len(deps) - 5} more" if len(deps) > 5 else ""
    return Waiting(
        (
            Reason(
                "dependency",
                f"dependency: waits for {', '.join(parts)}{more}",
                (("after", tuple(d for d, kind, _ in deps if kind == "ok")), ("after_any", tuple(d for d, kind, _ in deps if kind == "any"))),
            ),
        ),
        None,
    )


def array_wait(e: ArrayEntry) -> Waiting:
    """Why none of an array's tasks may start, beyond what the policy would say."""
    if e.made < e.size and e.cap is not None:
        text = f"array: {e.live}/{e.cap} tasks at once (%{e.cap}); the next starts when one ends"
    else:
        text = f"array: all {e.size} tasks have started; {e.live} not ended yet"
    return Waiting((Reason("array", text, (("live", e.live), ("cap", e.cap or 0), ("size", e.size))),), None)


def _preview_answer(
    w: Waiting | None, time_limit: float | None, node: str | None = None, now: float | None = None
) -> dict[str, Any]:
    """`POST /v1/jobs/preview`'s answer: starts now on `node`, or waits for `w`'s reasons.
    `time_limit` None: the daemon's default applies."""
    if node is not None:
        return {"starts_now": True, "node": node, "reasons": [], "why": [], "eta": now, "time_limit": time_limit}
    return {
        "starts_now": False,
        "node": None,
        "reasons": [r.text for r in w.reasons] if w else [],
        "why": [r.as_dict() for r in w.reasons] if w else [],
        "eta": w.eta if w else None,
        "time_limit": time_limit,
    }
