"""The job-control core: the one place a job's state changes, and what follows from it.

Submit and cancel (API threads), start (the scheduler loop), what a node reports
(the event pump: started, log bytes, finished), requeue after preemption, node loss or
Ray loss, and reconciling with the launcher after a restart. Every change goes
through `Store.transition` with the states it expects, so two threads racing on one
job (a cancel while it starts; a late event of an older attempt) resolve in the store:
the loser's transition finds the job moved on and changes nothing.

No Ray here: jobs go out through a `Launcher` (launcher.py). The Ray one is the real
thing; the in-memory one lets tests drive every path below in milliseconds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from scheduler.admission import Admission
from scheduler.auth import Caller
from scheduler.config import DaemonConfig
from scheduler.control_loss import UNPLACEABLE, NodeLoss
from scheduler.errors import DaemonError
from scheduler.launcher import Event, Launcher, LauncherDown, key_of
from scheduler.launching import (
    build_launch,
    code_for,
    gang_launches,
    nodes_of,
    placed_ranks,
    started_ranks,
    where_running,
)
from scheduler.ledger import UsageLedger
from scheduler.logbook import LogBook
from scheduler.nodes import NodeBook
from scheduler.shapes import ACTIVE, JobState, Outcome
from scheduler.store import JobRow, Store

log = logging.getLogger("labq.jobs")

_END_STATE = {
    Outcome.SUCCEEDED: JobState.SUCCEEDED,
    Outcome.FAILED: JobState.FAILED,
    Outcome.CANCELLED: JobState.CANCELLED,
    Outcome.TIMEOUT: JobState.TIMEOUT,
    Outcome.LOST: JobState.LOST,
}



class JobControl(NodeLoss):
    def __init__(
        self,
        store: Store,
        config: DaemonConfig,
        admission: Admission,
        nodes: NodeBook,
        logs: LogBook,
        ledger: UsageLedger,
        launcher: Callable[[], Launcher | None],
        namespace: Callable[[], str] = lambda: "labq",
        refresh_nodes: Callable[[], None] = lambda: None,
        connected: Callable[[], bool] = lambda: True,
        finish_stats: Callable[[int], Mapping[str, Any] | None] = lambda job_id: None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.config = config
        self.admission = admission
        self.nodes = nodes
        self.logs = logs
        self.ledger = ledger
        self._launcher = launcher
        self._namespace = namespace
        self._refresh_nodes = refresh_nodes
        self._connected = connected
        self._finish_stats = finish_stats
        self._wake = wake

    @property
    def launcher(self) -> Launcher | None:
        return self._launcher()

    # -- from the API -------------------------------------------------------------------------
    def submit(self, caller: Caller, spec_data: dict[str, Any], token: str | None = None) -> int:
        """Queue a job. The same token from the same user again returns the first job."""
        if token is not None and (not isinstance(token, str) or not 0 < len(token) <= 128):
            raise DaemonError("token must be a string of 1 to 128 characters")
        # The rate first: it is cheap, and a refused spec costs its validation too.
        self.admission.check_rate(caller, time.monotonic())
        spec = self.admission.accept(caller, spec_data)
        self.admission.check_room(caller, len(spec.array_plan()[0]) if spec.is_array else 1)
        job_id = self.store.add_job(caller.user, caller.uid, spec, token=token)
        self._wake()
        return job_id

    def cancel(self, caller: Caller, job_id: int, now: bool = False) -> str:
        """`now`: no grace period, SIGKILL at once (also for a job already stopping)."""
        job = self.store.get(job_id)
        if not caller.may_see(job.user):
            raise DaemonError(f"job {job.ref} belongs to {job.user}; only they or an admin may cancel it", 403)
        reason = f"cancelled by {caller.user}" + (" (--now)" if now else "")
        if job.state.terminal:
            raise DaemonError(f"job {job.ref} already ended ({job.state.value})", 409)
        if job.array_size:
            return self._cancel_array(caller, job, reason, now)
        if job.state in (JobState.PENDING, JobState.PREEMPTED):
            self.store.transition(job_id, JobState.CANCELLED, reason, expect=(job.state,), end_time=time.time())
            if self.store.get(job_id).state is JobState.CANCELLED:
                self.store.audit(caller.user, "job.cancel", job.ref, reason, time.time(), job.user)
                self._wake()
                return "cancelled"
            job = self.store.get(job_id)  # it started meanwhile: stop it like a running one
        self.request_stop(job, "cancelled", reason, 0.0 if now else self.grace(job))
        self.store.audit(caller.user, "job.cancel", job.ref, reason, time.time(), job.user)
        return "killed" if now else "stopping"

    def _cancel_array(self, caller: Caller, array: JobRow, reason: str, now: bool) -> str:
        """The whole array: no task starts any more, and each live one is cancelled."""
        self.store.transition(array.id, JobState.CANCELLED, reason, expect=(JobState.PENDING,), end_time=time.time())
        stopping = 0
        for task_id in self.store.live_tasks(array.id):
            task = self.store.get(task_id)
            if task.state in (JobState.PENDING, JobState.PREEMPTED):
                self.store.transition(task_id, JobState.CANCELLED, reason, expect=(task.state,), end_time=time.time())
                task = self.store.get(task_id)
            if task.state in ACTIVE:
                self.request_stop(task, "cancelled", reason, 0.0 if now else self.grace(task))
                stopping += 1
        self.store.audit(caller.user, "job.cancel", str(array.id), f"{reason} (array)", time.time(), array.user)
        self._wake()
        return f"cancelled ({stopping} running task{'s' if stopping != 1 else ''} {'killed' if now else 'stopping'})" if stopping else "cancelled"

    def cancel_task(self, caller: Caller, array_id: int, index: int, now: bool = False) -> str:
        """`labq cancel 42.7`: a task that has a row is cancelled like any job; one that
        has not started yet gets a CANCELLED row in its place, so it never starts."""
        array = self.store.get(array_id)
        if not caller.may_see(array.user):
            raise DaemonError(f"job {array_id}.{index} belongs to {array.user}; only they or an admin may cancel it", 403)
        task_id = self.store.task_id(array_id, index)
        if task_id is None:
            if not array.array_size or index not in array.job_spec().array_plan()[0]:
                raise DaemonError(f"no job {array_id}.{index}", 404)
            if array.state.terminal:
                raise DaemonError(f"job {array_id}.{index} never started: array {array_id} ended ({array.state.value})", 409)
            reason = f"cancelled by {caller.user} before it started"
            task_id = self.store.cancel_unstarted(array_id, index, reason, time.time())
            if task_id is not None:
                self.store.audit(caller.user, "job.cancel", f"{array_id}.{index}", reason, time.time(), array.user)
                self._wake()
                return "cancelled"
            task_id = self.store.task_id(array_id, index)  # it started meanwhile
            assert task_id is not None
        return self.cancel(caller, task_id, now)

    def dependency_failed(self, job_id: int, dep_id: int, dep_state: JobState, now: float) -> None:
        """A waiting job's `--after` dependency ended otherwise than SUCCEEDED: it will
        never start, so it ends CANCELLED saying why (as Slurm's afterok), and in turn
        cancels what waits for it."""
        reason = f"dependency {dep_id} {dep_state.value}: --after needs it to succeed"
        self.store.transition(job_id, JobState.CANCELLED, reason, expect=(JobState.PENDING,), end_time=now)
        self.store.drop_deps(job_id)
        self._wake()

    def grace(self, job: JobRow) -> float:
        """The job's grace period, never above max_grace_s (a job submitted before the
        cap existed, or under a larger one, gets the cap)."""
        g = job.spec.get("grace")
        grace = float(g) if g is not None else self.config.grace_period_s
        if job.scavenging:
            # A scavenger gives GPUs back on request: no longer than the default grace.
            grace = min(grace, self.config.grace_period_s)
        return min(grace, self.config.max_grace_s)

    def notice(self, job: JobRow, text: str) -> None:
        """A line on a shell session's terminal (and so in its log), from labq itself."""
        launcher = self.launcher
        if launcher is None or job.kind != "shell":
            return
        try:
            launcher.tty(job.id, job.attempt, b"", None, notice=text)
        except LauncherDown:
            pass  # the history has it too

    def request_stop(self, job: JobRow, outcome: str, reason: str, grace: float) -> None:
        """Ask a running job to stop: SIGTERM now, SIGKILL `grace` seconds later."""
        deadline = time.time() + grace
        if job.stop_outcome is None or (outcome == "cancelled" and job.stop_outcome != "cancelled"):
            # A cancel overrides a preemption on its way (the job would be requeued).
            if job.stop_deadline is not None:
                deadline = min(deadline, job.stop_deadline)
            self.store.set_fields(job.id, stop_deadline=deadline, stop_outcome=outcome, stop_reason=reason)
        elif job.stop_deadline is not None and deadline < job.stop_deadline:
            self.store.set_fields(job.id, stop_deadline=deadline)
        launcher = self.launcher
        if launcher is not None:
            launcher.stop(job.id, job.attempt, outcome, reason, grace)

    # -- from the scheduler loop ----------------------------------------------------------------
    def start_gang(
        self, job_id: int, ranks: list[tuple[str, int, tuple[int, ...] | None]], now: float, scavenger: bool = False
    ) -> JobRow | None:
        """A job over several nodes: `ranks` = (node, GPUs, GPU indices or None), rank 0 first."""
        return self.start(job_id, ranks[0][0], ranks[0][2], now, scavenger, placed_ranks(ranks, self.nodes.name_of))

    def start(
        self,
        job_id: int,
        node_id: str,
        gpu_ids: tuple[int, ...] | None,
        now: float,
        scavenger: bool = False,
        ranks: str = "",
    ) -> JobRow | None:
        """PENDING -> STARTING on `node_id`, then launch. None if it moved on meanwhile
        (cancelled while the pass decided). `scavenger`: it runs preemptibly (Start.preemptible).
        `ranks`: a job over several nodes (JobRow.ranks; node_id is rank 0's)."""
        node_name = self.nodes.name_of(node_id)
        where = ", ".join(r["node_name"] for r in json.loads(ranks)) if ranks else node_name
        row = self.store.get(job_id)
        if row.state is not JobState.PENDING:
            return None
        row = self.store.transition(
            row.id,
            JobState.STARTING,
            f"placed on {where}" + (" as a scavenger (preemptible, on idle GPUs)" if scavenger else ""),
            now=now,
            expect=(JobState.PENDING,),
            node=node_id,
            node_name=node_name,
            attempt=row.attempt + 1,
            gpu_ids=None if gpu_ids is None else ",".join(map(str, gpu_ids)),
            start_time=now,
            stop_deadline=None,
            stop_outcome=None,
            stop_reason=None,
            exit_code=None,
            signal=None,
            scavenging=int(scavenger),
            ranks=ranks,
        )
        if row.state is not JobState.STARTING:
            return None
        self.launch(row)
        return row

    def launch(self, job: JobRow) -> None:
        launcher = self.launcher
        if launcher is None:
            return  # reconcile launches STARTING jobs once the launcher is there
        launch, resources = build_launch(
            job, self.config, self.grace(job), self.logs.room(job), self._namespace(), code_for(job, self.admission.codes)
        )
        if job.ranks:
            launcher.launch_gang(job.id, job.attempt, gang_launches(launch, job.rank_list(), resources), launch.grace)
            return
        launcher.launch(job.id, job.attempt, launch, job.node or "", resources)

    # -- from the event pump --------------------------------------------------------------------
    def apply(self, ev: Event) -> None:
        """One event a node reported. Applying it twice changes nothing the second time."""
        job = self.store.get(int(ev["job_id"]))
        if job.attempt != ev["attempt"]:
            return  # a late report from an older attempt
        kind = ev["type"]
        if kind in ("started", "log") and job.log_attempt != job.attempt:
            # Its log, opened once per attempt, on the first report, whatever that is:
            # a gang's rank 0 may write before every rank has started.
            base = self.logs.open_attempt(job)
            self.store.set_fields(job.id, log_base=base, log_attempt=job.attempt)
            job = self.store.get(job.id)
        if kind == "started":
            extra: dict[str, Any] = {"ranks": started_ranks(job.rank_list(), ev["ranks"])} if job.ranks and ev.get("ranks") else {}
            self.store.transition(
                job.id,
                JobState.RUNNING,
                where_running(job, ev, extra.get("ranks", "")),
                expect=(JobState.STARTING,),
                start_time=ev["start_time"],
                pid=ev["pid"],
                gpu_ids=",".join(ev["gpu_ids"]),
                **extra,
            )
        elif kind == "log":
            rank = int(ev.get("rank") or 0)
            if rank:
                self.logs.write_rank(job, rank, int(ev["offset"]), ev["data"])
            else:
                self.logs.write(job, int(ev["offset"]), ev["data"], ev.get("err") or ())
        elif kind == "finished":
            self.finish(job, ev)
        else:
            raise ValueError(f"job {job.id}: unknown event type {kind!r}")

    def finish(self, job: JobRow, ev: Event) -> None:
        # When the process ended, not when we heard of it (we may have been down meanwhile).
        now = float(ev.get("end_time") or time.time())
        fields = {"exit_code": ev.get("exit_code"), "signal": ev.get("signal"), "end_time": now}
        reason = str(ev.get("reason") or "")
        stats = self._finish_stats(job.id)
        try:
            outcome = Outcome(str(ev["outcome"]))
        except ValueError:
            # Not silently LOST: say what came, so a runner/daemon mismatch shows.
            log.error("job %d: the node reported an unknown outcome %r", job.id, ev["outcome"])
            outcome, reason = Outcome.LOST, f"the node reported an unknown outcome {ev['outcome']!r}"
        if outcome is Outcome.PREEMPTED and job.stop_outcome == "cancelled":
            # Cancelled while being preempted: the node reports the first request it got.
            outcome, reason = Outcome.CANCELLED, job.stop_reason or reason
        if outcome is Outcome.LOST and job.state is JobState.STARTING and ev.get("unplaced"):
            # A job over several nodes whose ranks never all met (gang.py): nothing ran.
            self.unplaced(job, reason, now)
            return
        if outcome is Outcome.LOST and job.state is JobState.STARTING and job.node and UNPLACEABLE in reason:
            # Ray could not put the task on its pinned node (hard affinity): that node is gone,
            # e.g. a worker's old Ray node just after its reboot. The job never ran: requeued
            # without spending a node-loss retry or GPU time; that node is never used again.
            self.nodes.mark_dead(job.node)
            self.requeue(job, JobState.STARTING, f"{job.node_name or job.node} was gone before the job started there")
            return
        if outcome is Outcome.LOST and self._node_gone(job, reason, ev.get("lost_node")):
            took = self.node_lost(job, reason, stats, fields, ev.get("lost_node"))
        elif outcome is Outcome.PREEMPTED:
            row = self.store.transition(job.id, JobState.PREEMPTED, reason, expect=ACTIVE, run_stats=stats, **fields)
            took = row.state is JobState.PREEMPTED
            self.requeue(job, JobState.PREEMPTED, "requeued after preemption")
        else:
            state = _END_STATE[outcome]
            if state is JobState.LOST and not reason:
                reason = "lost"
            took = self.store.transition(job.id, state, reason, expect=ACTIVE, run_stats=stats, **fields).state is state
        if took and ev.get("log_dropped"):
            # After the transition: an event applied again finds the job ended, no second note.
            self.store.note(job.id, f"log limit reached: {ev['log_dropped']} bytes of output discarded", now)
        if took:
            # Only the thread whose transition ended the attempt counts its GPU time
            # (the node watch may have ended it first; see check_silent).
            self._attempt_ended(job, now)

    def _attempt_ended(self, job: JobRow, now: float) -> None:
        if job.start_time is not None:
            self.ledger.ended(job.user, job.gpus, job.start_time, now)
            self.logs.attempt_ended(job, time.time())

    def requeue(self, job: JobRow, ended: JobState, reason: str) -> None:
        """Back to the queue after an attempt that ended through no fault of the job;
        `requeued` puts it first among its owner's jobs."""
        self.store.transition(
            job.id,
            JobState.PENDING,
            reason,
            expect=(ended,),
            requeued=1,
            node=None,
            ranks="",
            pid=None,
            stop_deadline=None,
            stop_outcome=None,
            stop_reason=None,
        )

    # -- after a (re)start ----------------------------------------------------------------------
    def reconcile(self, known: Mapping[str, Any]) -> None:
        """Adopt the attempts the launcher still runs; explain the rest."""
        for job in self.store.jobs(states=ACTIVE):
            if key_of(job.id, job.attempt) in known:
                continue
            if job.state is JobState.STARTING:
                # The launch may not have reached the launcher before we stopped: a launch
                # is idempotent per attempt, so sending it again cannot start it twice.
                self.launch(job)
            elif job.node and any(n not in self.nodes for n in nodes_of(job)):
                # Its node is gone (e.g. the Ray head died with it): requeue per the retry setting.
                self.node_lost(job, "not running after Ray came back", None, {"end_time": time.time()})
            else:
                self.store.transition(
                    job.id,
                    JobState.LOST,
                    "Ray no longer runs this job: the executor that owned it is gone "
                    "(was the Ray head restarted?)",
                    end_time=time.time(),
                )
