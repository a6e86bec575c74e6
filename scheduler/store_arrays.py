"""The store's arrays and sweeps (issue 16): one row per array, a row per task once it starts.

A mixin of `Store` (store.py). An array's own row (array_size > 0) stays PENDING while
any of its tasks may still run and never reaches the policy as itself: the scheduler
loop offers it as one entry with a count (`array_entries`), so 10,000 waiting tasks cost
a pass what one job costs and a listing shows one row. When the policy starts one, the
loop asks `add_task` for the next index's row, which from then on is an ordinary job
(start, requeue, cancel, logs) that knows its array. `settle_arrays` ends the array's
row once every task has ended: SUCCEEDED if all did, FAILED if any failed, else
CANCELLED; that is the state `--after 42` and `labq wait 42` see.
"""

from __future__ import annotations

import json
import sqlite3
from typing import NamedTuple

from scheduler.job import JobSpec
from scheduler.shapes import JobState
from scheduler.store_base import Tables

# States in which a task still holds a place under the array's %N cap.
LIVE = (JobState.PENDING, JobState.STARTING, JobState.RUNNING, JobState.PREEMPTED, JobState.NODE_LOST)
_LIVE_SQL = ",".join(f"'{s.value}'" for s in LIVE)
_FAILED = {JobState.FAILED, JobState.TIMEOUT, JobState.LOST, JobState.NODE_LOST}


class ArrayEntry(NamedTuple):
    """A waiting array as a scheduling pass sees it."""

    id: int
    user: str
    gpus: int
    submit_time: float
    priority: int
    time_limit: float | None
    cpus: float
    memory: int
    size: int
    cap: int | None
    made: int  # tasks with a row (started once, or cancelled before they started)
    live: int  # of those, not ended
    uid: int = -1
    needs_dir: str = ""  # directories its node must have (JobSpec.needs_dir)
    sig: str = ""  # what kind of job its tasks are (JobSpec.signature)
    preemptible: int = 0  # 1: its tasks were submitted --preemptible
    wants: str = ""  # the kind of node its tasks must run on (JobSpec.wants)

    @property
    def done(self) -> bool:
        """Every task has started (or was cancelled first) and none is still live."""
        return self.made >= self.size and not self.live

    @property
    def startable(self) -> int:
        """How many more tasks may start now: those never started, under the cap."""
        left = self.size - self.made
        return left if self.cap is None else max(0, min(left, self.cap - self.live))


class ArrayTables(Tables):
    def array_entries(self) -> list[ArrayEntry]:
        rows = self._reader().execute(
            "SELECT p.id, p.user, p.gpus, p.submit_time, p.priority, p.time_limit, p.cpus, p.memory, "
            "p.array_size, p.array_cap, "
            "(SELECT COUNT(*) FROM jobs t WHERE t.array_id = p.id), "
            f"(SELECT COUNT(*) FROM jobs t WHERE t.array_id = p.id AND t.state IN ({_LIVE_SQL})), "
            "p.uid, p.needs_dir, p.sig, p.preemptible, p.wants "
            "FROM jobs p WHERE p.array_size > 0 AND p.state = ? ORDER BY p.id",
            (JobState.PENDING.value,),
        )
        return [ArrayEntry(*r) for r in rows]

    def add_task(self, array_id: int, now: float) -> int | None:
        """The row of the array's next task, PENDING, ready to start; None when the array
        has ended or has no task left to hand out."""
        with self._tx() as c:
            row = c.execute(
                "SELECT spec, user, uid, state, array_size, array_next FROM jobs WHERE id=?", (array_id,)
            ).fetchone()
            if row is None or row["state"] != JobState.PENDING.value or not row["array_size"]:
                return None
            # Parsed per task (tens of microseconds): its indices are ranges, no list.
            spec = JobSpec.model_validate_json(row["spec"])
            indices = spec.array_plan()[0]
            pos = int(row["array_next"])
            index = None
            while pos < len(indices):
                candidate = indices[pos]
                pos += 1
                taken = c.execute(
                    "SELECT 1 FROM jobs WHERE array_id=? AND array_index=?", (array_id, candidate)
                ).fetchone()
                if taken is None:  # else cancelled before it started
                    index = candidate
                    break
            c.execute("UPDATE jobs SET array_next=?, start_time=COALESCE(start_time, ?) WHERE id=?", (pos, now, array_id))
            if index is None:
                return None
            return self._insert_task(c, array_id, row["user"], row["uid"], spec, index, JobState.PENDING, now)

    @staticmethod
    def _insert_task(
        c: sqlite3.Connection, array_id: int, user: str, uid: int, spec: JobSpec, index: int, state: JobState, now: float
    ) -> int:
        data = spec.task_spec(array_id, index)
        cur = c.execute(
            "INSERT INTO jobs(user, uid, name, spec, gpus, priority, time_limit, state, submit_time, "
            "cpus, memory, array_id, array_index, end_time, needs_dir, sig, preemptible, wants) VALUES "
            "(?,?,?,?,?,?,?,?,(SELECT submit_time FROM jobs WHERE id=?),?,?,?,?,?,?,?,?,?)",
            (
                user,
                uid,
                spec.name,
                json.dumps(data),
                spec.gpus,
                spec.priority,
                spec.time,
                state.value,
                array_id,
                float(spec.cpus),
                int(spec.memory or 0),
                array_id,
                index,
                now if state.terminal else None,
                spec.needs_dir,
                spec.signature,
                int(spec.preemptible),
                spec.wants,
            ),
        )
        task_id = int(cur.lastrowid or 0)
        c.execute(
            "INSERT INTO events(job_id, time, old_state, new_state, reason) VALUES (?,?,?,?,?)",
            (task_id, now, None, state.value, f"task {array_id}.{index} of array {array_id}"),
        )
        return task_id

    def unstarted_tasks(self, user: str) -> int:
        """Tasks of the user's waiting arrays that have no row yet, less one per array
        (its own row is counted as a waiting job already)."""
        row = self._reader().execute(
            "SELECT COALESCE(SUM(p.array_size - 1 - (SELECT COUNT(*) FROM jobs t WHERE t.array_id = p.id)), 0) "
            "FROM jobs p WHERE p.array_size > 0 AND p.state = ? AND p.user = ?",
            (JobState.PENDING.value, user),
        ).fetchone()
        return max(0, int(row[0]))

    def task_id(self, array_id: int, index: int) -> int | None:
        row = self._reader().execute(
            "SELECT id FROM jobs WHERE array_id=? AND array_index=?", (array_id, index)
        ).fetchone()
        return None if row is None else int(row[0])

    def cancel_unstarted(self, array_id: int, index: int, reason: str, now: float) -> int | None:
        """A task that has not started yet, cancelled: a CANCELLED row in its place, so it
        never will. None if it has a row meanwhile (cancel that)."""
        with self._tx() as c:
            row = c.execute("SELECT spec, user, uid FROM jobs WHERE id=?", (array_id,)).fetchone()
            if c.execute("SELECT 1 FROM jobs WHERE array_id=? AND array_index=?", (array_id, index)).fetchone():
                return None
            spec = JobSpec.model_validate_json(row["spec"])
            task_id = self._insert_task(c, array_id, row["user"], row["uid"], spec, index, JobState.CANCELLED, now)
            c.execute("UPDATE jobs SET reason=? WHERE id=?", (reason, task_id))
            return task_id

    def live_tasks(self, array_id: int) -> list[int]:
        rows = self._reader().execute(
            f"SELECT id FROM jobs WHERE array_id=? AND state IN ({_LIVE_SQL}) ORDER BY id", (array_id,)
        )
        return [int(r[0]) for r in rows]

    def array_counts(self, ids: list[int]) -> dict[int, dict[str, int]]:
        """Each array's tasks with a row, by state."""
        out: dict[int, dict[str, int]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            rows = self._reader().execute(
                f"SELECT array_id, state, COUNT(*) FROM jobs WHERE array_id IN ({','.join('?' * len(part))}) "
                "GROUP BY array_id, state",
                part,
            )
            for array_id, state, n in rows:
                out.setdefault(int(array_id), {})[str(state)] = int(n)
        return out

    def settle_arrays(self, now: float, entries: list[ArrayEntry]) -> list[tuple[int, JobState]]:
        """End each of these waiting arrays whose tasks have all started and ended. The
        array's row moves straight from PENDING to its end: it never ran itself, so the
        job state machine's start/run steps do not apply (transition() is for jobs that run)."""
        ended: list[tuple[int, JobState]] = []
        for e in entries:
            if not e.done:
                continue
            counts = self.array_counts([e.id]).get(e.id, {})
            states = {JobState(s): n for s, n in counts.items()}
            failed = sum(n for s, n in states.items() if s in _FAILED)
            cancelled = states.get(JobState.CANCELLED, 0)
            if failed:
                state, reason = JobState.FAILED, f"{failed} of {e.size} tasks failed"
            elif cancelled:
                state, reason = JobState.CANCELLED, f"{cancelled} of {e.size} tasks were cancelled"
            else:
                state, reason = JobState.SUCCEEDED, f"all {e.size} tasks succeeded"
            with self._tx() as c:
                cur = c.execute(
                    "UPDATE jobs SET state=?, reason=?, end_time=? WHERE id=? AND state=?",
                    (state.value, reason, now, e.id, JobState.PENDING.value),
                )
                if cur.rowcount:
                    c.execute(
                        "INSERT INTO events(job_id, time, old_state, new_state, reason) VALUES (?,?,?,?,?)",
                        (e.id, now, JobState.PENDING.value, state.value, reason),
                    )
                    ended.append((e.id, state))
        return ended
