"""What the job-control core needs from whatever runs jobs, and an in-memory one.

`Launcher` is the whole contract: `launch` (idempotent per job attempt), `stop`,
`poll(ack)` (a cursor over events: started, log, finished; everything up to `ack` is
forgotten because the daemon has stored it), `known` (the attempts it still knows,
for reconciling after a restart) and `ping`. `executor.RayLauncher` is the real one,
a detached Ray actor that owns one Ray task per attempt. `MemoryLauncher` keeps the
same event semantics in a dict and runs nothing: tests drive its jobs by hand, so
the core's requeue, idempotency, re-adoption and accounting logic are checked in
milliseconds, without Ray.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.runner import Launch

Event = dict[str, Any]


# Why typing into a session was refused (Launcher.tty).
TTY_GONE = "gone"  # the session is not running there (ended, or not yet)
TTY_FULL = "full"  # it has not read what was typed before: the new input is dropped


class LauncherDown(Exception):
    """The launcher does not answer (its Ray cluster is gone)."""


def key_of(job_id: int, attempt: int) -> str:
    return f"{job_id}.{attempt}"


class Launcher(Protocol):
    def launch(
        self, job_id: int, attempt: int, launch: Launch, node_id: str, resources: Mapping[str, float]
    ) -> None: ...

    def launch_gang(
        self, job_id: int, attempt: int, ranks: Sequence[tuple[Launch, str, Mapping[str, float]]], grace: float
    ) -> None:
        """A job over several nodes (gang.py): rank r's Launch, node and resources at
        `ranks[r]`; idempotent per attempt like `launch`. Its events are the job's:
        `started` once every rank has (with `ranks`), `log` with a `rank`, one `finished`."""
        ...

    def stop(self, job_id: int, attempt: int, outcome: str, reason: str, grace: float) -> None: ...

    def unplace(self, job_id: int, attempt: int, reason: str) -> None:
        """A gang whose ranks have not all met ends unplaced (`finished` with `unplaced`:
        back to the queue, no retry spent); nothing if it met, ended or is not known.
        Met or not is decided where the ranks meet, so a gang meeting meanwhile is not
        stopped as if it had not (a stop would end it lost, blaming rank 0's node)."""
        ...

    def tty(self, job_id: int, attempt: int, data: bytes, winsize: list[int] | None, notice: str = "") -> str:
        """Type into a session's terminal (`notice`: a line labq shows on it): "" when
        taken, TTY_GONE if it is not running there, TTY_FULL if what was typed before
        still waits unread (the input is dropped)."""
        ...

    def poll(self, ack: int, timeout: float) -> list[tuple[int, Event]]:
        """Events after `ack`, waiting up to `timeout` for one; raises LauncherDown."""
        ...

    def known(self) -> dict[str, dict[str, Any]]: ...

    def ping(self) -> dict[str, Any]: ...


@dataclass
class MemoryJob:
    job_id: int
    attempt: int
    launch: Launch
    node: str
    resources: Mapping[str, float]
    stop: dict[str, Any] | None = None
    started: bool = False
    finished: bool = False
    seen: float | None = None  # when its node last reported (the node watch reads it)
    typed: list[tuple[bytes, list[int] | None, str]] = field(default_factory=list)  # into a session
    ranks: list[tuple[Launch, str, dict[str, float]]] = field(default_factory=list)  # a gang's


@dataclass
class MemoryLauncher:
    """The Executor's bookkeeping without Ray: jobs advance only when a test says so."""

    id: str = "memory0"
    jobs: dict[str, MemoryJob] = field(default_factory=dict)
    events: list[tuple[int, Event]] = field(default_factory=list)
    seq: int = 0
    acked: int = 0
    launches: list[str] = field(default_factory=list)  # every launch call, repeats included
    down: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)

    # -- the Launcher protocol ----------------------------------------------------------------
    def launch(
        self, job_id: int, attempt: int, launch: Launch, node_id: str, resources: Mapping[str, float]
    ) -> None:
        key = key_of(job_id, attempt)
        with self._cond:
            self.launches.append(key)
            if key not in self.jobs:  # a repeated launch of an attempt changes nothing
                self.jobs[key] = MemoryJob(job_id, attempt, launch, node_id, dict(resources))

    def launch_gang(
        self, job_id: int, attempt: int, ranks: Sequence[tuple[Launch, str, Mapping[str, float]]], grace: float
    ) -> None:
        key = key_of(job_id, attempt)
        with self._cond:
            self.launches.append(key)
            if key not in self.jobs:
                launch, node, res = ranks[0]
                job = MemoryJob(job_id, attempt, launch, node, dict(res))
                job.ranks = [(la, n, dict(r)) for la, n, r in ranks]
                self.jobs[key] = job

    def stop(self, job_id: int, attempt: int, outcome: str, reason: str, grace: float) -> None:
        with self._cond:
            job = self.jobs.get(key_of(job_id, attempt))
            if job is None or job.finished:
                return
            if job.stop is None:
                job.stop = {"outcome": outcome, "reason": reason, "grace": grace}
            elif grace < job.stop["grace"]:
                job.stop = {**job.stop, "grace": grace}

    def unplace(self, job_id: int, attempt: int, reason: str) -> None:
        with self._cond:
            job = self.jobs.get(key_of(job_id, attempt))
            # A gang here has met once a test says it started.
            if job is None or job.finished or not job.ranks or job.started:
                return
            self.finish(job_id, attempt, "lost", exit_code=None, reason=reason, unplaced=True)

    def tty(self, job_id: int, attempt: int, data: bytes, winsize: list[int] | None, notice: str = "") -> str:
        with self._cond:
            job = self.jobs.get(key_of(job_id, attempt))
            if job is None or job.finished:
                return TTY_GONE
            job.typed.append((data, winsize, notice))
            return ""

    def poll(self, ack: int, timeout: float) -> list[tuple[int, Event]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            if self.down:
                raise LauncherDown("the memory launcher is down")
            if ack > self.acked:
                self.acked = ack
                self.events = [(s, e) for s, e in self.events if s > ack]
                pending = {key_of(e["job_id"], e["attempt"]) for _, e in self.events}
                for k in [k for k, j in self.jobs.items() if j.finished and k not in pending]:
                    del self.jobs[k]
            while not self.events and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            return list(self.events)

    def known(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {
                k: {"started": j.started, "finished": j.finished, "node": j.node, "seen": j.seen}
                for k, j in self.jobs.items()
            }

    def ping(self) -> dict[str, Any]:
        if self.down:
            raise LauncherDown("the memory launcher is down")
        return {"id": self.id, "jobs": len(self.jobs), "seq": self.seq}

    # -- what a node would report, driven by tests --------------------------------------------
    def emit(self, event: Event) -> None:
        """Any event, as a runner would report it (an old attempt's, a malformed one)."""
        with self._cond:
            self._emit(event)

    def _emit(self, event: Event) -> None:
        self.seq += 1
        self.events.append((self.seq, event))
        self._cond.notify_all()

    def start(self, job_id: int, attempt: int, pid: int = 4242, gpu_ids: tuple[str, ...] = ("0",), at: float = 0.0) -> None:
        with self._cond:
            job = self.jobs[key_of(job_id, attempt)]
            job.started = True
            job.seen = at or time.time()
            ranks = [
                {"rank": i, "node": n, "host": f"memhost{i}", "pid": pid + i, "gpu_ids": list(gpu_ids)}
                for i, (_, n, _) in enumerate(job.ranks)
            ]
            self._emit(
                {
                    **({"ranks": ranks} if ranks else {}),
                    "type": "started",
                    "job_id": job_id,
                    "attempt": attempt,
                    "pid": pid,
                    "gpu_ids": list(gpu_ids),
                    "host": "memhost",
                    "node": job.node,
                    "start_time": at or time.time(),
                }
            )

    def log(
        self, job_id: int, attempt: int, offset: int, data: bytes, err: list[tuple[int, int, int]] | None = None
    ) -> None:
        with self._cond:
            self._emit(
                {"type": "log", "job_id": job_id, "attempt": attempt, "offset": offset, "data": data, "err": err or []}
            )

    def finish(
        self,
        job_id: int,
        attempt: int,
        outcome: str,
        exit_code: int | None = 0,
        reason: str = "",
        at: float = 0.0,
        **extra: Any,
    ) -> None:
        with self._cond:
            job = self.jobs[key_of(job_id, attempt)]
            job.finished = True
            self._emit(
                {
                    "type": "finished",
                    "job_id": job_id,
                    "attempt": attempt,
                    "outcome": outcome,
                    "exit_code": exit_code,
                    "signal": None,
                    "reason": reason,
                    "end_time": at or time.time(),
                    **extra,
                }
            )

    def forget_everything(self) -> None:
        """As if the Ray head (and the executor with it) had been restarted."""
        with self._cond:
            self.jobs.clear()
            self.events.clear()
            self.acked = 0
            self.seq = 0
