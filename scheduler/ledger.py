"""The usage ledger the fair-share factor is computed from: who held how many GPUs when.

Written by the event pump (an attempt ended) and read by the scheduler loop (every
pass) and the API (`labq quota show` reads the pass's result, not this): the lock is
what keeps a run that ends during a pass from dropping out of usage until a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from scheduler.quota import WEEK_S, Interval, usage_by_user
from scheduler.store import JobRow, Store


class UsageLedger:
    def __init__(self, store: Store, half_life_s: float) -> None:
        self.store = store
        self.half_life_s = half_life_s
        self._lock = threading.Lock()
        self._finished: list[Interval] | None = None  # loaded on first use, end-ordered

    @property
    def horizon(self) -> float:
        return max(WEEK_S, 8 * self.half_life_s)

    def _load(self, now: float) -> list[Interval]:
        return sorted(
            (
                Interval(r["user"], r["gpus"], r["start_time"], r["end_time"])
                for r in self.store.runs_since(now - self.horizon)
                if r["end_time"] is not None
            ),
            key=lambda iv: iv.end,
        )

    def ended(self, user: str, gpus: int, start: float, end: float) -> None:
        """An attempt that held GPUs ended (its run is in the store already)."""
        with self._lock:
            if self._finished is not None:
                self._finished.append(Interval(user, gpus, start, end))

    def usage(self, now: float, active: Iterable[JobRow]) -> tuple[dict[str, float], dict[str, float]]:
        """(decayed GPU-seconds, GPU-seconds of the last week) per user."""
        with self._lock:
            if self._finished is None:
                self._finished = self._load(now)
            # Runs that ended before the horizon no longer weigh anything: drop them so
            # the per-pass sum does not grow with the daemon's age.
            cutoff = now - self.horizon
            if self._finished and self._finished[0].end < cutoff:
                self._finished = [r for r in self._finished if r.end >= cutoff]
            finished = list(self._finished)
        running = [Interval(j.user, j.gpus, j.start_time or now, now) for j in active if j.start_time]
        return usage_by_user([*finished, *running], now, self.half_life_s)
