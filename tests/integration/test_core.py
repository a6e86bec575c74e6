"""The core queue end to end: real daemon, real local Ray (4 logical GPUs), real processes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import Labq, cleanup, make_labq, wait_for

pytestmark = pytest.mark.integration

DONE = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT", "LOST")


def test_six_one_gpu_jobs_on_four_gpus(labq4: Labq) -> None:
    # Each job holds its GPU until the gate opens: on a loaded machine (the suite runs on
    # two workers) a fixed sleep could end before the fourth one starts.
    gate = labq4.root / "six-gate"
    gate.unlink(missing_ok=True)
    script = f"echo cvd=$CUDA_VISIBLE_DEVICES; while [ ! -e {gate} ]; do sleep 0.2; done; echo bye"
    ids = [labq4.submit("--gpus", "1", "--name", f"six{i}", "--", "sh", "-c", script) for i in range(6)]
    deadline = time.monotonic() + 30
    while True:
        jobs = [j for j in labq4.json("queue") if j["id"] in ids]
        running = [j for j in jobs if j["state"] == "RUNNING"]
        if len(running) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(running) == 4, jobs
    assert len({j["gpu_ids"] for j in running}) == 4
    pending = [j for j in jobs if j["state"] == "PENDING"]
    assert len(pending) == 2
    for j in pending:
        assert j["why"] and j["why"][0]["kind"] == "resources", j  # the kind, not the words
        assert j["eta"] is not None
    gate.touch()
    done = labq4.wait_all(ids, DONE)
    assert all(j["state"] == "SUCCEEDED" and j["exit_code"] == 0 for j in done), done
    seen = set()
    for job_id in ids:
        log = labq4.log(job_id)
        assert log.endswith("bye\n"), log
        seen.add(log.splitlines()[0])
    # Every job saw exactly one GPU, and all four GPUs were used.
    assert seen == {f"cvd={i}" for i in range(4)}


def test_failing_command_records_exit_code(labq4: Labq) -> None:
    job_id = labq4.submit("--", "sh", "-c", "echo oops >&2; exit 3")
    j = labq4.wait(job_id, DONE)
    assert j["state"] == "FAILED"
    assert j["exit_code"] == 3
    assert "oops" in labq4.log(job_id)


def test_command_not_found_fails_with_reason(labq4: Labq) -> None:
    job_id = labq4.submit("--", "/nonexistent/binary")
    j = labq4.wait(job_id, DONE)
    assert j["state"] == "FAILED"
    assert "cannot run" in j["reasons"][0]


def test_time_limit_is_enforced(labq4: Labq) -> None:
    job_id = labq4.submit("--time", "2s", "--grace", "1", "--", "sleep", "60")
    j = labq4.wait(job_id, DONE, timeout=30)
    assert j["state"] == "TIMEOUT"
    assert j["end_time"] - j["start_time"] < 10
    assert j["signal"] == signal.SIGTERM


def test_cancel_pending_job(labq4: Labq) -> None:
    blockers = [labq4.submit("--gpus", "4", "--", "sleep", "30")]
    waiting = labq4.submit("--gpus", "4", "--", "true")
    labq4.wait(blockers[0], ("RUNNING",))
    assert labq4.job(waiting)["state"] == "PENDING"
    out = labq4.run("cancel", str(waiting))
    assert "cancelled" in out.stdout
    j = labq4.job(waiting)
    assert j["state"] == "CANCELLED"
    assert j["start_time"] is None  # never ran
    labq4.run("cancel", *map(str, blockers))
    labq4.wait(blockers[0], DONE)


def test_cancel_running_job_sigterm_then_sigkill_after_grace(labq4: Labq) -> None:
    # The job ignores SIGTERM (it says so) and must be SIGKILLed after the 2 s grace.
    script = "trap 'echo got TERM' TERM; echo ready; while true; do sleep 0.1; done"
    job_id = labq4.submit("--grace", "2", "--", "sh", "-c", script)
    labq4.wait(job_id, ("RUNNING",))
    deadline = time.monotonic() + 10
    while "ready" not in labq4.log(job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    t0 = time.time()
    labq4.run("cancel", str(job_id))
    j = labq4.wait(job_id, DONE, timeout=30)
    assert j["state"] == "CANCELLED"
    assert j["signal"] == signal.SIGKILL
    assert j["end_time"] - t0 >= 1.9  # not before the grace ran out
    assert "got TERM" in labq4.log(job_id)


def test_cancel_running_job_that_exits_on_sigterm(labq4: Labq) -> None:
    job_id = labq4.submit("--grace", "20", "--", "sleep", "60")
    labq4.wait(job_id, ("RUNNING",))
    t0 = time.time()
    labq4.run("cancel", str(job_id))
    j = labq4.wait(job_id, DONE, timeout=30)
    assert j["state"] == "CANCELLED"
    assert j["signal"] == signal.SIGTERM
    assert j["end_time"] - t0 < 10  # did not wait for the grace


def test_cancel_finished_and_unknown_jobs_are_clear_errors(labq4: Labq) -> None:
    job_id = labq4.submit("--", "true")
    labq4.wait(job_id, DONE)
    out = labq4.run("cancel", str(job_id), check=False)
    assert out.returncode == 1
    assert out.stderr.strip() == f"labq: job {job_id} already ended (SUCCEEDED)"
    out = labq4.run("cancel", "99999", check=False)
    assert out.returncode == 1 and out.stderr.strip() == "labq: no job 99999"
    out = labq4.run("show", "99999", check=False)
    assert out.returncode == 1 and "no job 99999" in out.stderr


def test_job_yaml_file(labq4: Labq, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: from-yaml\ncommand: [sh, -c, 'echo $GREETING $CUDA_VISIBLE_DEVICES']\n"
        "gpus: 2\ntime: 10m\nenv:\n  GREETING: hello\npriority: 5\n"
    )
    job_id = labq4.submit(str(spec))
    j = labq4.wait(job_id, DONE)
    assert j["state"] == "SUCCEEDED" and j["name"] == "from-yaml"
    assert j["time_limit"] == 600 and j["priority"] == 5
    greeting, gpus = labq4.log(job_id).split()
    assert greeting == "hello" and len(gpus.split(",")) == 2


def test_job_runs_in_submit_directory_by_default(labq4: Labq, tmp_path) -> None:  # type: ignore[no-untyped-def]
    os.chmod(tmp_path, 0o755)
    (tmp_path / "data").mkdir()
    job_id = labq4.submit("--", "sh", "-c", 'pwd; echo "$LABQ_SUBMIT_DIR"; readlink data', cwd=str(tmp_path))
    labq4.wait(job_id, DONE)
    # It runs the code frozen at submit, in a copy of its own; the directory it was
    # submitted from is $LABQ_SUBMIT_DIR, and what the copy lacks is linked to it.
    ran_in, submit_dir, data = labq4.log(job_id).split()
    assert ran_in.startswith("/root/.cache/labq/code/") and submit_dir == str(tmp_path), (ran_in, submit_dir)
    assert data == str(tmp_path / "data")
    plain = labq4.submit("--no-snapshot", "--", "pwd", cwd=str(tmp_path))
    labq4.wait(plain, DONE)
    assert labq4.log(plain).strip() == str(tmp_path)


def test_a_job_starts_with_no_signal_blocked(labq4: Labq) -> None:
    """The Ray worker that forks the job blocks SIGINT; a blocked mask survives exec,
    and a job (or a session's ^C) must get every signal."""
    job_id = labq4.submit("--no-snapshot", "--", "grep", "SigBlk", "/proc/self/status")
    labq4.wait(job_id, DONE)
    assert labq4.log(job_id).split() == ["SigBlk:", "0000000000000000"]


def test_follow_logs_until_the_job_ends(labq4: Labq) -> None:
    job_id = labq4.submit("--", "sh", "-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.4; done")
    out = labq4.run("logs", "-f", str(job_id), timeout=60)
    assert out.stdout.splitlines() == [f"line {i}" for i in range(1, 6)]


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


def test_daemon_killed_and_restarted_keeps_jobs_running() -> None:
    lq = make_labq("grace_period_s: 2\n")
    try:
        lq.up("--gpus", "2")
        script = "echo start $LABQ_ATTEMPT; for i in $(seq 1 30); do echo tick $i; sleep 0.2; done; echo end"
        running = lq.submit("--", "sh", "-c", script)
        queued = lq.submit("--gpus", "2", "--", "sh", "-c", "echo second")
        lq.wait(running, ("RUNNING",))
        wait_for("its first lines", lambda: "tick 2" in lq.log(running))
        pid = lq.daemon_pid()
        os.kill(pid, signal.SIGKILL)
        wait_for("the daemon to be gone", lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid))
        out = lq.run("queue", check=False)
        assert out.returncode == 3 and "no labq daemon" in out.stderr
        lq.up()
        j = lq.job(running)
        assert j["state"] == "RUNNING", j  # re-adopted, not restarted
        done = lq.wait_all([running, queued], DONE, timeout=60)
        assert all(j["state"] == "SUCCEEDED" for j in done), done
        log = lq.log(running).splitlines()
        assert log[0] == "start 1" and log[-1] == "end"
        assert log.count("start 1") == 1 and len(log) == 32  # nothing lost, nothing twice
        assert [j["attempt"] for j in done] == [1, 1]
        assert lq.log(queued) == "second\n"
    finally:
        cleanup(lq)


def test_down_drain_waits_for_running_jobs_and_keeps_the_queue() -> None:
    lq = make_labq()
    try:
        lq.up("--gpus", "1")
        running = lq.submit("--", "sh", "-c", "sleep 3; echo finished")
        waiting = lq.submit("--", "sh", "-c", "echo later")
        lq.wait(running, ("RUNNING",))
        # Its empty log says why on stderr (it printed nothing at all; a newcomer).
        out = lq.run("logs", str(waiting))
        assert out.stdout == "" and out.stderr.strip() == (
            f"labq: job {waiting} has not started yet (PENDING): `labq logs -f {waiting}` waits for its output"
        )
        t0 = time.monotonic()
        out = lq.run("down", "--drain", "--timeout", "60")
        assert "labq daemon stopped" in out.stdout
        assert time.monotonic() - t0 >= 1.5  # it waited for the running job
        lq.up("--gpus", "1")
        assert lq.job(running)["state"] == "SUCCEEDED"
        assert lq.wait(waiting, DONE)["state"] == "SUCCEEDED"  # kept, and run after restart
        assert lq.log(waiting) == "later\n"
    finally:
        cleanup(lq)
