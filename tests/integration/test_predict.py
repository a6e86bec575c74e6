"""Learned runtimes on a real daemon (issue 19): a job without --time whose kind has
run before, briefly and consistently, starts in a backfill hole that its 24 h default
could never fill; one of a kind never seen waits; `labq usage --predictions` says why."""

from __future__ import annotations

import pytest

from tests.conftest import Labq, wait_for

pytestmark = pytest.mark.integration


def test_a_job_without_a_limit_backfills_the_hole_its_prediction_fits(labq4: Labq) -> None:
    # Three runs of the kind "probe", about a second each.
    probes = [labq4.submit("--name", "probe", "--", "sleep", "1") for _ in range(3)]
    labq4.wait_all(probes, ("SUCCEEDED",), timeout=90)
    # Two of the four GPUs are held for two minutes; a 4-GPU job is reserved after them.
    held = labq4.submit("--gpus", "2", "--time", "2m", "--", "sleep", "120")
    labq4.wait(held, ("RUNNING",), timeout=60)
    big = labq4.submit("--gpus", "4", "--", "true")
    unknown = labq4.submit("--gpus", "2", "--name", "never-seen", "--", "sleep", "1")
    probe = labq4.submit("--gpus", "2", "--name", "probe", "--", "sleep", "1")
    try:
        j = labq4.wait(probe, ("SUCCEEDED",), timeout=60)
        assert labq4.job(big)["state"] == "PENDING"  # its reservation held
        assert j["start_time"] < labq4.job(held)["start_time"] + 120
        # A kind never seen is taken to run its 24 h default: it would delay the big job.
        waiting = labq4.job(unknown)
        assert waiting["state"] == "PENDING" and waiting["reasons"][0].startswith(f"backfill: would delay job {big}")
        out = labq4.run("usage", "--predictions").stdout
        assert "ran within the 90th percentile" in out
        row = next(line for line in out.splitlines() if "name:probe" in line)
        assert row.split()[-1] == "yes" and int(row.split()[2]) >= 3, out
    finally:
        for i in (held, big, unknown):
            labq4.run("cancel", "--now", str(i), check=False)
        wait_for("the jobs gone", lambda: all(labq4.job(i)["state"] != "RUNNING" for i in (held, big, unknown)), 60)
