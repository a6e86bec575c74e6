"""The store's workflow tables (issue 16): what each waiting job still waits for (chains),
and which ended jobs still owe their owner a notification (`--notify`).

A mixin of `Store` (store.py), which provides the connection and the transaction;
rows are written with the job itself (`Store._insert_job`) and read and dropped by
the scheduler loop (`Scheduler.resolve_dependencies`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from scheduler.shapes import JobState
from scheduler.store_base import Tables

# A job that lost its node is requeued by the same thread right after (when it has
# retries left); a reader between the two writes sees NODE_LOST for a moment.
NODE_LOST_SETTLE_S = 5.0


class DependencyTables(Tables):
    @staticmethod
    def insert_deps(c: sqlite3.Connection, job_id: int, after: list[int], after_any: list[int]) -> None:
        """In the transaction that inserts the job. An id in both lists must succeed."""
        deps = {d: "any" for d in after_any} | {d: "ok" for d in after}
        if deps:
            c.executemany(
                "INSERT INTO job_deps(job_id, dep_id, kind) VALUES (?,?,?)", [(job_id, d, k) for d, k in deps.items()]
            )

    def dependency_waits(self) -> dict[int, tuple[str, list[tuple[int, str, JobState]]]]:
        """Every waiting job that still waits for others: its owner, and (dependency,
        kind, the dependency's state) for each. A dependency that is NODE_LOST for under
        NODE_LOST_SETTLE_S may be on its way back to the queue (a retry): reported RUNNING."""
        rows = self._reader().execute(
            "SELECT d.job_id, w.user, d.dep_id, d.kind, j.state, j.end_time FROM job_deps d "
            "JOIN jobs w ON w.id = d.job_id JOIN jobs j ON j.id = d.dep_id "
            "WHERE w.state = ? ORDER BY d.job_id, d.dep_id",
            (JobState.PENDING.value,),
        )
        out: dict[int, tuple[str, list[tuple[int, str, JobState]]]] = {}
        now = time.time()
        for job_id, user, dep_id, kind, state, end_time in rows:
            st = JobState(state)
            if st is JobState.NODE_LOST and now - (end_time or now) < NODE_LOST_SETTLE_S:
                st = JobState.RUNNING
            out.setdefault(int(job_id), (str(user), []))[1].append((int(dep_id), str(kind), st))
        return out

    def drop_deps(self, job_id: int, dep_ids: list[int] | None = None) -> None:
        """Dependencies met (or all of them, None: the job will not wait any more)."""
        with self._tx() as c:
            if dep_ids is None:
                c.execute("DELETE FROM job_deps WHERE job_id=?", (job_id,))
            else:
                c.executemany("DELETE FROM job_deps WHERE job_id=? AND dep_id=?", [(job_id, d) for d in dep_ids])

    # -- notifications ----------------------------------------------------------------------------
    def notify_due(self) -> list[dict[str, Any]]:
        """Ended jobs with --notify not sent yet (a NODE_LOST one once it has settled)."""
        final = [s.value for s in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.LOST)]
        rows = self._reader().execute(
            "SELECT id, user, uid, name, spec, state, reason, exit_code, start_time, end_time, node_name, "
            "array_id, array_index, array_size FROM jobs WHERE notify_pending = 1 AND "
            f"(state IN ({','.join('?' * len(final))}) OR (state = ? AND end_time < ?)) ORDER BY id LIMIT 100",
            (*final, JobState.NODE_LOST.value, time.time() - NODE_LOST_SETTLE_S),
        )
        out = []
        for r in rows:
            d = dict(r)
            d["notify"] = json.loads(d.pop("spec")).get("notify") or {}
            d["ref"] = str(d["id"]) if d["array_id"] is None else f"{d['array_id']}.{d['array_index']}"
            out.append(d)
        return out

    def notified(self, job_id: int, outcome: str, now: float) -> None:
        """Sent (or given up on): said in the job's history, never sent again."""
        with self._tx() as c:
            row = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            c.execute("UPDATE jobs SET notify_pending = 0 WHERE id=?", (job_id,))
            # No state change: the event carries the state it was told of, and what happened.
            c.execute(
                "INSERT INTO events(job_id, time, old_state, new_state, reason) VALUES (?,?,?,?,?)",
                (job_id, now, None, row[0], outcome),
            )
