"""The one presentation layer (CLI and UI): what a researcher reads about times and commands."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from scheduler.present import backfill_hint, clock, eta_text, job_lines, preview_lines


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


NOW = 1_795_000_000.0  # 2026-11-18 11:06:40 UTC


def test_times_are_never_now_and_carry_the_date_when_not_today() -> None:
    assert eta_text(NOW, NOW) == "?"  # a job that is not starting is never "now"
    assert eta_text(NOW - 5, NOW) == "?"
    assert eta_text(NOW + 600, NOW) == "11:16"
    assert eta_text(NOW + 86_400, NOW) == "11-19 11:06"
    assert clock(NOW - 3 * 86_400, NOW) == "11-15 11:06"


BACKFILL = {"kind": "backfill", "text": "backfill: would delay job 2", "data": {"delays_job": 2, "reserved_in_s": 1199.0}}


def test_a_job_held_by_backfill_is_told_which_time_limit_lets_it_start() -> None:
    assert backfill_hint([BACKFILL], None).startswith("would start now with `--time 19m` or less")
    assert backfill_hint([BACKFILL], 3600) == ""  # its own limit: the user chose it
    soon = {**BACKFILL, "data": {"reserved_in_s": 30.0}}
    assert backfill_hint([soon], None) == ""  # under a minute: no useful limit to offer


def job(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": 7, "name": "train.py", "user": "ana", "state": "PENDING", "gpus": 1, "time_limit": None,
        "spec": {"command": ["python", "-c", "print('a b'); import os", "--tag", "x y"]},
        "submit_time": NOW - 60, "eta": NOW + 1500,
        "reasons": ["backfill: would delay job 2"], "why": [BACKFILL],
    }
    return {**base, **kw}


def test_show_keeps_the_commands_quoting_and_says_the_limit_is_the_default() -> None:
    lines = {ln.label: ln.text for ln in job_lines(job(), NOW)}
    assert lines["command"] == "python -c 'print('\"'\"'a b'\"'\"'); import os' --tag 'x y'"
    assert "time limit the default" in lines["resources"]
    assert lines["waiting"] == "estimated start 2026-11-18 11:31:40"
    assert lines["hint"].startswith("would start now with `--time 19m`")
    assert "hint" not in {ln.label for ln in job_lines(job(time_limit=3600.0), NOW)}
    told = {ln.label: ln.text for ln in job_lines(job(default_time_limit=86400.0), NOW)}
    assert "time limit the default (1d00h)" in told["resources"]  # the daemon says what its default is


def test_the_preview_says_start_now_only_when_it_would_start() -> None:
    assert [ln.text for ln in preview_lines({"starts_now": True, "node": "gpu-1"}, NOW)] == ["would start now on gpu-1"]
    out = preview_lines(
        {"starts_now": False, "eta": NOW, "reasons": ["backfill: would delay job 2"], "why": [BACKFILL]}, NOW
    )
    assert out[0].text == "would wait:"  # an eta of now is no estimate
    assert out[-1].label == "hint"


def test_an_eta_resting_on_learned_runtimes_is_marked_as_such() -> None:
    from scheduler.present import eta_cell

    lines = {ln.label: ln.text for ln in job_lines(job(eta_predicted=True, time_limit=3600.0), NOW)}
    assert lines["waiting"] == "estimated start 2026-11-18 11:31:40 (predicted from similar runs; limit 1h00m)"
    plain = {ln.label: ln.text for ln in job_lines(job(), NOW)}
    assert "predicted" not in plain["waiting"]
    row = job(eta_predicted=True)
    assert eta_cell(row, NOW) == "~" + eta_text(row["eta"], NOW)
    assert eta_cell({**row, "eta": NOW - 5}, NOW) == "?"  # past: unknown, never "~?"
