from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from scheduler.job import IllegalTransition, JobSpec, JobState
from scheduler.store import SCHEMA_VERSION, Store, StoreError, UnknownJob


def spec(**kw: object) -> JobSpec:
    return JobSpec.model_validate({"command": ["true"], **kw})


def test_jobs_and_events_round_trip(tmp_path: Path) -> None:
    st = Store(tmp_path / "db.sqlite")
    jid = st.add_job("alice", 1000, spec(gpus=2, name="bert"), now=10.0)
    st.transition(jid, JobState.STARTING, "placed", now=11.0, node="n1", attempt=1, start_time=11.0)
    st.transition(jid, JobState.RUNNING, "running", now=12.0, start_time=12.0)
    st.transition(jid, JobState.SUCCEEDED, "", now=20.0, end_time=20.0, exit_code=0)
    job = st.get(jid)
    assert job.state is JobState.SUCCEEDED and job.gpus == 2 and job.name == "bert"
    assert [e["new_state"] for e in st.events(jid)] == ["PENDING", "STARTING", "RUNNING", "SUCCEEDED"]
    runs = st.runs_since(0)
    assert runs == [
        {
            "job_id": jid,
            "attempt": 1,
            "user": "alice",
            "gpus": 2,
            "node": "n1",
            "start_time": 12.0,
            "end_time": 20.0,
        }
    ]


def test_illegal_transition_changes_nothing(tmp_path: Path) -> None:
    st = Store(tmp_path / "db.sqlite")
    jid = st.add_job("alice", 1000, spec())
    with pytest.raises(IllegalTransition):
        st.transition(jid, JobState.SUCCEEDED)
    assert st.get(jid).state is JobState.PENDING
    assert len(st.events(jid)) == 1


def test_expect_makes_racing_transitions_harmless(tmp_path: Path) -> None:
    st = Store(tmp_path / "db.sqlite")
    jid = st.add_job("alice", 1000, spec())
    st.transition(jid, JobState.CANCELLED, "by alice")
    row = st.transition(jid, JobState.STARTING, "placed", expect=(JobState.PENDING,))
    assert row.state is JobState.CANCELLED


def test_unknown_job(tmp_path: Path) -> None:
    st = Store(tmp_path / "db.sqlite")
    with pytest.raises(UnknownJob):
        st.get(42)


def test_reopen_keeps_data_and_schema_version(tmp_path: Path) -> None:
    st = Store(tmp_path / "db.sqlite")
    jid = st.add_job("alice", 1000, spec())
    st.close()
    st2 = Store(tmp_path / "db.sqlite")
    assert st2.get(jid).user == "alice"
    assert st2.schema_version() == SCHEMA_VERSION
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrates_from_version_1(tmp_path: Path) -> None:
    from scheduler.store import MIGRATIONS

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    for stmt in MIGRATIONS[0].split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.commit()
    conn.close()
    st = Store(path)
    assert st.schema_version() == SCHEMA_VERSION
    assert st.quota_overrides() == {}


def _db_at(path: Path, version: int) -> sqlite3.Connection:
    """A state file as labq of schema `version` left it (empty), open for a test to fill."""
    from scheduler.store import MIGRATIONS

    conn = sqlite3.connect(path)
    for m in MIGRATIONS[:version]:
        for stmt in m.split(";"):
            if stmt.strip():
                conn.execute(stmt)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    return conn


def test_waiting_jobs_of_before_need_their_workdir_after_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "v10.sqlite"
    conn = _db_at(path, 10)
    for spec, state in (
        ({"command": ["a"], "workdir": "/srv/a"}, "PENDING"),
        ({"command": ["b"], "workdir": "/srv/b", "code": {"id": "ab" * 32}}, "PENDING"),
        ({"command": ["c"], "workdir": "/srv/c"}, "SUCCEEDED"),
    ):
        conn.execute(
            "INSERT INTO jobs(user, uid, name, spec, gpus, state, submit_time) VALUES ('a', 1, '', ?, 1, ?, 0)",
            (json.dumps(spec), state),
        )
    conn.commit()
    conn.close()
    st = Store(path)
    assert [st.get(i).needs_dir for i in (1, 2, 3)] == ["/srv/a", "", "/srv/c"]


def test_an_audit_line_is_shown_to_whom_it_concerns_old_lines_too(tmp_path: Path) -> None:
    """Matched by whom a line is about, not by its target's text: a quota on a user
    named `1` is not job 1's owner's business, nor is every node line a user named
    `ray`'s; an admin's cancel of a user's array task is that user's."""
    path = tmp_path / "v14.sqlite"
    conn = _db_at(path, 14)
    conn.execute("INSERT INTO jobs(user, uid, name, spec, gpus, state, submit_time) VALUES ('ana', 1, '', '{}', 1, 'PENDING', 0)")
    old = [
        ("root", "job.cancel", "1", "cancelled by root"),
        ("root", "job.cancel", "1.3", "cancelled by root"),
        ("root", "quota.set", "1", "{}"),
        ("ray", "node up", "box-2", ""),
        ("(unknown)", "node join refused", "ana", "from 10.0.0.9"),
        ("root", "token.create", "ana", "token t1"),
    ]
    for i, (actor, action, target, detail) in enumerate(old):
        conn.execute(
            "INSERT INTO audit(time, actor, action, target, detail) VALUES (?,?,?,?,?)", (i, actor, action, target, detail)
        )
    conn.commit()
    conn.close()
    st = Store(path)
    seen = [(r["action"], r["target"]) for r in st.audit_log(100, "ana")]
    assert seen == [("token.create", "ana"), ("job.cancel", "1.3"), ("job.cancel", "1")]
    assert st.audit_log(100, "ray") == [] and [r["target"] for r in st.audit_log(100, "1")] == ["1"]
    # New lines say whom they concern; the limit counts only those.
    for k in range(5):
        st.audit("root", "node.drain", f"box-{k}", "", 10.0 + k)
    st.audit("root", "job.cancel", "1", "cancelled by root", 20.0, concerns="ana")
    st.audit("root", "node.drain", "ana", "", 21.0)  # a node named after her: not hers
    assert [r["time"] for r in st.audit_log(1, "ana")] == [20.0]
    assert len(st.audit_log(100)) == len(old) + 7  # an admin sees all
    st.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    st = Store(tmp_path / "db.sqlite")
    st.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    st.close()
    with pytest.raises(StoreError, match="newer than this labq"):
        Store(tmp_path / "db.sqlite")


def test_quota_override_is_audited(tmp_path: Path) -> None:
    st = Store(tmp_path / "db.sqlite")
    st.set_quota_override("root", "alice", {"max_gpus": None}, {"max_gpus": 4}, now=5.0)
    assert st.quota_overrides() == {"alice": {"max_gpus": 4}}
    (entry,) = st.audit_log()
    assert entry["actor"] == "root" and entry["action"] == "quota.set" and entry["target"] == "alice"


def test_a_repeated_submission_token_is_one_job(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    spec = JobSpec.model_validate({"command": ["true"]})
    a = s.add_job("ana", 1000, spec, token="t-1")
    assert s.add_job("ana", 1000, spec, token="t-1") == a  # the reply was lost; sent again
    assert s.add_job("bo", 1001, spec, token="t-1") != a  # tokens are per user
    assert s.add_job("ana", 1000, spec) != s.add_job("ana", 1000, spec)  # no token: new jobs
    assert len(s.jobs()) == 4


def test_concurrent_submissions_are_committed_together_and_none_is_lost(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    commits = 0
    real_tx = s._tx

    def counting_tx():  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1
        return real_tx()

    s._tx = counting_tx  # type: ignore[method-assign]
    ids: list[int] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(50):
            # Every client also resends one submission (same token): still one job.
            token = f"c{n}-{min(i, 48)}"
            job = s.add_job(f"user{n}", 1000 + n, spec(), token=token)
            with lock:
                ids.append(job)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 500 and len(set(ids)) == 490  # 10 resends answered with the first id
    rows = s.jobs()
    assert len(rows) == 490 and {r.id for r in rows} == set(ids)
    assert all(len(s.events(r.id)) == 1 for r in rows)
    assert commits < 500  # batched: fewer transactions than submissions
    assert s.integrity() == "ok"


def test_integrity_check(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    assert s.integrity() == "ok"


def test_a_full_disk_is_a_clear_error_and_corrupts_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    spec = JobSpec.model_validate({"command": ["echo", "x" * 2000]})
    first = s.add_job("ana", 1000, spec)
    # SQLite's own limit stands in for a full disk: the same error path (SQLITE_FULL).
    pages = s._w.execute("PRAGMA page_count").fetchone()[0]
    s._w.execute(f"PRAGMA max_page_count={pages + 2}")
    with pytest.raises(StoreError, match="full"):
        for _ in range(100):
            s.add_job("ana", 1000, spec)
    s.close()
    again = Store(tmp_path / "db")
    assert again.integrity() == "ok"
    assert again.get(first).state is JobState.PENDING
    assert all(len(again.events(j.id)) == 1 for j in again.jobs())  # no half-written job


def test_a_locked_database_is_a_clear_error(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    s._w.execute("PRAGMA busy_timeout=300")  # the daemon waits 5 s; the verdict is the same
    other = sqlite3.connect(tmp_path / "db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="not writable: database is locked"):
            s.add_job("ana", 1000, JobSpec.model_validate({"command": ["true"]}))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert s.integrity() == "ok" and s.jobs() == []


def test_an_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open the database"):
        Store(blocker / "labq.db")
