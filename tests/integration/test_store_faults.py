"""A running daemon whose disk fills up or whose database someone locks: a clear
one-line refusal, nothing lost, nothing corrupted (PRAGMA integrity_check)."""

from __future__ import annotations

import resource
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Labq, wait_for

pytestmark = pytest.mark.integration


def one_line_refusal(labq4: Labq, *args: str) -> str:
    r = labq4.run(*args, check=False, cwd="/tmp")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip()


def integrity(labq4: Labq) -> str:
    with sqlite3.connect(labq4.state_dir / "labq.db") as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def test_a_full_disk_refuses_submissions_and_loses_no_job_end(labq4: Labq) -> None:
    before = len(labq4.json("queue", "--all"))
    ends_soon = labq4.submit("--", "sh", "-c", "sleep 3; echo done", cwd="/tmp")
    labq4.wait(ends_soon, ("RUNNING",))
    pid = labq4.daemon_pid()
    # The daemon may write no byte past 1 KiB of any file: what a full disk looks like
    # to SQLite (a failed write), without filling this machine's disk. Python ignores
    # SIGXFSZ, so the write fails with EFBIG instead of killing the process.
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (1024, hard))  # soft only: it can go back up
    try:
        msg = one_line_refusal(labq4, "submit", "--", "true")
        assert msg.startswith("labq: could not save to ") and "disk I/O error" in msg and "free there" in msg
        # The job ends meanwhile; its end cannot be stored yet.
        job_pid = labq4.job(ends_soon)["pid"]
        wait_for("the job's process to end", lambda: not Path(f"/proc/{job_pid}").exists(), 20)
        time.sleep(1)  # its end reaches the daemon, which cannot store it
        assert labq4.job(ends_soon)["state"] == "RUNNING"
        assert len(labq4.json("queue", "--all")) == before + 1
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    # Space again: the end the Executor kept is stored, stamped when it happened.
    j = labq4.wait(ends_soon, ("SUCCEEDED",), timeout=30)
    assert j["end_time"] - j["start_time"] < 4.5, j
    assert labq4.daemon_pid() == pid
    after = labq4.submit("--", "true", cwd="/tmp")
    assert labq4.wait(after, ("SUCCEEDED",))["state"] == "SUCCEEDED"
    assert len(labq4.json("queue", "--all")) == before + 2
    assert integrity(labq4) == "ok"


def test_a_locked_database_refuses_submissions_clearly_then_recovers(labq4: Labq) -> None:
    before = len(labq4.json("queue", "--all"))
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        db = sqlite3.connect(labq4.state_dir / "labq.db", isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(60)
        db.execute("ROLLBACK")
        db.close()

    t = threading.Thread(target=hold_lock)
    t.start()
    try:
        assert locked.wait(10)
        msg = one_line_refusal(labq4, "submit", "--", "true")
        assert "not writable: database is locked" in msg, msg
        # Reading still works while it is locked (WAL).
        assert len(labq4.json("queue", "--all")) == before
    finally:
        release.set()
        t.join()
    job = labq4.submit("--", "true", cwd="/tmp")
    assert labq4.wait(job, ("SUCCEEDED",))["state"] == "SUCCEEDED"
    assert len(labq4.json("queue", "--all")) == before + 1
    assert integrity(labq4) == "ok"
