"""A running daemon whose disk fills up or whose database someone locks: a clear
one-line refusal, nothing lost, nothing corrupted (PRAGMA integrity_check)."""

from __future__ import annotations

import resource
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Labq, cleanup, make_labq

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lq() -> Iterator[Labq]:
    lq = make_labq("grace_period_s: 1\nmin_runtime_s: 0\n")
    lq.up("--gpus", "1")
    yield lq
    cleanup(lq)


def one_line_refusal(lq: Labq, *args: str) -> str:
    r = lq.run(*args, check=False, cwd="/tmp")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip()


def integrity(lq: Labq) -> str:
    with sqlite3.connect(lq.state_dir / "labq.db") as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def test_a_full_disk_refuses_submissions_and_loses_no_job_end(lq: Labq) -> None:
    before = len(lq.json("queue", "--all"))
    ends_soon = lq.submit("--", "sh", "-c", "sleep 3; echo done", cwd="/tmp")
    lq.wait(ends_soon, ("RUNNING",))
    pid = lq.daemon_pid()
    # The daemon may write no byte past 1 KiB of any file: what a full disk looks like
    # to SQLite (a failed write), without filling this machine's disk. Python ignores
    # SIGXFSZ, so the write fails with EFBIG instead of killing the process.
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1024, hard))  # soft only: it can go back up
    try:
        msg = one_line_refusal(lq, "submit", "--", "true")
        assert msg.startswith("labq: could not save to ") and "disk I/O error" in msg and "free there" in msg
        time.sleep(5)  # the job ends meanwhile; its end cannot be stored yet
        assert lq.job(ends_soon)["state"] == "RUNNING"
        assert len(lq.json("queue", "--all")) == before + 1
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    # Space again: the end the Executor kept is stored, stamped when it happened.
    j = lq.wait(ends_soon, ("SUCCEEDED",), timeout=30)
    assert j["end_time"] - j["start_time"] < 4.5, j
    assert lq.daemon_pid() == pid
    after = lq.submit("--", "true", cwd="/tmp")
    assert lq.wait(after, ("SUCCEEDED",))["state"] == "SUCCEEDED"
    assert len(lq.json("queue", "--all")) == before + 2
    assert integrity(lq) == "ok"


def test_a_locked_database_refuses_submissions_clearly_then_recovers(lq: Labq) -> None:
    before = len(lq.json("queue", "--all"))
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        db = sqlite3.connect(lq.state_dir / "labq.db", isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(60)
        db.execute("ROLLBACK")
        db.close()

    t = threading.Thread(target=hold_lock)
    t.start()
    try:
        assert locked.wait(10)
        msg = one_line_refusal(lq, "submit", "--", "true")
        assert "not writable: database is locked" in msg, msg
        # Reading still works while it is locked (WAL).
        assert len(lq.json("queue", "--all")) == before
    finally:
        release.set()
        t.join()
    job = lq.submit("--", "true", cwd="/tmp")
    assert lq.wait(job, ("SUCCEEDED",))["state"] == "SUCCEEDED"
    assert len(lq.json("queue", "--all")) == before + 1
    assert integrity(lq) == "ok"
