"""User mistakes get one clear line on stderr, a non-zero exit, and lose nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, SYSTEM_PYTHON, Labq, cleanup, make_labq, unix_user, wait_for

pytestmark = pytest.mark.integration


def refused(lq: Labq, *args: str, code: int = 1) -> str:
    out = lq.run(*args, check=False)
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # one line, no traceback
    assert "Traceback" not in out.stderr
    return lines[0]


def test_bad_submissions_are_refused_and_nothing_is_queued(labq4: Labq, tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = len(labq4.json("queue", "--all"))
    assert "gpus" in refused(labq4, "submit", "--gpus", "0", "--", "true")
    msg = refused(labq4, "submit", "--gpus", "9", "--", "true")
    assert "largest node has 4" in msg
    assert "no command" in refused(labq4, "submit", "--gpus", "1")
    assert "command is empty" in refused(labq4, "submit", "--", "")
    assert "workdir /no/such/dir does not exist" in refused(
        labq4, "submit", "--workdir", "/no/such/dir", "--", "true"
    )
    assert "not a duration" in refused(labq4, "submit", "--time", "soon", "--", "true")
    assert "KEY=VALUE" in refused(labq4, "submit", "--env", "NOEQUALS", "--", "true")
    # `--time 2 hours` was a 2-second limit running `hours -- true`; a bare number is
    # minutes to Slurm and seconds elsewhere: both are refused with the fix.
    assert "write --time 2h" in refused(labq4, "submit", "--time", "2", "hours", "--", "true")
    assert "90 what? give a unit: 90m" in refused(labq4, "submit", "--time", "90", "--", "true")
    assert "GiB" in refused(labq4, "submit", "--memory", "100T", "--", "true")
    gone = tmp_path / "gone"
    gone.mkdir()
    out = subprocess.run(
        f"cd {gone} && rmdir {gone} && exec {sys.executable} -m scheduler.cli submit -- true",
        shell=True, env=labq4.env(), capture_output=True, text=True,
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "directory no longer exists" in out.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("command: [python, train.py]\ngpus: 1\ngpu: 2\n")
    assert refused(labq4, "submit", str(bad)).startswith(f"labq: {bad} line 3: unknown field 'gpu'")
    bad.write_text("command: [python, train.py]\nname: x\ngpus: two\n")
    msg = refused(labq4, "submit", str(bad))
    assert msg.startswith(f"labq: {bad} line 3: gpus:"), msg
    bad.write_text("command: [python, train.py]\ntime: 90\n")
    assert "line 2: time: 90 what?" in refused(labq4, "submit", str(bad))
    bad.write_text("command: [python\n")
    assert "not valid YAML" in refused(labq4, "submit", str(bad))
    missing = tmp_path / "missing.yaml"
    assert "cannot read" in refused(labq4, "submit", str(missing))
    assert len(labq4.json("queue", "--all")) == before


def test_no_daemon_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ, LABQ_SOCKET=str(tmp_path / "none.sock"), PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "queue"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 3
    assert out.stderr.strip() == (
        f"labq: no labq daemon at {tmp_path / 'none.sock'}: start one with `labq up`"
    )
    # Found in the usual places (no LABQ_SOCKET): a daemon started with its own socket,
    # as `make demo`'s, is not there, and the hint says how to reach it (a newcomer
    # nearly started a second daemon on "start one with `labq up`").
    from scheduler.paths import ROOT_SOCKET

    if ROOT_SOCKET.exists():
        pytest.skip(f"{ROOT_SOCKET} exists: a client without LABQ_SOCKET would reach it")
    env = {k: v for k, v in env.items() if k != "LABQ_SOCKET"} | {"XDG_RUNTIME_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "scheduler.cli", "queue"], env=env, capture_output=True, text=True)
    assert out.returncode == 3 and out.stderr.strip() == (
        f"labq: no labq daemon at {tmp_path / 'labq' / 'labq.sock'}: start one with `labq up`"
        " (one started with LABQ_SOCKET set, as by `make demo`, needs the same LABQ_SOCKET here)"
    )


def test_second_daemon_on_same_state_dir_is_refused(labq4: Labq) -> None:
    # Same state dir, another socket: the state-dir lock must refuse it.
    env_sock = labq4.root / "other.sock"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scheduler.cli",
            "--socket",
            str(env_sock),
            "up",
            "--state-dir",
            str(labq4.state_dir),
            "--timeout",
            "60",
        ],
        env=labq4.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "already runs on" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    # And the same socket: `labq up` sees the running daemon.
    assert "already runs" in refused(labq4, "up")
    # The first daemon is unharmed.
    assert labq4.json("queue") is not None


def test_a_job_held_by_backfill_is_told_the_time_limit_that_lets_it_start(labq4: Labq) -> None:
    """Two 1-GPU jobs without --time waited with 2 of 4 GPUs free while `show` said
    `estimated start: <now>`: the 24 h default never fits before the reservation."""
    c = labq4.client()
    running = labq4.submit("--gpus", "2", "--time", "20m", "--", "sleep", "600")
    labq4.wait(running, ("RUNNING",))
    big = labq4.submit("--gpus", "4", "--time", "5m", "--", "true")  # reserved at `running`'s end
    small = labq4.submit("--gpus", "1", "--", "sleep", "600")
    try:
        wait_for("the small job's reason", lambda: any(r["kind"] == "backfill" for r in c.job(small)["why"]), 30)
        show = labq4.run("show", str(small)).stdout
        assert re.search(r"time limit +the default \(1d00h\)", show), show  # and what it is here
        hint = next(line.strip() for line in show.splitlines() if line.strip().startswith("hint"))
        assert re.search(r"would start now with `--time (19|20)m` or less", hint), hint
        # the reserved job (4 GPUs, 5m) starts in ~20m: this one after it, at a clock time
        waiting = next(line for line in show.splitlines() if "estimated start" in line)
        assert re.search(r"estimated start:? (\d{4}-\d\d-\d\d )?\d\d:\d\d", waiting), waiting
        queue = {j["id"]: j for j in labq4.json("queue")}
        assert queue[small]["state"] == "PENDING"
        table = labq4.run("queue").stdout
        row = next(line for line in table.splitlines() if line.lstrip().startswith(str(small)))
        assert " now " not in row, row
        dry = labq4.run("submit", "--dry-run", "--gpus", "1", "--", "true").stdout
        assert dry.startswith("would wait") and "--time 1" in dry, dry
        assert labq4.run("submit", "--dry-run", "--gpus", "1", "--time", "5m", "--", "true").stdout.startswith(
            "would start now on "
        )
    finally:
        for job_id in (small, big, running):
            c.cancel(job_id, now=True)
        c.close()


def test_down_refuses_while_jobs_run(labq4: Labq) -> None:
    job_id = labq4.submit("--", "sleep", "30")
    labq4.wait(job_id, ("RUNNING",))
    msg = refused(labq4, "down")
    assert "still running" in msg and "--drain" in msg and "--kill" in msg
    labq4.run("cancel", str(job_id))
    labq4.wait(job_id, ("CANCELLED",))


def test_client_never_imports_heavy_modules(labq4: Labq) -> None:
    code = (
        "import sys\n"
        "from scheduler.cli import main\n"
        "rc = main(['submit', '--json', '--', 'true'])\n"
        "rc2 = main(['queue'])\n"
        "heavy = sorted(m for m in ('ray', 'textual', 'pydantic', 'psutil', 'pynvml', 'yaml') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=labq4.env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a second Unix user")
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs a system python3 other users can run")
def test_other_user_cannot_cancel_but_admin_can(labq4: Labq) -> None:
    alice = unix_user("labqtest-alice")
    bob = unix_user("labqtest-bob")
    job_id = labq4.submit("--", "sh", "-c", "id -un; sleep 30", user=alice, cwd="/tmp")
    j = labq4.wait(job_id, ("RUNNING",))
    assert j["user"] == "labqtest-alice"
    out = labq4.run("cancel", str(job_id), check=False, user=bob)
    assert out.returncode == 1
    assert "belongs to labqtest-alice" in out.stderr
    assert labq4.job(job_id)["state"] == "RUNNING"
    # Reads stay open to everyone; logs belong to their owner.
    assert any(q["id"] == job_id for q in json.loads(labq4.run("queue", "--json", user=bob).stdout))
    assert labq4.run("logs", str(job_id), check=False, user=bob).returncode == 1
    # The job runs as alice, not as root. (RUNNING comes before its first output does.)
    wait_for("the job's first line", lambda: labq4.log(job_id).strip(), 30)
    assert labq4.log(job_id).splitlines()[0] == "labqtest-alice"
    labq4.run("cancel", str(job_id))  # root is an admin
    assert labq4.wait(job_id, ("CANCELLED",))["state"] == "CANCELLED"


def test_unreachable_ray_is_a_clear_error() -> None:
    from tests.conftest import cleanup, make_labq

    lq = make_labq()
    try:
        out = lq.run("up", "--address", "127.0.0.1:1", "--state-dir", str(lq.state_dir), check=False)
        assert out.returncode == 1
        assert out.stderr.strip() == (
            "labq: cannot reach Ray at 127.0.0.1:1: nothing answers there (is the head running?)"
        )
    finally:
        cleanup(lq)


def test_a_job_flooding_stdout_keeps_a_bounded_log_and_the_daemon_stays_small() -> None:
    lq = make_labq("log_max_bytes: 1048576\nmin_runtime_s: 0\n")
    try:
        lq.up("--gpus", "1")
        rss_before = psutil.Process(lq.daemon_pid()).memory_info().rss
        # ~2 GB of output as fast as the node can produce it.
        flood = lq.submit(
            "--gpus",
            "1",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero bs=1M count=2000 status=none; echo end",
            cwd="/tmp",
        )
        job = lq.wait(flood, ("SUCCEEDED", "FAILED"), timeout=240)
        assert job["state"] == "SUCCEEDED", job
        size = (lq.state_dir / "logs" / f"{flood}.log").stat().st_size
        assert 1_000_000 < size <= 1048576
        assert lq.log(flood).endswith("labq: output beyond this point was discarded (log limit reached)\n")
        notes = [e["reason"] for e in job["events"]]
        assert any("log limit reached" in n and "bytes of output discarded" in n for n in notes), notes
        rss_after = psutil.Process(lq.daemon_pid()).memory_info().rss
        assert rss_after - rss_before < 200 * 1024 * 1024, (rss_before, rss_after)
        # Nothing spooled on the node either.
        spool = list(Path(f"/tmp/labq-jobs-{os.getuid()}").rglob("*.log"))
        assert all(p.stat().st_size < 1 << 20 for p in spool), spool
    finally:
        cleanup(lq)


def test_out_of_range_numbers_in_a_request_get_a_refusal_not_a_500(labq4: Labq) -> None:
    """Found by a red-team pass: a 30-digit log offset was a 500 (seek overflow), a
    2**62 one closed the connection without an answer, a 23-digit job id was a 500
    (SQLite overflow), and `/v1/jobs/٣` was job 3."""
    from scheduler.client import ClientError

    c = labq4.client()
    job = labq4.submit("--", "echo", "hello")
    labq4.wait(job, ("SUCCEEDED",))

    def status(path: str, **query: object) -> tuple[int, str]:
        try:
            c.request("GET", path, **query)
        except ClientError as e:
            assert "\n" not in str(e) and "Traceback" not in str(e)
            return e.status, str(e)
        return 200, ""

    log = f"/v1/jobs/{job}/log"
    assert status(log, offset="9" * 30)[0] == 400
    assert status(log, offset=2**62)[0] == 400  # was: no answer at all
    assert c.request("GET", log, offset=10**15)["data"] == ""  # past the end: nothing, and an answer
    for bad in ({"tail": -5}, {"before": 5}, {"limit": -1}, {"tail": "1_0"}, {"tail": " 10"}):
        code, msg = status(log, **bad)
        assert code == 400, (bad, code, msg)
    assert status("/v1/jobs/" + "9" * 23) == (404, "no job " + "9" * 23)
    assert status("/v1/jobs/٣")[0] == 404  # not job 3
    out = labq4.run("show", "9" * 23, check=False)
    assert out.returncode == 1 and out.stderr.strip() == f"labq: no job {'9' * 23}", out.stderr
