"""Arrays and sweeps (issue 16) on the in-memory launcher: one row per array, a row per
task as it starts, the %N cap, the array's end as its chain sees it, cancel of one task
or all, and the policy's cost of a long array (one entry with a count)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from scheduler.daemon import Daemon
from scheduler.errors import DaemonError
from scheduler.launcher import MemoryLauncher
from scheduler.policy import NodeInfo, PendingJob, Snapshot, schedule
from scheduler.present import queue_cells
from scheduler.shapes import JobState
from tests.unit.test_control import ALICE, BOB, SPEC, open_daemon, pump


def started(d: Daemon, array_id: int) -> list[int]:
    return [r.id for r in d.store.jobs(states=(JobState.STARTING, JobState.RUNNING)) if r.array_id == array_id]


def finish(d: Daemon, launcher: MemoryLauncher, task_ids: list[int], outcome: str = "succeeded") -> None:
    for t in task_ids:
        launcher.start(t, 1)
        launcher.finish(t, 1, outcome, exit_code=0 if outcome == "succeeded" else 3)
    pump(d, launcher)


def test_an_array_runs_its_tasks_under_its_cap_as_one_row_and_ends_when_all_have(
    d: Daemon, launcher: MemoryLauncher
) -> None:
    arr = d.control.submit(ALICE, {**SPEC, "command": ["train", "--seed", "{index}"], "array": "0-9%2"})
    after = d.control.submit(ALICE, {**SPEC, "command": ["eval"], "after": [arr]})
    d.scheduler.one_pass()
    first = started(d, arr)
    assert len(first) == 2  # %2, though 4 GPUs are free
    rows = [d.store.get(t) for t in first]
    assert [r.ref for r in rows] == [f"{arr}.0", f"{arr}.1"]
    assert rows[1].spec["command"] == ["train", "--seed", "1"]
    assert rows[1].spec["env"]["LABQ_ARRAY_ID"] == str(arr) and rows[1].spec["env"]["LABQ_ARRAY_INDEX"] == "1"
    # The listing: the array is one row, its tasks only on request.
    listing, _ = d.views.listing(ALICE, None, None, None, None)
    assert [j["id"] for j in listing] == [arr, after]
    a = listing[0]["array"]
    assert (a["size"], a["running"], a["pending"], a["done"], a["cap"]) == (10, 2, 8, 0, 2)
    cells = queue_cells(listing[0], time.time())
    assert cells["STATE"] == "RUNNING" and "2/10 running, 8 pending, 0 done, 0 failed" in cells["REASON / NODE"]
    with_tasks, _ = d.views.listing(ALICE, None, None, None, None, tasks=True)
    assert [j.get("ref") for j in with_tasks if j.get("array_id")] == [f"{arr}.0", f"{arr}.1"]
    # Full cap: the array says why no more start.
    assert "2/2 tasks at once (%2)" in d.views.job(d.store.get(arr), ALICE)["reasons"][0]
    for _ in range(5):
        finish(d, launcher, started(d, arr))
        d.scheduler.one_pass()
    assert d.store.get(arr).state is JobState.PENDING or d.store.get(arr).state is JobState.SUCCEEDED
    d.scheduler.one_pass()
    assert d.store.get(arr).state is JobState.SUCCEEDED
    assert d.store.get(arr).reason == "all 10 tasks succeeded"
    # The chain on the whole array starts only now.
    assert d.store.get(after).state is JobState.STARTING


def test_a_failed_task_fails_the_array_and_cancels_its_chain(d: Daemon, launcher: MemoryLauncher) -> None:
    arr = d.control.submit(ALICE, {**SPEC, "array": "1,3,5"})
    nxt = d.control.submit(ALICE, {**SPEC, "after": [arr]})
    d.scheduler.one_pass()
    tasks = started(d, arr)
    assert sorted(d.store.get(t).array_index for t in tasks) == [1, 3, 5]
    finish(d, launcher, tasks[:2])
    finish(d, launcher, tasks[2:], "failed")
    d.scheduler.one_pass()
    assert d.store.get(arr).state is JobState.FAILED and d.store.get(arr).reason == "1 of 3 tasks failed"
    assert d.store.get(nxt).state is JobState.CANCELLED
    assert f"dependency {arr} FAILED" in d.store.get(nxt).reason


def test_cancel_one_task_before_it_starts_or_the_whole_array(d: Daemon, launcher: MemoryLauncher) -> None:
    arr = d.control.submit(ALICE, {**SPEC, "array": "0-5%2"})
    with pytest.raises(DaemonError, match="belongs to alice"):
        d.control.cancel_task(BOB, arr, 4)
    assert d.control.cancel_task(ALICE, arr, 4) == "cancelled"
    with pytest.raises(DaemonError, match=f"no job {arr}.9"):
        d.control.cancel_task(ALICE, arr, 9)
    d.scheduler.one_pass()
    running = started(d, arr)
    assert len(running) == 2
    with pytest.raises(DaemonError, match="belongs to alice"):
        d.control.cancel(BOB, arr)
    assert d.control.cancel(ALICE, arr) == "cancelled (2 running tasks stopping)"
    assert all(d.store.get(t).stop_outcome == "cancelled" for t in running)
    d.scheduler.one_pass()
    assert started(d, arr) == running  # nothing new starts
    assert d.store.get(arr).state is JobState.CANCELLED
    # Index 4 never ran: its row is CANCELLED and says so.
    four = d.store.get(d.store.task_id(arr, 4) or 0)
    assert four.state is JobState.CANCELLED and four.start_time is None and "before it started" in four.reason


def test_a_sweep_is_a_grid_and_each_task_gets_its_values(d: Daemon, launcher: MemoryLauncher) -> None:
    arr = d.control.submit(
        ALICE,
        {
            **SPEC,
            "command": ["python", "t.py", "--lr", "{lr}", "--bs", "{bs}", "${HOME}"],
            "sweep": {"lr": ["1e-3", "3e-4"], "bs": [32, 64]},
            "env": {"RUN": "run-{index}-{lr}", "JSON": '{"a": 1}'},
        },
    )
    d.scheduler.one_pass()
    tasks = [d.store.get(t) for t in started(d, arr)]
    assert [t.spec["command"][3:6] for t in tasks] == [
        ["1e-3", "--bs", "32"],
        ["1e-3", "--bs", "64"],
        ["3e-4", "--bs", "32"],
        ["3e-4", "--bs", "64"],
    ]
    assert tasks[2].spec["command"][-1] == "${HOME}"  # other braces are left alone
    assert tasks[2].spec["env"]["LABQ_PARAM_LR"] == "3e-4" and tasks[2].spec["env"]["LABQ_PARAM_BS"] == "32"
    assert tasks[2].spec["env"]["RUN"] == "run-2-3e-4" and tasks[2].spec["env"]["JSON"] == '{"a": 1}'
    # Not yet started: `show 42.7` answers from the array, as that task.
    arr2 = d.control.submit(ALICE, {**SPEC, "command": ["x", "{index}"], "array": "0-99"})
    v = d.views.unstarted_task(d.store.get(arr2), 7, ALICE)
    assert v["ref"] == f"{arr2}.7" and v["spec"]["command"] == ["x", "7"] and "array" not in v["spec"]
    assert v["reasons"][0] == f"task {arr2}.7 has not started yet"
    assert "command" not in d.views.unstarted_task(d.store.get(arr2), 7, BOB)["spec"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"array": "5-1"}, "empty range"),
        ({"array": "0-9%0"}, "whole number from 1"),
        ({"array": "0-200000"}, "at most 100,000 tasks"),
        ({"array": "0-3", "sweep": {"lr": [1]}}, "not both"),
        ({"max_running": 2}, "for arrays and sweeps"),
        ({"sweep": {"index": [1, 2]}}, "labq's own"),
        ({"array": "0-9%99999999999999999999"}, "whole number from 1"),
        ({"array": ",".join(["0-49999"] * 511)}, "at most 100,000 tasks"),
        ({"array": "0-10:2,4"}, "index 4 is given twice"),
        ({"sweep": {"lr": [1], "LR": [2]}}, "differ by more than case"),
        ({"sweep": {"lr": ["a,b"]}}, "cannot hold a comma"),
        ({"sweep": {"lr": [None]}}, "a number or a word"),
    ],
)
def test_a_bad_array_is_refused_in_one_line_and_nothing_is_queued(d: Daemon, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(DaemonError, match=message):
        d.control.submit(ALICE, {**SPEC, **spec})
    assert d.store.jobs() == []


def test_the_policy_sees_a_long_array_as_one_entry_with_a_count() -> None:
    nodes = (NodeInfo("n1", 4),)
    one = Snapshot(now=1000.0, pending=(PendingJob(1, "alice", 1, 10.0),), running=(), nodes=nodes)
    arr = Snapshot(now=1000.0, pending=(PendingJob(1, "alice", 1, 10.0, count=10_000),), running=(), nodes=nodes)
    d1, d2 = schedule(one), schedule(arr)
    assert [s.job_id for s in d1.starts] == [1]
    assert [s.job_id for s in d2.starts] == [1, 1, 1, 1]  # four tasks on four GPUs
    assert 1 in d2.waiting  # the rest wait, as one
    # Fair share between an array and another researcher's job: they alternate by usage.
    mixed = Snapshot(
        now=1000.0,
        pending=(PendingJob(1, "alice", 1, 10.0, count=100), PendingJob(2, "bob", 1, 20.0), PendingJob(3, "bob", 1, 21.0)),
        running=(),
        nodes=nodes,
    )
    assert sorted(s.job_id for s in schedule(mixed).starts) == [1, 1, 2, 3]


def test_a_sweeps_values_are_its_owners_and_an_array_counts_its_tasks_toward_the_pending_cap(
    tmp_path: Path, launcher: MemoryLauncher
) -> None:
    d = open_daemon(tmp_path / "state", launcher, max_pending_jobs_per_user=50)
    try:
        arr = d.control.submit(ALICE, {**SPEC, "sweep": {"key": ["SECRET1", "SECRET2"]}, "after": []})
        seen = d.views.job(d.store.get(arr), BOB, full=True)
        assert "sweep" not in seen["spec"] and seen["spec"]["sweep_sizes"] == {"key": 2}
        assert "SECRET" not in str(seen)
        assert d.views.job(d.store.get(arr), ALICE, full=True)["spec"]["sweep"] == {"key": ["SECRET1", "SECRET2"]}
        with pytest.raises(DaemonError, match="an array of 51 tasks is more than"):
            d.control.submit(BOB, {**SPEC, "array": "0-50"})
        d.control.submit(BOB, {**SPEC, "array": "0-39"})
        with pytest.raises(DaemonError, match="bob already has 40 jobs waiting"):
            d.control.submit(BOB, {**SPEC, "array": "0-10"})
        d.scheduler.one_pass()  # the pass's count says the same: 4 started, 36 wait
        d.control.submit(BOB, {**SPEC, "array": "0-9"})
        with pytest.raises(DaemonError, match="jobs waiting"):
            d.control.submit(BOB, {**SPEC, "array": "0-9"})
    finally:
        d.store.close()


def test_a_task_whose_node_died_runs_again_under_its_arrays_cap(tmp_path: Path, launcher: MemoryLauncher) -> None:
    d = open_daemon(tmp_path / "state", launcher, ("n1", "n2"), node_lost_retries=1)
    try:
        arr = d.control.submit(ALICE, {**SPEC, "array": "0-5%2"})
        d.scheduler.one_pass()
        first = started(d, arr)
        assert len(first) == 2
        lost = first[0]
        launcher.start(lost, 1)
        launcher.finish(lost, 1, "lost", exit_code=None, reason="NodeDiedError: the node died")
        pump(d, launcher)
        assert d.store.get(lost).state is JobState.PENDING  # requeued as itself: 42.0 again
        d.scheduler.one_pass()
        live = [r for r in d.store.jobs() if r.array_id == arr and not r.state.terminal]
        assert len(live) == 2 and lost in [r.id for r in live]  # the cap holds: no third task
        assert d.store.get(lost).state is JobState.STARTING and d.store.get(lost).attempt == 2
        assert d.store.get(lost).ref == f"{arr}.0"
    finally:
        d.store.close()


def test_a_sweep_is_bounded_as_its_tasks_expand_not_as_it_was_submitted(tmp_path: Path, launcher: MemoryLauncher) -> None:
    """A 45 KB sweep (`{v}` written hundreds of times, long values) once made ~150 MB of
    task rows: the submission passed max_spec_bytes, each task was far over it."""
    d = open_daemon(tmp_path / "state", launcher, max_array_bytes=4 * 1024**2)
    try:
        many = ["{v}"] * 1000  # 4 KB as written
        with pytest.raises(DaemonError, match=r"each task's spec would be up to \d+ KiB .* max_spec_bytes") as e:
            d.control.submit(ALICE, {**SPEC, "command": ["echo", *many], "sweep": {"v": ["y" * 200, "z"]}})
        assert "\n" not in str(e.value)
        with pytest.raises(DaemonError, match="a value longer than 256 characters"):
            d.control.submit(ALICE, {**SPEC, "sweep": {"v": ["y" * 300]}})
        # Each task fine, all of them together over the bound.
        with pytest.raises(DaemonError, match=r"the array's 20,000 tasks would take up to \d+ MiB .* max_array_bytes"):
            d.control.submit(ALICE, {**SPEC, "command": ["echo", "{index}", "x" * 300], "array": "0-19999"})
        assert d.store.jobs() == []  # nothing was stored
        # What a researcher writes still goes in, and expands as bounded.
        arr = d.control.submit(ALICE, {**SPEC, "command": ["train", "--lr", "{lr}"], "sweep": {"lr": ["1e-3", "3e-4"]}})
        spec = d.store.get(arr).job_spec()
        bound = spec.task_bytes_bound()
        import json

        assert all(len(json.dumps(spec.task_spec(arr, i))) <= bound for i in range(2))
    finally:
        d.store.close()


def test_a_job_after_an_array_is_told_how_far_the_array_is_not_its_rows_pending() -> None:
    # The array's own row stays PENDING while its tasks run: "waits for job 40 (PENDING)"
    # beside a queue showing 40[] RUNNING (a newcomer).
    from scheduler.scheduling import dependency_wait
    from scheduler.store_arrays import ArrayEntry

    e = ArrayEntry(40, "ana", 1, 0.0, 0, None, 0.0, 0, size=6, cap=2, made=4, live=2)
    w = dependency_wait([(40, "ok", JobState.PENDING), (41, "any", JobState.RUNNING)], {40: e})
    assert w.reasons[0].text == "dependency: waits for array 40 (2 of 6 tasks ended) to succeed, job 41 (RUNNING) to end"
    assert dependency_wait([(41, "ok", JobState.RUNNING)]).reasons[0].text == "dependency: waits for job 41 (RUNNING) to succeed"
