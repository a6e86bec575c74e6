"""Ray side of labq: a detached Executor actor that owns one Ray task per job attempt.

Why not one actor per job, nor the Ray Jobs API: a new actor costs a fresh worker
process (~0.9 s on a 2-core box), and Ray Jobs have a global 3 s kill grace and
vanish with the head. A GPU task with `max_calls=0` reuses warm workers (~3 ms to
start) and Ray still picks its GPUs and sets CUDA_VISIBLE_DEVICES. Tasks are owned
by whoever submits them and die with their owner, so the owner is this detached
actor, not the daemon: a daemon crash or restart leaves every job running.

The daemon talks to the Executor with three calls: `launch` (idempotent per job
attempt), `stop`, and `poll` (a cursor over an event list: started, log, finished),
acknowledging what it has stored so nothing is lost or applied twice.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from scheduler.gang import rank_env, rank_key, split_key
from scheduler.launcher import TTY_FULL, TTY_GONE, Event, LauncherDown, key_of
from scheduler.raygang import GANG_MEET_S, GangHost, task_options
from scheduler.runner import Launch, run

MAX_EVENTS_PER_POLL = 2000
TTY_BUFFER = 1 << 16  # bytes typed into a session that its node has not taken yet


@ray.remote(max_calls=0, max_retries=0, num_cpus=0)
def run_job(executor: Any, key: str, launch: Launch) -> dict[str, Any]:
    return _run_task(executor, key, launch)


@ray.remote(max_calls=0, max_retries=0, num_cpus=0)
def run_rank(executor: Any, key: str, launch: Launch) -> dict[str, Any] | None:
    """One rank of a gang (gang.py): meet the others, then run as a job does. None: the
    gang never met (a rank's node is gone, or it was stopped first); nothing ran here."""
    addr, port = "", 0
    if launch.rank == 0:
        addr, port = ray.util.get_node_ip_address(), free_port()  # type: ignore[no-untyped-call]
    met: dict[str, Any] | None = None
    give_up = time.monotonic() + GANG_MEET_S
    while met is None and time.monotonic() < give_up:
        # Each call waits up to 2 s in the Executor for the others to arrive.
        met = ray.get(executor.gang_arrive.remote(key, launch.rank, addr, port))
    if met is None or "master" not in met:
        return None
    m_addr, m_port = met["master"]
    gpus = len(launch.gpu_indices) if launch.gpu_indices is not None else len(ray.get_gpu_ids())
    env = {**launch.env, **rank_env(launch.rank, launch.nnodes, gpus, m_addr, int(m_port))}
    return _run_task(executor, rank_key(key, launch.rank), replace(launch, env=env))


def free_port() -> int:
    """A TCP port free on this node now, for a gang's rendezvous (as torchrun's own
    standalone mode picks one: bound and released, so it can be taken meanwhile)."""
    with socket.socket() as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


def _run_task(executor: Any, key: str, launch: Launch) -> dict[str, Any]:
    if launch.gpu_indices is not None:
        gpu_ids = [str(g) for g in launch.gpu_indices]
    else:
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    node = ray.get_runtime_context().get_node_id()
    cut_off = [launch.head_timeout]  # how long the next report may wait for the head
    if launch.nnodes == 1:
        # One node is a gang of one: the same LABQ_* names (not torch's own, which a
        # one-node job's own launcher sets), so one script serves both.
        one = rank_env(0, 1, len(gpu_ids), "127.0.0.1", free_port())
        launch = replace(launch, env={**launch.env, **{k: v for k, v in one.items() if k.startswith("LABQ_")}})

    def report(
        info: dict[str, Any] | None,
        offset: int,
        data: bytes,
        result: dict[str, Any] | None,
        err: list[tuple[int, int, int]],
    ) -> dict[str, Any] | None:
        if info is not None:
            info = dict(info, node=node)
        try:
            out: dict[str, Any] | None = ray.get(
                executor.heartbeat.remote(key, info, offset, data, result, err), timeout=cut_off[0]
            )
        except ray.exceptions.RayError:  # GetTimeoutError among them
            # Cut off from the head (or the Executor is gone): stop rather than run unseen;
            # the daemon has taken (or will take) this node's jobs for lost. Later reports
            # wait only briefly, so the job's grace is not stretched by the timeout.
            cut_off[0] = 1.0
            return {"outcome": "lost", "reason": "the head is unreachable", "grace": min(launch.grace, 5.0)}
        cut_off[0] = launch.head_timeout
        return out

    def tty_in() -> list[dict[str, Any]]:
        typed: list[dict[str, Any]] = ray.get(executor.tty_take.remote(key))
        return typed

    return run(launch, gpu_ids, node, report, tty_in if launch.tty else None)


@ray.remote(num_cpus=0, max_concurrency=256, max_restarts=0)  # type: ignore[call-overload]
class Executor(GangHost):
    _rank_task = run_rank

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: list[tuple[int, dict[str, Any]]] = []
        self._seq = 0
        self._acked = 0
        # key -> {"ref", "stop", "started", "finished"}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._me = ray.get_runtime_context().current_actor
        self._id = uuid.uuid4().hex
        threading.Thread(target=self._watch, name="labq-watch", daemon=True).start()

    def ping(self) -> dict[str, Any]:
        return {"id": self._id, "pid": os.getpid(), "jobs": len(self._jobs), "seq": self._seq}

    def _emit(self, event: dict[str, Any]) -> None:
        # Caller holds self._cond.
        self._seq += 1
        self._events.append((self._seq, event))
        self._cond.notify_all()

    def launch(
        self, job_id: int, attempt: int, launch: Launch, node_id: str, resources: dict[str, float]
    ) -> bool:
        key = key_of(job_id, attempt)
        with self._cond:
            if key in self._jobs:
                return False  # a retried launch after a daemon restart: already running
            strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
            ref = run_job.options(**task_options(resources, strategy)).remote(self._me, key, launch)
            self._jobs[key] = {
                "ref": ref,
                "stop": None,
                "started": False,
                "finished": False,
                "job_id": job_id,
                "attempt": attempt,
                "node": node_id,
            }
            self._cond.notify_all()
        return True

    def stop(self, job_id: int, attempt: int, outcome: str, reason: str, grace: float) -> bool:
        key = key_of(job_id, attempt)
        with self._cond:
            job = self._jobs.get(key)
            if job is None or job["finished"]:
                return False
            if "gang" in job:
                self._gang_stop(job, outcome, reason, grace)
                return True
            if job["stop"] is None:
                job["stop"] = {"outcome": outcome, "reason": reason, "grace": grace}
            elif grace < job["stop"]["grace"]:
                # `labq cancel --now` after a cancel: same outcome, the kill comes sooner.
                job["stop"] = {**job["stop"], "grace": grace}
            started = job["started"]
            ref = job["ref"]
        if not started:
            # Still waiting inside Ray: nothing runs yet, so cancelling loses nothing.
            ray.cancel(ref, force=False)
        return True

    def heartbeat(
        self,
        key: str,
        info: dict[str, Any] | None,
        offset: int,
        data: bytes,
        result: dict[str, Any] | None,
        err: list[tuple[int, int, int]] | None = None,
    ) -> dict[str, Any] | None:
        base, rank = split_key(key)
        with self._cond:
            job = self._jobs.get(base)
            if job is None:
                # Unknown to us (we were restarted): tell the job to stop rather than run unseen.
                return {"outcome": "lost", "reason": "executor no longer knows this job", "grace": 5}
            if "gang" in job:  # ranks report as KEY#RANK
                return self._rank_report(job, rank or 0, info, offset, data, result, err)
            ids = {"job_id": job["job_id"], "attempt": job["attempt"]}
            job["seen"] = time.time()  # the daemon's node watch: when this job's node last spoke
            if info is not None:
                job["started"] = True
                self._emit({"type": "started", **ids, **info})
            if data:
                self._emit({"type": "log", **ids, "offset": offset, "data": data, "err": list(err or ())})
            if result is not None and not job["finished"]:
                job["finished"] = True
                self._emit({"type": "finished", **ids, **result})
            stop: dict[str, Any] | None = job["stop"]
            return stop

    # -- interactive sessions: keystrokes wait here for the session's next heartbeat --
    def tty_put(self, job_id: int, attempt: int, data: bytes, winsize: list[int] | None, notice: str = "") -> str:
        """"" when taken; TTY_GONE or TTY_FULL (launcher.py) when not."""
        with self._cond:
            job = self._jobs.get(key_of(job_id, attempt))
            if job is None or job["finished"]:
                return TTY_GONE
            typed = job.setdefault("tty", [])
            if sum(len(t["input"]) for t in typed) + len(data) > TTY_BUFFER:
                return TTY_FULL  # nobody reads it (stopped?): typing ahead is bounded
            typed.append({"input": data, "winsize": winsize, "notice": notice})
            return ""

    def tty_take(self, key: str) -> list[dict[str, Any]]:
        with self._cond:
            job = self._jobs.get(key)
            typed: list[dict[str, Any]] = job.pop("tty", []) if job is not None else []
            return typed

    def _watch(self) -> None:
        """Turn tasks that ended without reporting (node died, cancelled) into events."""
        while True:
            with self._cond:
                refs: dict[Any, tuple[str, int | None]] = {
                    j["ref"]: (k, None) for k, j in self._jobs.items() if not j.get("reaped") and "gang" not in j
                }
                refs.update(self._gang_refs())
                if not refs:
                    self._cond.wait(timeout=1.0)
                    continue
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5, fetch_local=False)
            for ref in ready:
                key, rank = refs[ref]
                error: str | None = None
                value: Any = None
                try:
                    value = ray.get(ref)
                except ray.exceptions.TaskCancelledError:
                    error = "cancelled"
                except Exception as e:  # noqa: BLE001 - every task failure becomes an event
                    # The kind only: a job's reason is public, and Ray's message names
                    # pids and node addresses (an out-of-memory kill lists them).
                    error = type(e).__name__
                with self._cond:
                    if rank is not None:
                        self._reap_rank(key, rank, value, error)
                        continue
                    job = self._jobs[key]
                    job["reaped"] = True
                    if not job["finished"]:
                        job["finished"] = True
                        ids = {"job_id": job["job_id"], "attempt": job["attempt"]}
                        stop = job["stop"]
                        if stop is not None and (error == "cancelled" or not job["started"]):
                            # Stopped before it reported a start: ray.cancel() interrupts the
                            # task wherever it is (a KeyboardInterrupt), and what the task
                            # raises then is not always TaskCancelledError (a TypeError was
                            # seen in CI when `cancel --now` met a job starting). It was
                            # asked to stop; that is its end, not a lost node.
                            outcome, reason = stop["outcome"], stop["reason"]
                        else:
                            outcome = "lost"
                            reason = f"the Ray task ended without a result ({error})"
                        self._emit(
                            {
                                "type": "finished",
                                **ids,
                                "outcome": outcome,
                                "exit_code": None,
                                "signal": None,
                                "reason": reason,
                                "end_time": time.time(),
                            }
                        )

    def poll(self, ack: int, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        """Events after `ack`; forget everything up to `ack` (the daemon has stored it)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if ack > self._acked:
                self._acked = ack
                drop = 0
                while drop < len(self._events) and self._events[drop][0] <= ack:
                    drop += 1
                del self._events[:drop]
                # Jobs whose end the daemon has stored are forgotten too.
                done = {k for k, j in self._jobs.items() if j["finished"] and j.get("reaped")}
                pending_keys = {key_of(e["job_id"], e["attempt"]) for _, e in self._events}
                for k in done - pending_keys:
                    del self._jobs[k]
            while not self._events:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(timeout=left)
            return self._events[:MAX_EVENTS_PER_POLL]

    def known(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {
                k: {
                    "started": j["started"],
                    "finished": j["finished"],
                    "node": j["node"],
                    "seen": j["gang"].last_seen() if "gang" in j else j.get("seen"),
                    **({"lagging": j["gang"].lagging()} if "gang" in j else {}),
                }
                for k, j in self._jobs.items()
            }


class RayLauncher:
    """The `Launcher` (launcher.py) the daemon uses: calls on the Executor actor."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def launch(
        self, job_id: int, attempt: int, launch: Launch, node_id: str, resources: Mapping[str, float]
    ) -> None:
        # Fire and forget: a launch is idempotent per attempt, reconcile resends it.
        self.handle.launch.remote(job_id, attempt, launch, node_id, dict(resources))

    def launch_gang(
        self, job_id: int, attempt: int, ranks: Sequence[tuple[Launch, str, Mapping[str, float]]], grace: float
    ) -> None:
        self.handle.launch_gang.remote(job_id, attempt, [(la, n, dict(r)) for la, n, r in ranks], grace)

    def stop(self, job_id: int, attempt: int, outcome: str, reason: str, grace: float) -> None:
        self.handle.stop.remote(job_id, attempt, outcome, reason, grace)

    def unplace(self, job_id: int, attempt: int, reason: str) -> None:
        self.handle.unplace_gang.remote(job_id, attempt, reason)

    def tty(self, job_id: int, attempt: int, data: bytes, winsize: list[int] | None, notice: str = "") -> str:
        try:
            why: str = ray.get(self.handle.tty_put.remote(job_id, attempt, data, winsize, notice), timeout=5)
        except Exception as e:  # noqa: BLE001
            raise LauncherDown(_why(e, 5)) from None
        return why

    def poll(self, ack: int, timeout: float) -> list[tuple[int, Event]]:
        try:
            out: list[tuple[int, Event]] = ray.get(self.handle.poll.remote(ack, timeout), timeout=30)
        except Exception as e:  # noqa: BLE001 - whatever Ray raises, the executor is gone
            raise LauncherDown(_why(e, 30)) from None
        return out

    def known(self) -> dict[str, dict[str, Any]]:
        try:
            out: dict[str, dict[str, Any]] = ray.get(self.handle.known.remote(), timeout=60)
        except Exception as e:  # noqa: BLE001
            raise LauncherDown(_why(e, 60)) from None
        return out

    def ping(self) -> dict[str, Any]:
        try:
            out: dict[str, Any] = ray.get(self.handle.ping.remote(), timeout=5)
        except Exception as e:  # noqa: BLE001
            raise LauncherDown(_why(e, 5)) from None
        return out

    def kill(self) -> None:
        ray.kill(self.handle)


def _why(e: BaseException, timeout: float) -> str:
    """Why the Executor did not answer, in words (never a bare exception name)."""
    if isinstance(e, ray.exceptions.GetTimeoutError):
        return f"the executor did not answer within {timeout:g}s (busy, or its node is unreachable)"
    if isinstance(e, ray.exceptions.RayActorError):
        return "the executor is gone (its process or node died); the daemon restarts to start a new one"
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"the executor does not answer: {first or 'Ray gave no reason'} ({type(e).__name__})"
