"""The job-control core on the in-memory launcher: no Ray, no processes, milliseconds.

A real Daemon composition over a real SQLite store, with `MemoryLauncher` in place of
the Ray Executor: the tests play the nodes (started, log, finished) and check what the
daemon records: requeue after preemption and node loss, events applied twice,
re-adoption after a restart, accounting, cancel and its grace.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from scheduler.auth import Caller
from scheduler.config import DaemonConfig
from scheduler.daemon import Daemon
from scheduler.errors import DaemonError
from scheduler.launcher import MemoryLauncher, key_of
from scheduler.nodes import NodeRecord
from scheduler.shapes import JobState

ROOT = Caller(0, "root", True)
ALICE = Caller(1001, "alice", False)
BOB = Caller(1002, "bob", False)
SPEC = {"command": ["train"], "gpus": 1, "workdir": "/tmp"}


def node(node_id: str, gpus: int = 4) -> NodeRecord:
    return NodeRecord(id=node_id, name=f"box-{node_id}", address="", gpus=gpus, cpus=8, memory=0, simulated=True, nvml_gpus=0)


def open_daemon(
    state: Path, launcher: MemoryLauncher, nodes: tuple[str, ...] = ("n1",), **config: object
) -> Daemon:
    """A daemon (re)started on `state`: the nodes Ray would report, then reconcile."""
    cfg = DaemonConfig(min_runtime_s=0, grace_period_s=7, **config)  # type: ignore[arg-type]
    d = Daemon(state, state.parent / "sock", cfg, launcher=launcher)
    d.open_store()
    d.nodes.set_all({n: node(n) for n in nodes})
    d.attached()
    return d


def pump(d: Daemon, launcher: MemoryLauncher) -> None:
    """What the event pump thread does once: everything reported so far, stored and acked."""
    batch = launcher.poll(d.pump.ack, 0)
    assert d.pump.apply(batch)


def submit_and_start(d: Daemon, launcher: MemoryLauncher, caller: Caller = ALICE, **spec: object) -> int:
    job = d.control.submit(caller, {**SPEC, **spec})
    d.scheduler.one_pass()
    row = d.store.get(job)
    assert row.state is JobState.STARTING and key_of(job, row.attempt) in launcher.jobs
    launcher.start(job, row.attempt, at=100.0)
    pump(d, launcher)
    assert d.store.get(job).state is JobState.RUNNING
    return job


def test_a_job_runs_logs_and_ends_once_with_its_gpu_time_accounted(d: Daemon, launcher: MemoryLauncher) -> None:
    job = submit_and_start(d, launcher)
    launcher.log(job, 1, 0, b"epoch 1\n")
    launcher.log(job, 1, 8, b"epoch 2\n")
    launcher.finish(job, 1, "succeeded", at=160.0)
    pump(d, launcher)
    row = d.store.get(job)
    assert row.state is JobState.SUCCEEDED and row.end_time == 160.0
    assert d.logs.path(job).read_bytes() == b"epoch 1\nepoch 2\n"
    assert row.log_bytes == 16
    # The run is in the ledger the fair-share factor is computed from.
    decayed, week = d.ledger.usage(200.0, [])
    assert week["alice"] == pytest.approx(60.0)
    assert launcher.poll(d.pump.ack, 0) == []  # the next poll carries the acknowledgement...
    assert launcher.acked == d.pump.ack and not launcher.jobs  # ...and the launcher forgets the job


def test_every_event_applied_twice_changes_nothing_the_second_time(d: Daemon, launcher: MemoryLauncher) -> None:
    job = submit_and_start(d, launcher)
    launcher.log(job, 1, 0, b"once\n")
    launcher.finish(job, 1, "failed", exit_code=3, reason="exit code 3", at=150.0)
    batch = launcher.poll(d.pump.ack, 0)
    assert d.pump.apply(batch)
    events_before = d.store.events(job)
    d.pump.ack = 0  # as if the acknowledgement had not been stored: everything again
    assert d.pump.apply(batch)
    assert d.store.events(job) == events_before
    assert d.logs.path(job).read_bytes() == b"once\n"
    assert d.store.get(job).state is JobState.FAILED


def test_a_late_report_of_an_older_attempt_is_ignored(d: Daemon, launcher: MemoryLauncher) -> None:
    job = submit_and_start(d, launcher)
    launcher.finish(job, 1, "preempted", exit_code=None, reason="reclaimed", at=130.0)
    pump(d, launcher)
    d.scheduler.one_pass()
    assert d.store.get(job).attempt == 2
    # attempt 1's runner says something more: nothing happens to attempt 2
    launcher.emit({"type": "finished", "job_id": job, "attempt": 1, "outcome": "failed", "end_time": 140.0})
    pump(d, launcher)
    assert d.store.get(job).state is JobState.STARTING


def test_preemption_requeues_first_among_the_owners_jobs(d: Daemon, launcher: MemoryLauncher) -> None:
    job = submit_and_start(d, launcher)
    launcher.finish(job, 1, "preempted", exit_code=None, reason="reclaimed for bob", at=130.0)
    pump(d, launcher)
    row = d.store.get(job)
    assert row.state is JobState.PENDING and row.requeued and row.node is None
    states = [e["new_state"] for e in d.store.events(job)]
    assert states[-2:] == ["PREEMPTED", "PENDING"]
    # The preempted attempt's GPU time counts; the job runs again as attempt 2.
    assert d.ledger.usage(200.0, [])[1]["alice"] == pytest.approx(30.0)
    d.scheduler.one_pass()
    assert d.store.get(job).attempt == 2 and key_of(job, 2) in launcher.jobs


def test_a_lost_node_requeues_per_the_retry_budget_and_is_never_used_again(
    tmp_path: Path, launcher: MemoryLauncher
) -> None:
    d = open_daemon(tmp_path / "state", launcher, ("n1", "n2"), node_lost_retries=1)
    job = submit_and_start(d, launcher)
    first = d.store.get(job).node
    assert first is not None
    launcher.finish(job, 1, "lost", exit_code=None, reason="NodeDiedError: the node died", at=130.0)
    pump(d, launcher)
    row = d.store.get(job)
    assert row.state is JobState.PENDING and row.requeued
    assert "was lost at" in d.store.events(job)[-2]["reason"]
    assert first not in d.nodes  # dead: never placed on again
    d.scheduler.one_pass()
    row = d.store.get(job)
    assert row.state is JobState.STARTING and row.node != first
    launcher.start(job, 2)
    launcher.finish(job, 2, "lost", exit_code=None, reason="NodeDiedError", at=190.0)
    pump(d, launcher)
    assert d.store.get(job).state is JobState.NODE_LOST  # past its one retry
    d.store.close()


def test_a_launch_ray_cannot_place_on_its_dead_node_is_requeued_without_spending_a_retry(
    tmp_path: Path, launcher: MemoryLauncher
) -> None:
    # A worker's old Ray node, dead after a reboot but not yet dropped: Ray answers the
    # pinned task with TaskUnschedulableError (the executor reports the type only).
    d = open_daemon(tmp_path / "state", launcher, ("n1", "n2"), node_lost_retries=0)
    job = d.control.submit(ALICE, SPEC)
    d.scheduler.one_pass()
    row = d.store.get(job)
    assert row.state is JobState.STARTING and row.node is not None
    ghost = row.node
    reason = "the Ray task ended without a result (TaskUnschedulableError)"
    launcher.finish(job, row.attempt, "lost", exit_code=None, reason=reason, at=120.0)
    pump(d, launcher)
    row = d.store.get(job)
    assert row.state is JobState.PENDING and row.requeued, row.state
    assert "was gone before the job started there" in d.store.events(job)[-1]["reason"]
    assert ghost not in d.nodes
    d.scheduler.one_pass()  # no retry was spent (the budget is 0): it is placed again, elsewhere
    row = d.store.get(job)
    assert row.state is JobState.STARTING and row.node not in (None, ghost)
    d.store.close()


def test_cancel_pending_running_and_now_and_only_by_the_owner_or_an_admin(d: Daemon, launcher: MemoryLauncher) -> None:
    running = submit_and_start(d, launcher)
    waiting = d.control.submit(ALICE, {**SPEC, "gpus": 4})  # 3 of 4 GPUs free: it waits
    d.scheduler.one_pass()
    assert d.store.get(waiting).state is JobState.PENDING
    with pytest.raises(DaemonError) as e:
        d.control.cancel(BOB, running)
    assert e.value.status == 403 and "belongs to alice" in str(e.value)
    assert d.control.cancel(ALICE, waiting) == "cancelled"
    assert d.store.get(waiting).state is JobState.CANCELLED
    assert d.control.cancel(ALICE, running) == "stopping"
    stop = launcher.jobs[key_of(running, 1)].stop
    assert stop == {"outcome": "cancelled", "reason": "cancelled by alice", "grace": 7.0}
    assert d.control.cancel(ROOT, running, now=True) == "killed"
    assert launcher.jobs[key_of(running, 1)].stop["grace"] == 0.0  # type: ignore[index]
    launcher.finish(running, 1, "cancelled", exit_code=None, reason="cancelled by alice", at=140.0)
    pump(d, launcher)
    assert d.store.get(running).state is JobState.CANCELLED
    with pytest.raises(DaemonError) as e:
        d.control.cancel(ALICE, running)
    assert e.value.status == 409


def test_grace_is_capped_and_the_default_time_limit_reaches_the_node(tmp_path: Path, launcher: MemoryLauncher) -> None:
    d = open_daemon(tmp_path / "state", launcher, max_grace_s=60.0, default_time_limit_s=3600.0)
    with pytest.raises(DaemonError, match="at most 1m00s"):
        d.control.submit(ALICE, {**SPEC, "grace": "2h"})
    job = submit_and_start(d, launcher, grace="45s")
    launch = launcher.jobs[key_of(job, 1)].launch
    assert launch.grace == 45 and launch.time_limit == 3600.0 and launch.user == "alice"
    # A job from before the cap (stored with a larger grace) gets the cap.
    d.store._w.execute("UPDATE jobs SET spec=json_set(spec, '$.grace', 900) WHERE id=?", (job,))
    assert d.control.grace(d.store.get(job)) == 60.0
    d.store.close()


def test_a_restarted_daemon_adopts_what_runs_and_explains_what_does_not(tmp_path: Path) -> None:
    launcher = MemoryLauncher()
    d = open_daemon(tmp_path / "state", launcher, ("n1", "n2"))
    adopted = submit_and_start(d, launcher)
    starting = d.control.submit(ALICE, SPEC)
    d.scheduler.one_pass()
    assert d.store.get(starting).state is JobState.STARTING
    d.store.close()

    # The daemon restarts; the launcher (the detached Executor) still runs both.
    d = open_daemon(tmp_path / "state", launcher, ("n1", "n2"))
    assert d.store.get(adopted).state is JobState.RUNNING
    assert launcher.launches.count(key_of(starting, 1)) == 1  # known: not launched again
    d.store.close()

    # Now the Executor was lost too (a new Ray head): nothing is known.
    gone_node = d.store.get(adopted).node
    launcher.forget_everything()
    d = open_daemon(tmp_path / "state", launcher, ("n9",))  # the old nodes went with the head
    # STARTING: launched again, the same attempt (a launch is idempotent per attempt).
    assert launcher.launches.count(key_of(starting, 1)) == 2 and key_of(starting, 2) not in launcher.jobs
    # RUNNING on a node that is gone: NODE_LOST, requeued.
    row = d.store.get(adopted)
    assert row.state is JobState.PENDING and gone_node not in d.nodes
    d.store.close()


def test_a_running_job_ray_forgot_on_a_live_node_is_lost_with_the_reason(tmp_path: Path) -> None:
    launcher = MemoryLauncher()
    d = open_daemon(tmp_path / "state", launcher)
    job = submit_and_start(d, launcher)
    d.store.close()
    launcher.forget_everything()
    d = open_daemon(tmp_path / "state", launcher)
    row = d.store.get(job)
    assert row.state is JobState.LOST and "executor that owned it is gone" in row.reason
    d.store.close()


def test_an_event_the_store_cannot_take_is_not_acknowledged_and_comes_again(
    d: Daemon, launcher: MemoryLauncher, tmp_path: Path
) -> None:
    job = submit_and_start(d, launcher)
    launcher.finish(job, 1, "succeeded", at=150.0)
    batch = launcher.poll(d.pump.ack, 0)
    acked = d.pump.ack
    locker = sqlite3.connect(d.store.path, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        d.store._w.execute("PRAGMA busy_timeout=50")
        assert not d.pump.apply(batch)
        assert d.pump.ack == acked and d.store.get(job).state is JobState.RUNNING
    finally:
        locker.rollback()
        locker.close()
    assert d.pump.apply(launcher.poll(d.pump.ack, 0))
    assert d.store.get(job).state is JobState.SUCCEEDED and d.store.get(job).end_time == 150.0


def test_an_unknown_outcome_is_an_error_said_in_words_not_a_silent_lost(d: Daemon, launcher: MemoryLauncher) -> None:
    job = submit_and_start(d, launcher)
    launcher.finish(job, 1, "exploded", exit_code=None, at=140.0)
    pump(d, launcher)
    row = d.store.get(job)
    assert row.state is JobState.LOST and row.reason == "the node reported an unknown outcome 'exploded'"


def test_a_new_launcher_restarts_the_event_numbering(d: Daemon, launcher: MemoryLauncher) -> None:
    job = submit_and_start(d, launcher)
    assert int(d.store.get_meta("executor_ack") or 0) == d.pump.ack > 0
    d.pump.reset_if_new("another-executor")
    assert d.store.get_meta("executor_ack") == "0"
    assert d.store.get(job).state is JobState.RUNNING


def test_the_ledger_keeps_a_run_that_ends_while_a_pass_reads_it(d: Daemon) -> None:
    """Before: the event pump appended to a list that usage() replaced, so a run could
    drop out of fair-share usage until a restart."""
    import threading

    d.ledger.usage(1000.0, [])  # loaded
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            d.ledger.usage(1000.0, [])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(2000):
            d.ledger.ended("carol", 1, 900.0 + i * 0.01, 900.5 + i * 0.01)
    finally:
        stop.set()
        t.join()
    assert d.ledger.usage(1000.0, [])[1]["carol"] == pytest.approx(2000 * 0.5)


def test_each_daemon_has_its_own_executor_on_a_shared_ray_cluster(tmp_path: Path) -> None:
    """Two state dirs on one (external) Ray cluster used to share the one detached
    'labq-executor': a new daemon's job 1 found the old daemon's job 1 known there and
    was never launched. Each daemon's Executor now carries its state dir's identity;
    a state dir that already ran the old shared one keeps it (its jobs are adopted)."""
    from scheduler.raylink import executor_name

    a = open_daemon(tmp_path / "a", MemoryLauncher())
    b = open_daemon(tmp_path / "b", MemoryLauncher())
    assert a.ray.executor_name != b.ray.executor_name
    assert a.ray.executor_name.startswith("labq-executor-")
    a.store.close()
    # Reopened: the same name (re-adoption after a restart finds the same Executor).
    again = open_daemon(tmp_path / "a", MemoryLauncher())
    assert again.ray.executor_name == executor_name(again.instance_id()) != "labq-executor"
    # An older state dir that already had an Executor, before names were per daemon.
    old = tmp_path / "old"
    legacy = open_daemon(old, MemoryLauncher())
    legacy.store._w.execute("DELETE FROM meta WHERE key='instance_id'")
    legacy.store.set_meta("executor_id", "0123abcd")
    legacy.store.close()
    upgraded = open_daemon(old, MemoryLauncher())
    assert upgraded.ray.executor_name == "labq-executor"
    for d in (b, again, upgraded):
        d.store.close()


# -- chains (--after / --after-any) -------------------------------------------------------------------
def why(d: Daemon, job_id: int) -> list[str]:
    w = d.scheduler.waiting_for(job_id)
    return [r.kind for r in w.reasons] if w else []


def test_a_chain_waits_for_its_dependencies_and_a_failed_one_cancels_what_needs_it(
    d: Daemon, launcher: MemoryLauncher
) -> None:
    """preprocess -> train -> eval with train failing: eval never starts and says why;
    a report that runs after any end of train does run."""
    pre = submit_and_start(d, launcher)
    train = d.control.submit(ALICE, {**SPEC, "after": [pre]})
    evaluate = d.control.submit(ALICE, {**SPEC, "after": str(train)})
    report = d.control.submit(ALICE, {**SPEC, "after_any": [train]})
    d.scheduler.one_pass()
    for job in (train, evaluate, report):
        assert d.store.get(job).state is JobState.PENDING and why(d, job) == ["dependency"]  # 3 GPUs free
    assert "waits for job 1 (RUNNING) to succeed" in d.scheduler.waiting_for(train).reasons[0].text  # type: ignore[union-attr]
    dry = d.scheduler.preview(ALICE, {**SPEC, "after": [pre]})  # --dry-run: not "would start now"
    assert not dry["starts_now"] and dry["why"][0]["kind"] == "dependency"

    launcher.finish(pre, 1, "succeeded", at=130.0)
    pump(d, launcher)
    d.scheduler.one_pass()
    assert d.store.get(train).state is JobState.STARTING  # released and placed in the same pass
    assert d.store.get(evaluate).state is JobState.PENDING and d.store.get(report).state is JobState.PENDING
    launcher.start(train, 1, at=131.0)
    launcher.finish(train, 1, "failed", exit_code=3, at=140.0)
    pump(d, launcher)
    d.scheduler.one_pass()
    ev = d.store.get(evaluate)
    assert ev.state is JobState.CANCELLED
    assert d.store.events(evaluate)[-1]["reason"] == f"dependency {train} FAILED: --after needs it to succeed"
    assert d.store.get(report).state is JobState.STARTING  # --after-any: any end will do
    assert d.store.dependency_waits() == {}


def test_a_cancelled_dependency_cascades_down_the_chain(d: Daemon, launcher: MemoryLauncher) -> None:
    submit_and_start(d, launcher)
    first = d.control.submit(ALICE, {**SPEC, "gpus": 4})  # 3 of 4 GPUs free: stays waiting
    second = d.control.submit(ALICE, {**SPEC, "after": [first]})
    third = d.control.submit(ALICE, {**SPEC, "after": [second]})
    d.scheduler.one_pass()
    d.control.cancel(ALICE, first)
    d.scheduler.one_pass()
    d.scheduler.one_pass()
    assert d.store.get(second).state is JobState.CANCELLED and d.store.get(third).state is JobState.CANCELLED
    assert d.store.events(third)[-1]["reason"].startswith(f"dependency {second} CANCELLED")


def test_a_dependency_must_exist_be_yours_and_be_able_to_succeed(d: Daemon, launcher: MemoryLauncher) -> None:
    bobs = d.control.submit(BOB, SPEC)
    with pytest.raises(DaemonError, match="there is no job 999"):
        d.control.submit(ALICE, {**SPEC, "after": [999]})
    with pytest.raises(DaemonError, match=f"job {bobs} belongs to bob") as e:
        d.control.submit(ALICE, {**SPEC, "after_any": [bobs]})
    assert e.value.status == 403
    assert d.control.submit(ROOT, {**SPEC, "after": [bobs]}) > 0  # an admin may chain on anyone's
    d.control.cancel(BOB, bobs)
    with pytest.raises(DaemonError, match="already ended CANCELLED, so this job could never start"):
        d.control.submit(BOB, {**SPEC, "after": [bobs]})
    assert d.control.submit(BOB, {**SPEC, "after_any": [bobs]}) > 0  # any end: it has ended
    with pytest.raises(DaemonError, match="not a job id"):
        d.control.submit(ALICE, {**SPEC, "after": "41,x"})


def test_stderr_parts_of_a_log_are_kept_apart_per_attempt(d: Daemon, launcher: MemoryLauncher) -> None:
    job = submit_and_start(d, launcher)
    launcher.log(job, 1, 0, b"out 1\nerr 1\n", err=[(6, 0, 6)])
    launcher.log(job, 1, 12, b"err 2\nout 2\n", err=[(12, 6, 6)])
    launcher.log(job, 1, 12, b"err 2\nout 2\n", err=[(12, 6, 6)])  # the same report again
    pump(d, launcher)
    assert d.logs.path(job).read_bytes() == b"out 1\nerr 1\nerr 2\nout 2\n"
    assert d.logs.err_path(job, 1).read_bytes() == b"err 1\nerr 2\n"
    d.logs.remove(job)
    assert not d.logs.err_path(job, 1).exists()


def test_the_ledger_carries_its_sums_and_matches_summing_every_run(d: Daemon) -> None:
    """A pass no longer sums every finished run of the week: the carried sums must say
    what the full sum says (decayed exactly; the week's within the refresh's slack)."""
    from scheduler.quota import Interval, usage_by_user

    runs: list[Interval] = []
    d.ledger.usage(1000.0, [])
    for i, now in enumerate((1001.0, 1005.0, 1020.0, 1029.0, 1100.0, 5000.0)):
        for j in range(3):
            iv = Interval(("ana", "bo")[j % 2], 1 + j, now - 50 - 10 * i, now - 1)
            runs.append(iv)
            d.ledger.ended(iv.user, iv.gpus, iv.start, iv.end)
        got = d.ledger.usage(now, [])
        want = usage_by_user(runs, now, d.ledger.half_life_s)
        for u in ("ana", "bo"):
            assert got[0][u] == pytest.approx(want[0][u], rel=1e-9)
            assert got[1][u] == pytest.approx(want[1][u], rel=1e-9)


def test_one_silent_runner_does_not_condemn_a_node_whose_other_jobs_report(
    tmp_path: Path, launcher: MemoryLauncher
) -> None:
    """A researcher's stuck session (its runner wedged) once made the watch take its
    whole node for dead: everyone's jobs there went NODE_LOST. Only that job goes now."""
    d = open_daemon(tmp_path / "state", launcher, ("n1",), node_lost_retries=0)
    stuck = submit_and_start(d, launcher, gpus=1)
    other = submit_and_start(d, launcher, gpus=1)
    node = d.store.get(stuck).node
    assert node and d.store.get(other).node == node
    launcher.jobs[key_of(stuck, 1)].seen = 1000.0
    launcher.jobs[key_of(other, 1)].seen = 1060.5
    assert d.control.check_silent(launcher.known(), timeout=60, now=1061.0) == [stuck]
    assert node in d.nodes  # still takes jobs
    assert d.store.get(other).state is JobState.RUNNING
    lost = [e for e in d.store.events(stuck) if e["new_state"] == "NODE_LOST"]
    assert len(lost) == 1 and "runner" in lost[0]["reason"] and "other jobs still report" in lost[0]["reason"]
    assert launcher.jobs[key_of(stuck, 1)].stop is not None  # told to stop, should its runner wake
    # Once the whole node is quiet, the node is what is lost.
    launcher.jobs[key_of(other, 1)].seen = 1000.0
    assert d.control.check_silent(launcher.known(), timeout=60, now=1100.0) == [other]
    assert node not in d.nodes
    d.store.close()


def test_the_node_watch_ends_a_silent_or_vanished_nodes_jobs_at_their_last_word_once(
    tmp_path: Path, launcher: MemoryLauncher
) -> None:
    d = open_daemon(tmp_path / "state", launcher, ("n1", "n2"), node_lost_retries=1)
    a = submit_and_start(d, launcher, gpus=4)
    b = submit_and_start(d, launcher, gpus=4)
    silent_node, other = d.store.get(a).node, d.store.get(b).node
    assert silent_node and other and silent_node != other
    # Job a's node went quiet 61 s ago (a cut cable); b's spoke just now.
    launcher.jobs[key_of(a, 1)].seen = 1000.0
    launcher.jobs[key_of(b, 1)].seen = 1060.5
    assert d.control.check_silent(launcher.known(), timeout=60, now=1061.0) == [a]
    lost = [e for e in d.store.events(a) if e["new_state"] == "NODE_LOST"]
    assert len(lost) == 1 and lost[0]["time"] == 1000.0  # when it happened, not when noticed
    assert d.store.get(a).state is JobState.PENDING  # requeued, per node_lost_retries
    assert silent_node not in d.nodes  # no new jobs there
    assert key_of(a, 1) in launcher.jobs and launcher.jobs[key_of(a, 1)].stop is not None
    # The Ray task's own failure, arriving later, changes nothing and counts no GPU time twice.
    used = d.ledger.usage(2000.0, [])
    launcher.finish(a, 1, "lost", exit_code=None, reason="NodeDiedError: the node died", at=1100.0)
    pump(d, launcher)
    assert len([e for e in d.store.events(a) if e["new_state"] == "NODE_LOST"]) == 1
    assert d.ledger.usage(2000.0, []) == used
    assert d.control.check_silent(launcher.known(), timeout=60, now=1061.0) == []
    # A node Ray no longer lists: its jobs go at once, without waiting for the timeout.
    d.nodes.set_all({})
    assert d.control.check_silent(launcher.known(), timeout=60, now=1061.0) == [b]
    d.store.close()
