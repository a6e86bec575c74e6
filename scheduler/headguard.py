"""On a node: kill a job whose head has stopped answering, whatever Ray does meanwhile.

A running job reports to the head's Executor every 0.25 s (`report`, through Ray).
When the node is cut off, that call can block for far longer than its own timeout
(measured: 3 minutes after a cable cut), and a job the head has already recorded as
lost would keep its GPUs, unaccounted. This guard watches from a thread of its own:
a report blocked for `timeout` plus a margin means the head is gone, and the job's
whole process tree is killed at once (the head requeues it; nothing reaches the log).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

MARGIN_S = 15.0


class HeadGuard:
    """Owns: when the current report started (None between reports); read by its thread."""

    def __init__(self, kill: Callable[[], None], timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.kill = kill
        self.limit = timeout + MARGIN_S
        self.clock = clock
        self.since: float | None = None
        self.fired = False
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="labq-headguard", daemon=True).start()

    def wrap(self, report: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(info: Any, offset: int, data: bytes, result: Any, err: Any) -> Any:
            self.since = self.clock()
            try:
                return report(info, offset, data, result, err)
            finally:
                self.since = None
                if result is not None:
                    self._done.set()  # the last report: the job is over

        return guarded

    def check(self) -> bool:
        """One look: kill if a report has been blocked too long. True if it fired."""
        since = self.since
        if not self.fired and since is not None and self.clock() - since > self.limit:
            self.fired = True
            self.kill()
        return self.fired

    def _watch(self) -> None:
        while not self._done.wait(1.0):
            self.check()

    def close(self) -> None:
        self._done.set()
