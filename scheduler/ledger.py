"""The usage ledger the fair-share factor is computed from: who held how many GPUs when.

Written by the event pump (an attempt ended) and read by the scheduler loop (every
pass) and the API (`labq quota show` reads the pass's result, not this): the lock is
what keeps a run that ends during a pass from dropping out of usage until a restart.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

from scheduler.quota import WEEK_S, Interval, usage_by_user
from scheduler.store import JobRow, Store

# The sums over finished runs are carried from pass to pass (see `usage`) and redone
# from the runs this often: the 7-day window slides, which no carried sum can follow.
REFRESH_S = 30.0


class UsageLedger:
    def __init__(self, store: Store, half_life_s: float) -> None:
        self.store = store
        self.half_life_s = half_life_s
        self._lock = threading.Lock()
        self._finished: list[Interval] | None = None  # loaded on first use, end-ordered
        # (decayed, week) per user over the finished runs, as of `_sums_at`; runs ended
        # since then wait in `_new`.
        self._sums: tuple[dict[str, float], dict[str, float]] | None = None
        self._sums_at = 0.0
        self._new: list[Interval] = []

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
                self._new.append(Interval(user, gpus, start, end))

    def usage(self, now: float, active: Iterable[JobRow]) -> tuple[dict[str, float], dict[str, float]]:
        """(decayed GPU-seconds, GPU-seconds of the last week) per user.

        Every pass asks, and a busy week has thousands of finished runs: summing them all
        each time made a pass grow with the week's history (an array of 1,000 short
        tasks slowed its own drain). A finished run's decayed weight only shrinks by
        the same factor for everyone, so the sums are carried and scaled, the runs ended
        since are added, and everything is summed afresh every REFRESH_S (when the week
        window has slid a little: at most REFRESH_S GPU-seconds per run at its edge)."""
        with self._lock:
            if self._finished is None:
                self._finished = self._load(now)
                self._sums, self._new = None, []
            # Runs that ended before the horizon no longer weigh anything: drop them so
            # the per-pass sum does not grow with the daemon's age.
            cutoff = now - self.horizon
            if self._finished and self._finished[0].end < cutoff:
                self._finished = [r for r in self._finished if r.end >= cutoff]
                self._sums = None
            if self._sums is None or now < self._sums_at or now - self._sums_at > REFRESH_S:
                decayed, week = usage_by_user(self._finished, now, self.half_life_s)
            else:
                scale = math.exp(-math.log(2) / self.half_life_s * (now - self._sums_at))
                decayed = {u: v * scale for u, v in self._sums[0].items()}
                week = dict(self._sums[1])
                _add(decayed, week, usage_by_user(self._new, now, self.half_life_s))
            self._new = []
            self._sums, self._sums_at = (decayed, week), now
            decayed, week = dict(decayed), dict(week)
        running = [Interval(j.user, j.gpus, j.start_time or now, now) for j in active if j.start_time]
        _add(decayed, week, usage_by_user(running, now, self.half_life_s))
        return decayed, week


def _add(decayed: dict[str, float], week: dict[str, float], more: tuple[dict[str, float], dict[str, float]]) -> None:
    for u, v in more[0].items():
        decayed[u] = decayed.get(u, 0.0) + v
    for u, v in more[1].items():
        week[u] = week.get(u, 0.0) + v
