"""The daemon's SQLite state: jobs, their append-only event history, runs, quotas, audit.

Only the daemon opens it for writing. WAL mode lets API threads read while the
scheduler writes; every state change goes through `transition()`, which checks the
state machine and appends an event in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.job import JobSpec, JobState, transition
from scheduler.store_accounts import AccountTables
from scheduler.store_arrays import ArrayTables
from scheduler.store_deps import DependencyTables
from scheduler.store_needs import NeedTables

SCHEMA_VERSION = 15

# Each entry migrates from version i to i+1. Never edit a shipped entry: append one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user TEXT NOT NULL,
        uid INTEGER NOT NULL,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        gpus INTEGER NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        time_limit REAL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        submit_time REAL NOT NULL,
        start_time REAL,
        end_time REAL,
        attempt INTEGER NOT NULL DEFAULT 0,
        node TEXT,
        node_name TEXT,
        gpu_ids TEXT,
        pid INTEGER,
        exit_code INTEGER,
        signal INTEGER,
        stop_deadline REAL,
        stop_outcome TEXT,
        stop_reason TEXT,
        requeued INTEGER NOT NULL DEFAULT 0,
        log_base INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        time REAL NOT NULL,
        old_state TEXT,
        new_state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_job ON events(job_id);
    CREATE TABLE runs (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        attempt INTEGER NOT NULL,
        user TEXT NOT NULL,
        gpus INTEGER NOT NULL,
        node TEXT,
        start_time REAL NOT NULL,
        end_time REAL,
        PRIMARY KEY (job_id, attempt)
    );
    CREATE INDEX runs_end ON runs(end_time);
    """,
    """
    CREATE TABLE quota_overrides (user TEXT PRIMARY KEY, fields TEXT NOT NULL);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
    # What each attempt did with its GPUs, sampled by the node agents (issue 4).
    """
    ALTER TABLE runs ADD COLUMN sampled_s REAL;
    ALTER TABLE runs ADD COLUMN busy_gpu_s REAL;
    ALTER TABLE runs ADD COLUMN idle_gpu_s REAL;
    ALTER TABLE runs ADD COLUMN util_mean REAL;
    ALTER TABLE runs ADD COLUMN mem_peak INTEGER;
    """,
    # A submission's token: the same request sent again (the reply was lost) is one job.
    """
    CREATE TABLE submit_tokens (
        token TEXT NOT NULL,
        user TEXT NOT NULL,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        PRIMARY KEY (user, token)
    );
    """,
    # Tokens for remote clients over TCP (issue 7): only a hash of the secret is kept.
    """
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        hash TEXT NOT NULL,
        created REAL NOT NULL,
        created_by TEXT NOT NULL,
        expires REAL,
        revoked REAL,
        last_used REAL,
        note TEXT NOT NULL DEFAULT ''
    );
    """,
    # Per-user log cap (issue 12): each ended job's log size, and when the cap removed it.
    """
    ALTER TABLE jobs ADD COLUMN log_bytes INTEGER;
    ALTER TABLE jobs ADD COLUMN log_removed REAL;
    CREATE INDEX jobs_user_state ON jobs(user, state);
    """,
    # What the scheduler needs of a spec, as columns: a pass never parses specs.
    """
    ALTER TABLE jobs ADD COLUMN cpus REAL NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN memory INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET cpus = COALESCE(json_extract(spec, '$.cpus'), 0),
                    memory = COALESCE(json_extract(spec, '$.memory'), 0);
    """,
    # Chains (issue 16): what each waiting job still waits for; a row goes when its
    # dependency has ended as asked. kind: 'ok' (must succeed) or 'any' (any end).
    """
    CREATE TABLE job_deps (
        job_id INTEGER NOT NULL,
        dep_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        PRIMARY KEY (job_id, dep_id)
    );
    CREATE INDEX job_deps_dep ON job_deps(dep_id);
    """,
    # Arrays and sweeps (issue 16): an array is one row (array_size > 0) that never runs;
    # its tasks are rows of their own (array_id, array_index), made as they start.
    # array_next: how many of its indices have been handed out, in order.
    # notify_pending: the job has --notify and has not been told of yet (notify.py).
    # jobs_user_logs: the per-user log cap sums only the logs there are (each job's end
    # summed all of its owner's rows: 10,000 tasks of one array made that quadratic).
    """
    ALTER TABLE jobs ADD COLUMN array_id INTEGER;
    ALTER TABLE jobs ADD COLUMN array_index INTEGER;
    ALTER TABLE jobs ADD COLUMN array_size INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN array_cap INTEGER;
    ALTER TABLE jobs ADD COLUMN array_next INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX jobs_task ON jobs(array_id, array_index) WHERE array_id IS NOT NULL;
    CREATE INDEX jobs_array_state ON jobs(array_id, state) WHERE array_id IS NOT NULL;
    CREATE INDEX jobs_arrays ON jobs(state) WHERE array_size > 0;
    ALTER TABLE jobs ADD COLUMN notify_pending INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_notify ON jobs(state) WHERE notify_pending = 1;
    CREATE INDEX jobs_user_logs ON jobs(user, end_time) WHERE log_removed IS NULL AND log_bytes > 0;
    """,
    # Interactive sessions (issue 17): 'batch', 'shell' or 'notebook', for the queue's KIND.
    """
    ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'batch';
    """,
    # No shared filesystem (issue 14): the directory a node must have to run the job
    # (JobSpec.needs_dir), a column so that a pass reads it without the spec. Jobs of
    # before ran their workdir live, or a snapshot whose repository was not recorded.
    """
    ALTER TABLE jobs ADD COLUMN needs_dir TEXT NOT NULL DEFAULT '';
    UPDATE jobs SET needs_dir = COALESCE(json_extract(spec, '$.workdir'), '')
        WHERE json_extract(spec, '$.code') IS NULL;
    """,
    # Learned runtimes (issue 19): what kind of job each is (predict.signature), and
    # the finished runs in the order they ended, which the predictions learn from.
    """
    ALTER TABLE jobs ADD COLUMN sig TEXT NOT NULL DEFAULT '';
    CREATE INDEX jobs_ended ON jobs(end_time) WHERE end_time IS NOT NULL;
    """,
    # Scavengers (issue 19): submitted --preemptible, and whether the current attempt
    # runs as one (it may also be over its owner's budget with the quota's `scavenge`).
    """
    ALTER TABLE jobs ADD COLUMN preemptible INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN scavenging INTEGER NOT NULL DEFAULT 0;
    """,
    # Jobs over several nodes (issue 15): the current attempt's ranks, rank 0 first, as
    # JSON (node, node_name, gpus, gpu_ids; host and pid once started); '' for one node.
    # And what kind of node a job must run on (JobSpec.wants: GPU type and labels), and
    # the attempt whose log was opened (its header and log_base set once, on its first report).
    """
    ALTER TABLE jobs ADD COLUMN ranks TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN wants TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN log_attempt INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET log_attempt = attempt WHERE start_time IS NOT NULL AND state != 'STARTING';
    """,
    # Whom an audit line concerns (a researcher sees those and no other): said when it is
    # written, not guessed from its target's text, where a quota on user `1` matched job
    # 1's owner and a Unix user named `ray` matched every node line. Older lines: their
    # job's owner (a task's `A.I` by its array A), or the user a quota or token change
    # was about, or whoever did it (but not Ray's or a stranger's node lines).
    """
    ALTER TABLE audit ADD COLUMN concerns TEXT NOT NULL DEFAULT '';
    UPDATE audit SET concerns = COALESCE((SELECT user FROM jobs WHERE jobs.id =
        CAST(substr(audit.target, 1, instr(audit.target || '.', '.') - 1) AS INTEGER)), '')
        WHERE action = 'job.cancel';
    UPDATE audit SET concerns = target WHERE action IN ('quota.set', 'token.create', 'token.revoke');
    UPDATE audit SET concerns = actor WHERE concerns = '' AND action NOT LIKE 'node %'
        AND action NOT IN ('job.cancel', 'node.drain', 'node.resume', 'daemon.down');
    CREATE INDEX audit_concerns ON audit(concerns, id);
    """,
]
assert len(MIGRATIONS) == SCHEMA_VERSION


# Every jobs column but the spec, for listings and scheduling passes, which never need
# it (a spec may be up to max_spec_bytes; parsing thousands per pass is what made long
# queues slow).
_COLUMNS_NO_SPEC = (
    "id, user, uid, name, '{}' AS spec, gpus, priority, time_limit, state, reason, submit_time, "
    "start_time, end_time, attempt, node, node_name, gpu_ids, pid, exit_code, signal, stop_deadline, "
    "stop_outcome, stop_reason, requeued, log_base, log_bytes, log_removed, cpus, memory, "
    "array_id, array_index, array_size, array_cap, array_next, notify_pending, kind, needs_dir, sig, "
    "preemptible, scavenging, ranks, wants, log_attempt"
)

_STATES = {s.value: s for s in JobState}

# What a scheduling pass needs of a job, in the order of policy's PendingJob/RunningJob.
POLICY_COLUMNS = (
    "id, user, gpus, submit_time, priority, time_limit, requeued, cpus, memory, node, start_time, stop_deadline, sig, "
    "preemptible, wants"
)

RUN_STATS = ("sampled_s", "busy_gpu_s", "idle_gpu_s", "util_mean", "mem_peak")


@dataclass
class _Submission:
    """One add_job call waiting for its batch's commit."""

    user: str
    uid: int
    spec: JobSpec
    now: float
    token: str | None
    job_id: int = 0
    error: Exception | None = None
    done: bool = False


class StoreError(Exception):
    """The database cannot be used (locked, unwritable, full, newer schema)."""


class UnknownJob(KeyError):
    def __init__(self, job_id: int) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job {self.job_id}"


@dataclass(frozen=True)
class JobRow:
    id: int
    user: str
    uid: int
    name: str
    spec: dict[str, Any]
    gpus: int
    priority: int
    time_limit: float | None
    state: JobState
    reason: str
    submit_time: float
    start_time: float | None
    end_time: float | None
    attempt: int
    node: str | None
    node_name: str | None
    gpu_ids: str | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    stop_deadline: float | None
    stop_outcome: str | None
    stop_reason: str | None
    requeued: bool
    log_base: int
    log_bytes: int | None = None
    log_removed: float | None = None
    cpus: float = 0.0
    memory: int = 0
    array_id: int | None = None  # a task: its array's job id
    array_index: int | None = None  # a task: its index (42.7 is index 7 of array 42)
    array_size: int = 0  # an array: how many tasks it has (0: not an array)
    array_cap: int | None = None  # an array: at most this many tasks at once
    array_next: int = 0  # an array: how many of its indices were handed out
    notify_pending: int = 0  # 1: --notify, not sent yet
    kind: str = "batch"  # or an interactive session: "shell", "notebook"
    needs_dir: str = ""  # directories the node must have, one per line (JobSpec.needs_dir)
    sig: str = ""  # what kind of job it is, for learned runtimes (JobSpec.signature)
    preemptible: int = 0  # 1: submitted --preemptible
    scavenging: int = 0  # 1: the current (or last) attempt runs as a scavenger
    ranks: str = ""  # a job over several nodes: its ranks as JSON (see rank_list)
    wants: str = ""  # the kind of node it must run on: TYPE|LABEL,... (JobSpec.wants)
    log_attempt: int = 0  # the attempt whose log is open (LogBook.open_attempt done, log_base set)

    def rank_list(self) -> list[dict[str, Any]]:
        """The current attempt's ranks (rank 0 first), each {node, node_name, gpus,
        gpu_ids[, host, pid]}; [] for a job on one node."""
        return json.loads(self.ranks) if self.ranks else []

    def placements(self) -> list[tuple[str, int, str]]:
        """(node, GPUs, GPU indices) per rank of the current attempt: one, or a gang's each."""
        ranks = self.rank_list()
        if ranks:
            return [(str(r["node"]), int(r["gpus"]), str(r.get("gpu_ids") or "")) for r in ranks]
        return [(self.node or "", self.gpus, self.gpu_ids or "")]

    @property
    def more_nodes(self) -> tuple[str, ...]:
        """The nodes of ranks 1.. (a job over several nodes), as the policy's RunningJob has them."""
        return tuple(r["node"] for r in self.rank_list()[1:])

    def job_spec(self) -> JobSpec:
        """The spec as the typed JobSpec (rows carry it as stored JSON)."""
        return JobSpec.model_validate(self.spec)

    @property
    def ref(self) -> str:
        """How people name it: `42` or, for a task, `42.7`."""
        return str(self.id) if self.array_id is None else f"{self.array_id}.{self.array_index}"

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> JobRow:
        # Positional: the jobs table's columns are this class's fields, in order (the
        # store checks that once when it opens); a listing builds thousands of these.
        v = list(r)
        v[4] = {} if v[4] == "{}" else json.loads(v[4])
        v[8] = _STATES[v[8]]
        v[23] = bool(v[23])
        return cls(*v)


class Store(AccountTables, DependencyTables, ArrayTables, NeedTables):
    """Jobs, their events and runs; the admin tables come from AccountTables."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self._synchronous = synchronous
        self._write_lock = threading.RLock()
        self._queue_lock = threading.Lock()
        self._queued: list[_Submission] = []
        self._local = threading.local()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._w = self._connect()
            self._migrate()
            self._check_columns()
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open the database {path}: {e}") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def close(self) -> None:
        self._w.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            try:
                self._w.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"database {self.path} is not writable: {e}") from None
            try:
                yield self._w
            except sqlite3.Error as e:
                # SQLite may have rolled back already (a full disk does): only if still open.
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise StoreError(self._save_error(e)) from None
            except BaseException:
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise
            try:
                self._w.execute("COMMIT")
            except sqlite3.Error as e:
                if self._w.in_transaction:
                    self._w.execute("ROLLBACK")
                raise StoreError(self._save_error(e)) from None

    def _save_error(self, e: sqlite3.Error) -> str:
        msg = f"could not save to {self.path}: {e}"
        if "disk" in str(e):
            # SQLite says "disk I/O error" for a file-size limit or a failing disk alike.
            import shutil

            try:
                free = shutil.disk_usage(self.path.parent).free
                msg += f" ({free / 2**20:.0f} MiB free there)"
            except OSError:
                pass
        return msg

    def _migrate(self) -> None:
        with self._tx() as c:
            has_meta = c.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            version = 0
            if has_meta:
                row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this labq "
                    f"({SCHEMA_VERSION}): upgrade labq"
                )
            for i in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
            c.execute(
                "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def _check_columns(self) -> None:
        cols = [r[1] for r in self._w.execute("PRAGMA table_info(jobs)")]
        fields = list(JobRow.__dataclass_fields__)
        if cols != fields:
            raise StoreError(f"{self.path}: the jobs table's columns {cols} do not match this labq's {fields}")

    def integrity(self) -> str:
        """SQLite's own verdict on the file ('ok' when sound)."""
        row = self._reader().execute("PRAGMA quick_check").fetchone()
        return str(row[0])

    def schema_version(self) -> int:
        row = self._reader().execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0])

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    # -- jobs ---------------------------------------------------------------------------------
    def add_job(
        self, user: str, uid: int, spec: JobSpec, now: float | None = None, token: str | None = None
    ) -> int:
        """Queue a job; with `token`, a repeat of the same user's submission returns the first job.

        Group commit: submissions that arrive while another is being written wait for
        the write lock, and whoever takes it next writes all of them in one transaction
        (one fsync). Under a burst from many clients that is what keeps each one's
        wait short; alone, a submission is its own batch.
        """
        req = _Submission(user, uid, spec, time.time() if now is None else now, token)
        with self._queue_lock:
            self._queued.append(req)
        with self._write_lock:
            if not req.done:
                with self._queue_lock:
                    batch, self._queued = self._queued, []
                try:
                    with self._tx() as c:
                        for r in batch:
                            r.job_id = self._insert_job(c, r)
                except StoreError as e:
                    for r in batch:
                        r.error = e
                for r in batch:
                    r.done = True
        if req.error is not None:
            raise StoreError(str(req.error))
        return req.job_id

    @staticmethod
    def _insert_job(c: sqlite3.Connection, r: _Submission) -> int:
        if r.token is not None:
            row = c.execute(
                "SELECT job_id FROM submit_tokens WHERE user=? AND token=?", (r.user, r.token)
            ).fetchone()
            if row is not None:
                return int(row[0])
        spec = r.spec
        size, cap = 0, None
        if spec.is_array:
            indices, cap = spec.array_plan()
            size = len(indices)
        cur = c.execute(
            "INSERT INTO jobs(user, uid, name, spec, gpus, priority, time_limit, state, "
            "submit_time, cpus, memory, array_size, array_cap, notify_pending, kind, needs_dir, sig, preemptible, "
            "wants) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.user,
                r.uid,
                spec.name,
                spec.model_dump_json(),
                spec.gpus,
                spec.priority,
                spec.time,
                JobState.PENDING.value,
                r.now,
                float(spec.cpus),
                int(spec.memory or 0),
                size,
                cap,
                1 if spec.notify else 0,
                spec.session or "batch",
                spec.needs_dir,
                spec.signature,
                int(spec.preemptible),
                spec.wants,
            ),
        )
        job_id = int(cur.lastrowid or 0)
        c.execute(
            "INSERT INTO events(job_id, time, old_state, new_state, reason) VALUES (?,?,?,?,?)",
            (job_id, r.now, None, JobState.PENDING.value, f"submitted by {r.user}"),
        )
        DependencyTables.insert_deps(c, job_id, spec.after, spec.after_any)
        if r.token is not None:
            c.execute(
                "INSERT INTO submit_tokens(token, user, job_id) VALUES (?,?,?)", (r.token, r.user, job_id)
            )
        return job_id

    def get(self, job_id: int) -> JobRow:
        row = self._reader().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(job_id)
        return JobRow.from_row(row)

    def jobs(
        self,
        states: tuple[JobState, ...] | None = None,
        user: str | None = None,
        limit: int | None = None,
        after: int | None = None,
        with_spec: bool = True,
        tasks: bool = True,
    ) -> list[JobRow]:
        """Jobs in id order. `limit` alone: the newest `limit`; with `after`: the first
        `limit` whose id is above it (a page). `with_spec=False` skips the specs, which
        a listing never shows and which can be large. `tasks=False` leaves out arrays'
        tasks (a listing shows each array as one row)."""
        cols = "*" if with_spec else _COLUMNS_NO_SPEC
        sql = f"SELECT {cols} FROM jobs"
        where: list[str] = []
        args: list[Any] = []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(s.value for s in states)
        if user:
            where.append("user=?")
            args.append(user)
        if not tasks:
            where.append("array_id IS NULL")
        if after is not None:
            where.append("id>?")
            args.append(int(after))
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit and after is not None:
            sql += f" ORDER BY id LIMIT {int(limit)}"
        elif limit:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(limit)}) ORDER BY id"
        else:
            sql += " ORDER BY id"
        return [JobRow.from_row(r) for r in self._reader().execute(sql, args)]

    def policy_rows(self, states: tuple[JobState, ...]) -> list[tuple[Any, ...]]:
        """Plain tuples (POLICY_COLUMNS) for a scheduling pass: no rows, no specs; a
        pass over 10,000 waiting jobs reads them in a few milliseconds."""
        rows = self._reader().execute(
            # An array's own row never runs: its tasks reach the policy as one entry
            # with a count (store_arrays.array_entries).
            f"SELECT {POLICY_COLUMNS} FROM jobs WHERE state IN ({','.join('?' * len(states))}) "
            "AND array_size = 0 ORDER BY id",
            [s.value for s in states],
        )
        return [tuple(r) for r in rows]

    def finished_runs(self, after: float, limit: int = 5000) -> list[tuple[str, str, float, float]]:
        """(user, kind, start, end) of jobs that SUCCEEDED, ended after `after`, in the
        order they ended: what learned runtimes learn from (a failed run says little of
        how long a good one takes)."""
        rows = self._reader().execute(
            "SELECT user, sig, start_time, end_time FROM jobs WHERE end_time > ? AND state = ? "
            "AND sig != '' AND start_time IS NOT NULL ORDER BY end_time LIMIT ?",
            (after, JobState.SUCCEEDED.value, limit),
        )
        return [(str(u), str(k), float(a), float(b)) for u, k, a, b in rows]

    def count_jobs(self, user: str, states: tuple[JobState, ...]) -> int:
        row = self._reader().execute(
            f"SELECT COUNT(*) FROM jobs WHERE user=? AND state IN ({','.join('?' * len(states))})",
            (user, *(s.value for s in states)),
        ).fetchone()
        return int(row[0])

    def events(self, job_id: int) -> list[dict[str, Any]]:
        rows = self._reader().execute(
            "SELECT time, old_state, new_state, reason FROM events WHERE job_id=? ORDER BY id",
            (job_id,),
        )
        return [dict(r) for r in rows]

    def transition(
        self,
        job_id: int,
        new: JobState,
        reason: str = "",
        now: float | None = None,
        expect: tuple[JobState, ...] | None = None,
        run_stats: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> JobRow:
        """Move a job to `new`, checked against the state machine, with an event.

        `expect`: only act if the job is currently in one of these states; else
        return the row unchanged (used where a race with another event is normal).
        `run_stats`: the GPU accounting of the attempt that ends here, saved with it.
        """
        now = time.time() if now is None else now
        with self._tx() as c:
            row = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJob(job_id)
            old = JobState(row["state"])
            if expect is not None and old not in expect:
                return JobRow.from_row(row)
            transition(job_id, old, new, reason)
            fields = dict(fields)
            fields["state"] = new.value
            fields["reason"] = reason
            self._record_run(c, row, old, new, now, fields, run_stats)
            sets = ", ".join(f"{k}=?" for k in fields)
            c.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job_id))
            c.execute(
                "INSERT INTO events(job_id, time, old_state, new_state, reason) VALUES (?,?,?,?,?)",
                (job_id, now, old.value, new.value, reason),
            )
            out = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return JobRow.from_row(out)

    @staticmethod
    def _record_run(
        c: sqlite3.Connection,
        row: sqlite3.Row,
        old: JobState,
        new: JobState,
        now: float,
        fields: dict[str, Any],
        run_stats: Mapping[str, Any] | None = None,
    ) -> None:
        """Keep `runs` (the usage ledger) in step: one row per attempt that held GPUs."""
        if new is JobState.STARTING:
            attempt = fields.get("attempt", row["attempt"])
            c.execute(
                "INSERT OR REPLACE INTO runs(job_id, attempt, user, gpus, node, start_time) "
                "VALUES (?,?,?,?,?,?)",
                (row["id"], attempt, row["user"], row["gpus"], fields.get("node"), now),
            )
        elif new is JobState.RUNNING and fields.get("start_time") is not None:
            c.execute(
                "UPDATE runs SET start_time=? WHERE job_id=? AND attempt=?",
                (fields["start_time"], row["id"], row["attempt"]),
            )
        elif old.active and not new.active:
            end = fields.get("end_time") or now
            if new is JobState.PENDING:
                # The launch never reached Ray: nothing was used.
                c.execute("DELETE FROM runs WHERE job_id=? AND attempt=?", (row["id"], row["attempt"]))
            else:
                c.execute(
                    "UPDATE runs SET end_time=? WHERE job_id=? AND attempt=? AND end_time IS NULL",
                    (end, row["id"], row["attempt"]),
                )
                if run_stats:
                    st = {k: run_stats.get(k) for k in RUN_STATS}
                    c.execute(
                        f"UPDATE runs SET {', '.join(f'{k}=?' for k in st)} WHERE job_id=? AND attempt=?",
                        (*st.values(), row["id"], row["attempt"]),
                    )

    def note(self, job_id: int, text: str, now: float | None = None) -> None:
        """Append a history line that is not a state change (e.g. a stop request)."""
        now = time.time() if now is None else now
        with self._tx() as c:
            row = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJob(job_id)
            c.execute(
                "INSERT INTO events(job_id, time, old_state, new_state, reason) VALUES (?,?,?,?,?)",
                (job_id, now, row[0], row[0], text),
            )

    def set_fields(self, job_id: int, **fields: Any) -> None:
        """Update non-state fields (pid, gpu ids, stop request). Never the state."""
        assert "state" not in fields
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as c:
            c.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job_id))

    def count_by_state(self) -> dict[str, int]:
        rows = self._reader().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {str(r[0]): int(r[1]) for r in rows}
