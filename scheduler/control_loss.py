"""The job-control core's side of lost nodes and gangs that never met (a mixin of
JobControl, control.py, which provides the store, the nodes and the launcher): a job
whose node died, one cut off from the head (the node watch), and a gang whose ranks
could not all be reached. Every change still goes through `Store.transition`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from scheduler.config import DaemonConfig
from scheduler.launcher import Launcher, LauncherDown, key_of
from scheduler.launching import nodes_of
from scheduler.nodes import NodeBook
from scheduler.shapes import ACTIVE, JobState
from scheduler.store import JobRow, Store

log = logging.getLogger("labq.jobs")

# Ray's error for a task pinned (hard node affinity) to a node that is dead.
UNPLACEABLE = "TaskUnschedulableError"
# A gang whose ranks never all met (requeued; after UNPLACED_LIMIT times, LOST).
_UNMET = "its nodes could not all be reached"
UNPLACED_LIMIT = 3
# Why the node watch ends a gang unplaced: one of its nodes left. That is the node's
# doing, not a sign the gang cannot be placed, so it does not count toward the limit.
NODE_LEFT = "a node it was placed on left before its ranks met"


def _node_left(reason: str) -> bool:
    return NODE_LEFT in reason or "NodeDied" in reason


class NodeLoss:
    # Provided by JobControl.
    store: Store
    config: DaemonConfig
    nodes: NodeBook
    _refresh_nodes: Callable[[], None]
    _connected: Callable[[], bool]
    _finish_stats: Callable[[int], Mapping[str, Any] | None]

    @property
    def launcher(self) -> Launcher | None: ...

    def requeue(self, job: JobRow, ended: JobState, reason: str) -> None: ...

    def _attempt_ended(self, job: JobRow, now: float) -> None: ...

    def unplaced(self, job: JobRow, why: str, now: float) -> None:
        """A gang that never met: requeued without spending a node-loss retry, unless it
        was cancelled meanwhile, or this keeps happening (its nodes cannot hold it as Ray
        counts them: it would be placed the same way again and again). A node that
        left (NODE_LEFT, or Ray's NodeDied) is churn, and does not count as a miss."""
        if job.stop_outcome == "cancelled":
            self.store.transition(job.id, JobState.CANCELLED, job.stop_reason or "cancelled", expect=ACTIVE, end_time=now)
            return
        before = sum(1 for e in self.store.events(job.id) if e["reason"].startswith(_UNMET) and not _node_left(e["reason"]))
        if not _node_left(why) and before >= UNPLACED_LIMIT - 1:
            self.store.transition(
                job.id, JobState.LOST, f"{_UNMET} {UNPLACED_LIMIT} times, last: {why}", expect=ACTIVE, end_time=now
            )
            return
        self.requeue(job, JobState.STARTING, f"{_UNMET} ({why})")

    def _node_gone(self, job: JobRow, reason: str, lost_node: str | None = None) -> bool:
        """Did this job end because its node died (rather than Ray losing track of it)?
        (The executor reports Ray's error by its type name only: see executor.py.)
        `lost_node`: for a job over several nodes, the lost rank's node."""
        node = lost_node or job.node
        if node and ("NodeDied" in reason or UNPLACEABLE in reason):
            self.nodes.mark_dead(node)
            return True
        self._refresh_nodes()
        return bool(node) and self._connected() and any(n not in self.nodes for n in nodes_of(job))

    def node_lost(
        self,
        job: JobRow,
        detail: str,
        stats: Mapping[str, Any] | None,
        fields: dict[str, Any],
        node: str | None = None,
        runner_only: bool = False,
    ) -> bool:
        """The job's node (`node`: which of a gang's) is gone: NODE_LOST (at `end_time`,
        when it happened), then requeued per node_lost_retries. False if the job had
        already moved on."""
        now = float(fields["end_time"])
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        name = job.node_name or job.node
        if node and node != job.node:  # a gang's other rank: its node's name as placed
            name = next((r.get("node_name") for r in job.rank_list() if r.get("node") == node), None) or node
        reason = f"node {name} was lost at {when}"
        if runner_only:  # the node still reports for its other jobs: only this runner went quiet
            reason = f"its runner on node {name} stopped reporting at {when} (the node's other jobs still report)"
        if job.stop_outcome == "cancelled":
            reason += " (cancelled: the node is unreachable, the job is presumed dead)"
        # Dated when it happened (the last word from the node), not when it was noticed.
        row = self.store.transition(
            job.id, JobState.NODE_LOST, reason, expect=ACTIVE, run_stats=stats, now=min(now, time.time()), **fields
        )
        if row.state is not JobState.NODE_LOST:
            return False
        lost_before = sum(1 for e in self.store.events(job.id) if e["new_state"] == JobState.NODE_LOST.value)
        retries = self.config.node_lost_retries
        # A job someone asked to cancel stays ended; anything else may run again.
        if lost_before <= retries and job.stop_outcome != "cancelled":
            self.requeue(job, JobState.NODE_LOST, f"requeued after its node was lost (retry {lost_before} of {retries})")
        log.warning("job %d: %s (%s)", job.id, reason, detail)
        return True

    def check_silent(self, known: Mapping[str, Mapping[str, Any]], timeout: float, now: float | None = None) -> list[int]:
        """The node watch (every couple of seconds): a running job whose node Ray no
        longer lists, or whose runner has not been heard from for `timeout` (a node cut
        off from the head), is NODE_LOST now, at the time it was last heard from,
        instead of when Ray's own timeouts give up on the task. Its node takes no new
        jobs; its runner stops the job by itself once it finds the head unreachable
        (Launch.head_timeout). Returns the jobs it ended."""
        now = time.time() if now is None else now
        ended: list[int] = []
        connected = self._connected()
        # One read of the store per watch: running jobs here, starting ones for the gangs.
        watched = self.store.jobs(states=(JobState.RUNNING, JobState.STARTING))
        # When each node's runners last spoke, any of them: one job's silent runner on a
        # node whose other jobs still report is that job's trouble, not the node's (a
        # researcher's stuck session must not cost the others their jobs on that node).
        heard: dict[str, float] = {}
        for entry in known.values():
            if entry.get("seen") and not entry.get("finished") and "lagging" not in entry and entry.get("node"):
                node = str(entry["node"])
                heard[node] = max(heard.get(node, 0.0), float(entry["seen"]))
        for job in watched:
            if job.state is not JobState.RUNNING:
                continue
            seen = known.get(key_of(job.id, job.attempt))
            if seen is None or seen.get("finished") or not seen.get("seen"):
                continue
            last = float(seen["seen"])
            gone = bool(job.node) and connected and any(n not in self.nodes for n in nodes_of(job))
            silent = now - last > timeout
            if not (gone or silent):
                continue
            where = str(seen.get("lagging") or job.node)
            node_speaks = not gone and now - heard.get(where, 0.0) <= timeout
            if silent and job.node and not node_speaks:
                # A job over several nodes: the node of its rank heard from least recently.
                self.nodes.mark_dead(where)
            if gone:
                why = "Ray lists its node no longer"
            elif node_speaks:
                why = f"no word from its runner for {now - last:.0f}s while its node's other jobs report"
            else:
                why = f"no word from its node for {now - last:.0f}s"
            stats = self._finish_stats(job.id)
            if self.node_lost(job, why, stats, {"end_time": last}, where, runner_only=node_speaks):
                self._attempt_ended(job, last)
                ended.append(job.id)
                launcher = self.launcher
                if launcher is not None:
                    try:  # reaches the node if it comes back before it stops by itself
                        launcher.stop(job.id, job.attempt, "lost", "its node was lost", 0.0)
                    except LauncherDown:
                        pass
        if connected and self.launcher is not None:
            self._unplace_gangs_on_lost_nodes(self.launcher, [j for j in watched if j.state is JobState.STARTING])
        return ended

    def _unplace_gangs_on_lost_nodes(self, launcher: Launcher, starting: list[JobRow]) -> None:
        """A job over several nodes still starting on a node Ray no longer lists: if its
        ranks have not all met, they never will; it goes back to the queue now as a gang
        that could not be placed, rather than after GANG_MEET_S (60 s; a rebooted
        machine's Ray node that drained away once held one for all of that). One that
        met meanwhile is left to the lost-node path, which names the node."""
        for job in starting:
            where = nodes_of(job)
            if len(where) < 2 or all(n in self.nodes for n in where):
                continue
            try:  # again every watch until it ends (a launch may not have reached it yet)
                launcher.unplace(job.id, job.attempt, NODE_LEFT)
            except LauncherDown:
                return
