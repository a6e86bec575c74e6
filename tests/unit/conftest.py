"""Unit-test fixtures."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_subreaper_afterwards() -> Iterator[None]:
    """runner.run() makes its process a child subreaper (a Ray worker, in real life).
    Here that process is pytest: undo it, or every daemon a later test starts and
    leaves would become pytest's zombie instead of init's."""
    yield
    try:
        ctypes.CDLL("libc.so.6").prctl(36, 0)  # PR_SET_CHILD_SUBREAPER
    except OSError:
        pass


# The job-control harness (test_control.open_daemon) for every test that takes `d`: a real
# daemon composition on a fresh store with the in-memory launcher.
@pytest.fixture
def launcher() -> Any:
    from scheduler.launcher import MemoryLauncher

    return MemoryLauncher()


@pytest.fixture
def d(tmp_path: Path, launcher: Any) -> Iterator[Any]:
    from tests.unit.test_control import open_daemon

    daemon = open_daemon(tmp_path / "state", launcher)
    yield daemon
    daemon.store.close()
