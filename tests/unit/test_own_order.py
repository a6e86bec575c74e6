"""A researcher's own queue on a real daemon (MemoryLauncher, real SQLite): shortest
expected run first with config shortest_first, oldest first without (the default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.launcher import MemoryLauncher
from scheduler.shapes import JobState
from tests.unit.test_control import ALICE, BOB, open_daemon, pump, submit_and_start


@pytest.mark.parametrize("shortest_first", [True, False])
def test_the_shorter_of_a_researchers_jobs_gets_the_gpus_first_unless_turned_off(
    tmp_path: Path, shortest_first: bool
) -> None:
    launcher = MemoryLauncher()
    d = open_daemon(tmp_path / "s", launcher, shortest_first=shortest_first)
    hog = submit_and_start(d, launcher, BOB, gpus=4)
    long = d.control.submit(ALICE, {"command": ["train"], "gpus": 4, "workdir": "/tmp", "time": "10h"})
    short = d.control.submit(ALICE, {"command": ["eval"], "gpus": 4, "workdir": "/tmp", "time": "1h"})
    d.scheduler.one_pass()
    first, second = (short, long) if shortest_first else (long, short)
    assert list(d.scheduler.decision.order) == [first, second]
    launcher.finish(hog, 1, "succeeded", at=200.0)
    pump(d, launcher)
    d.scheduler.one_pass()
    assert d.store.get(first).state is JobState.STARTING
    assert d.store.get(second).state is JobState.PENDING
