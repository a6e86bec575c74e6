"""Unit-test fixtures."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

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
