"""How researchers work (issue 16), on a real daemon and real Ray: chains (--after /
--after-any), `labq wait`, `labq logs --tail`."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import Labq, unix_user

pytestmark = pytest.mark.integration


def test_a_three_stage_chain_with_a_failing_middle(labq4: Labq) -> None:
    """preprocess -> train (fails) -> eval: eval is cancelled saying why, never runs;
    a cleanup chained with --after-any runs anyway; `labq wait` says so in its status."""
    marker = labq4.root / "eval-ran"
    pre = labq4.submit("--name", "pre", "--", "sh", "-c", "sleep 1")
    train = labq4.submit("--name", "train", "--after", str(pre), "--", "sh", "-c", "exit 3")
    ev = labq4.submit("--name", "eval", "--after", str(train), "--", "touch", str(marker))
    cleanup = labq4.submit("--name", "cleanup", "--after-any", f"{train},{pre}", "--", "true")
    show = labq4.run("show", str(ev)).stdout
    assert f"after:     {train} (must succeed)" in show
    queue = labq4.run("queue").stdout
    row = next(line for line in queue.splitlines() if line.lstrip().startswith(f"{train} "))
    assert f"dependency: waits for job {pre}" in row, row

    t0 = time.monotonic()
    out = labq4.run("wait", str(pre), str(train), str(ev), str(cleanup), check=False, timeout=120)
    assert out.returncode == 1, out  # not all succeeded
    lines = out.stdout.splitlines()  # each as it ends
    assert sorted(lines) == sorted(
        [f"job {pre} SUCCEEDED", f"job {train} FAILED (exit code 3)", f"job {ev} CANCELLED", f"job {cleanup} SUCCEEDED"]
    ), out.stdout
    assert lines.index(f"job {pre} SUCCEEDED") < lines.index(f"job {train} FAILED (exit code 3)")
    assert time.monotonic() - t0 < 60
    j = labq4.job(ev)
    assert j["reasons"][0] == f"dependency {train} FAILED: --after needs it to succeed"
    assert j["start_time"] is None and not marker.exists()
    assert labq4.run("wait", str(pre), str(cleanup)).returncode == 0
    assert labq4.run("wait", "-q", str(ev), check=False).stdout == ""


def test_wait_times_out_with_124_and_dependencies_are_checked_at_submit(labq4: Labq) -> None:
    long = labq4.submit("--", "sleep", "300")
    try:
        t0 = time.monotonic()
        out = labq4.run("wait", str(long), "--timeout", "2s", check=False)
        assert out.returncode == 124 and time.monotonic() - t0 < 10
        assert out.stderr.strip() == f"labq: still waiting for job {long} after 2s"
        for args, msg in (
            (("--after", "999999"), "--after 999999: there is no job 999999"),
            (("--after", "12,x"), "--after: 'x' is not a job id (give ids like 41,42)"),
        ):
            r = labq4.run("submit", *args, "--", "true", check=False)
            assert r.returncode == 1 and r.stderr.strip().splitlines() == [f"labq: {msg}"], r.stderr
        bob = unix_user("labqtest-bob")
        r = labq4.run("submit", "--after", str(long), "--", "true", user=bob, check=False, cwd="/tmp")
        assert r.returncode == 1 and "belongs to" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        r = labq4.run("wait", "999999", check=False)
        assert r.returncode == 1 and r.stderr.strip() == "labq: no job 999999"
    finally:
        labq4.run("cancel", "--now", str(long), check=False)


def test_logs_tail_prints_the_last_lines_of_a_big_log(labq4: Labq) -> None:
    job = labq4.submit("--", "python3", "-c", "for i in range(200000): print(f'line {i}')")
    assert labq4.run("wait", str(job)).returncode == 0
    assert labq4.run("logs", str(job), "--tail", "3").stdout == "line 199997\nline 199998\nline 199999\n"
    assert labq4.run("logs", str(job), "-n", "0").stdout == ""
    many = labq4.run("logs", str(job), "--tail", "5000").stdout.splitlines()
    assert len(many) == 5000 and many[0] == "line 195000"
    r = labq4.run("logs", str(job), "--tail", "-1", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "labq: --tail takes a number of lines, 0 or more"


def test_rerun_repeats_a_job_with_changes_and_only_for_its_owner(labq4: Labq) -> None:
    first = labq4.submit("--name", "orig", "--env", "LR=3e-4", "--time", "5m", "--", "sh", "-c", "echo lr=$LR")
    assert labq4.run("wait", str(first)).returncode == 0
    out = labq4.run("rerun", str(first), "--gpus", "2", "--env", "EXTRA=1", "--json")
    again = int(json.loads(out.stdout)["id"])
    assert json.loads(out.stdout)["rerun_of"] == first
    assert labq4.run("wait", str(again)).returncode == 0
    a, b = labq4.job(first)["spec"], labq4.job(again)["spec"]
    assert b["command"] == a["command"] and b["workdir"] == a["workdir"] and b["time"] == a["time"]
    assert b["gpus"] == 2 and b["name"] == "orig" and b["env"]["LR"] == "3e-4" and b["env"]["EXTRA"] == "1"
    assert labq4.run("logs", str(again)).stdout == "lr=3e-4\n"
    assert labq4.run("rerun", str(first), "--dry-run").stdout.startswith("would start now on ")
    bob = unix_user("labqtest-bob")
    r = labq4.run("rerun", str(first), user=bob, check=False, cwd="/tmp")
    assert r.returncode == 1 and r.stderr.strip() == f"labq: job {first} belongs to root: you can rerun only your own jobs"
