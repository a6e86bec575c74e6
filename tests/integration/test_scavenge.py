"""Scavengers on a real daemon (issue 19, part 3): a --preemptible job runs on idle
GPUs, yields them (SIGTERM, requeued) the moment another job needs them, and starts
again when they are idle; a researcher over their weekly budget waits, unless the
quota says `scavenge`, and then runs as a scavenger."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Labq, unix_user, wait_for

pytestmark = pytest.mark.integration


def test_a_scavenger_yields_to_any_job_and_comes_back(labq4: Labq) -> None:
    alice = unix_user("labqtest-alice")
    bob = unix_user("labqtest-bob")
    # bob's scavenger takes all 4 idle GPUs; it notes the SIGTERM it gets when it must yield.
    scav = labq4.submit(
        "--gpus", "4", "--preemptible", "--", "sh", "-c", "trap 'echo yielded; exit 143' TERM; sleep 600 & wait",
        user=bob, cwd="/tmp",
    )  # fmt: skip
    labq4.wait(scav, ("RUNNING",), timeout=60)
    row = next(j for j in labq4.json("queue") if j["id"] == scav)
    assert row.get("preemptible") is True
    assert "[preemptible]" in labq4.run("queue").stdout
    # alice has no guarantee and less usage than nobody: still, her 2-GPU job takes them.
    mine = labq4.submit("--gpus", "2", "--", "sleep", "5", user=alice, cwd="/tmp")
    try:
        labq4.wait(mine, ("RUNNING",), timeout=90)
        j = labq4.wait(scav, ("PENDING",), timeout=60)
        assert j.get("requeued") is True
        events = " | ".join(e["reason"] for e in labq4.job(scav).get("events", []))
        assert f"a preemptible job yields its GPUs to labqtest-alice's job {mine}" in events, events
        # While alice runs, the scavenger waits, and says why.
        assert "only idle GPUs" in labq4.job(scav)["reasons"][0]
        # Once her job is done the GPUs are idle again: it comes back by itself.
        labq4.wait(mine, ("SUCCEEDED",), timeout=60)
        labq4.wait(scav, ("RUNNING",), timeout=60)
        # Rerun as a regular job: --no-preemptible undoes what the rerun would keep.
        again = json.loads(labq4.run("rerun", str(scav), "--no-preemptible", "--json", user=bob, cwd="/tmp").stdout)
        assert labq4.job(again["id"]).get("preemptible") is not True
        labq4.run("cancel", "--now", str(again["id"]), check=False)
    finally:
        labq4.run("cancel", "--now", str(scav), check=False)
        wait_for("the scavenger gone", lambda: labq4.job(scav)["state"] not in ("RUNNING", "STARTING"), 60)


def test_over_budget_jobs_wait_unless_the_quota_says_scavenge(labq4: Labq) -> None:
    carol = unix_user("labqtest-carol")
    labq4.run("quota", "set", "labqtest-carol", "--gpu-hours-per-week", "0")
    job = labq4.submit("--gpus", "1", "--", "sleep", "30", user=carol, cwd="/tmp")
    try:
        labq4.passes(2)
        j = labq4.job(job)
        assert j["state"] == "PENDING" and j["reasons"][0].startswith("budget:"), j["reasons"]
        out = labq4.run("quota", "set", "labqtest-carol", "--scavenge", "yes").stdout
        assert "scavenge: False -> True" in out
        labq4.wait(job, ("RUNNING",), timeout=60)
        j = labq4.job(job)
        assert j.get("preemptible") is True
        assert any("as a scavenger" in e["reason"] for e in j.get("events", [])), j.get("events")
        assert "scavenge" in labq4.run("quota", "show").stdout
    finally:
        labq4.run("cancel", "--now", str(job), check=False)
        labq4.run("quota", "set", "labqtest-carol", "--gpu-hours-per-week", "none", "--scavenge", "no")
