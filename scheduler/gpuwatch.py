"""The GPU loop: one monitor per node (fleet.py), what they report, and what follows.

Owns the fleet and the telemetry (per-node reports, per-GPU history, per-job GPU
accounting): only the GPU thread writes them; API threads and the scheduler read
them (whole-value reads of dicts the GPU thread replaces, safe under the GIL). Each
tick: monitors for new nodes, reports from all, node notes (simulated, Ray vs NVML
count), a history line on jobs whose GPU turned unhealthy, and the idle actions of
quotas that ask for them (through the job-control core).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from scheduler.config import DaemonConfig
from scheduler.control import JobControl
from scheduler.dirbook import DirBook
from scheduler.gputypes import node_type
from scheduler.nodes import NodeBook, NodeRecord
from scheduler.quota import QuotaBook
from scheduler.shapes import ACTIVE, JobState
from scheduler.store import JobRow, Store
from scheduler.telemetry import Holder, Telemetry, idle_verdicts, usage_report
from scheduler.units import format_duration

log = logging.getLogger("labq.gpus")


class GpuWatch:
    def __init__(
        self,
        store: Store,
        config: DaemonConfig,
        nodes: NodeBook,
        control: JobControl,
        quotas: Callable[[], QuotaBook],
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.config = config
        self.nodes = nodes
        self.control = control
        self._quotas = quotas
        self._wake = wake
        self.telemetry = Telemetry(
            interval=config.monitor_interval_s,
            history_s=config.gpu_history_s,
            idle_threshold_pct=config.idle_threshold_pct,
            stale_after_s=max(5.0, 3 * config.monitor_interval_s),
        )
        self.fleet: Any = None  # fleet.Fleet once Ray is up
        # Which nodes have the directories waiting jobs need (asked of the agents here).
        self.dirs = DirBook()
        self.poke = threading.Event()  # the scheduler needs an answer now
        self._warned: set[int] = set()  # idle sessions told they will end (GPU thread)

    def start_fleet(self, namespace: str) -> None:
        from scheduler.fleet import Fleet

        self.fleet = Fleet(namespace, self.telemetry, self.config.monitor_interval_s)
        self.dirs.active = True

    def unusable(self, node_id: str) -> set[int]:
        """GPU indices no new job gets on this node: unhealthy, or held by a process
        that is not a running labq job (e.g. one an ended job left behind)."""
        return set(self.telemetry.unhealthy(node_id)) | set(self.telemetry.occupied(node_id))

    # -- the loop ---------------------------------------------------------------------------------
    def loop(self, stop: threading.Event, connected: Callable[[], bool]) -> None:
        interval = self.config.monitor_interval_s
        next_tick = time.monotonic() + interval
        while not stop.is_set():
            # Woken early only to look for a directory a new job needs.
            self.poke.wait(max(0.0, next_tick - time.monotonic()))
            self.poke.clear()
            if stop.is_set():
                return
            if self.fleet is None or not connected():
                next_tick = time.monotonic() + interval
                continue
            try:
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + interval
                    self.tick(time.time())
                self.check_dirs(time.time())
            except Exception:  # noqa: BLE001 - monitoring must never stop scheduling
                log.exception("GPU monitoring pass failed")

    def check_dirs(self, now: float) -> None:
        """Answers in, silent nodes noted, the next questions out (one call per node at
        a time: a hung filesystem holds up only that node's answers)."""
        alive = [n.id for n in self.nodes.all() if n.alive and n.trusted]
        answers, silent = self.fleet.dirs_collect(alive, now)
        changed = self._take(answers, frozenset(silent), now)
        due = self.dirs.due(alive, now, busy=self.fleet.dirs_busy())
        for node, keys in due.items():
            self.fleet.dirs_send(node, keys, now)
        if due:
            # Most answers take milliseconds: take them now rather than a round later.
            answers, silent = self.fleet.dirs_collect(alive, now, wait_s=1.0)
            changed = self._take(answers, frozenset(silent), now) or changed
        if changed:
            self._wake()

    def _take(self, answers: dict[str, Any], silent: frozenset[str], now: float) -> bool:
        changed = silent != self.dirs.silent
        self.dirs.silent = silent
        for node, (keys, got) in answers.items():
            changed = self.dirs.record(node, keys, got, now) or changed
        return changed

    @staticmethod
    def holders(active: list[JobRow]) -> list[Holder]:
        return [
            Holder(j.id, j.user, j.node, tuple(int(g) for g in j.gpu_ids.split(",") if g.isdigit()), j.pid)
            for j in active
            if j.state is JobState.RUNNING and j.node and j.gpu_ids and j.pid
        ]

    def tick(self, now: float) -> None:
        alive = {n.id: n.gpus for n in self.nodes.all() if n.alive}
        self.fleet.sync(alive, {n.id: n.simulate for n in self.nodes.all() if n.alive and n.simulate})
        active = self.store.jobs(states=ACTIVE)
        before = {n: set(self.telemetry.unhealthy(n)) for n in alive}
        self.fleet.poll(self.holders(active), now, timeout=max(0.5, self.config.monitor_interval_s))
        changed = False
        for node in self.nodes.all():
            st = self.telemetry.nodes.get(node.id)
            if st is None:
                continue
            r = st.report
            self.nodes.update_monitor(
                node.id, bool(r.get("simulated")), int(r.get("nvml_gpus") or 0), self.cross_check(node, r),
                node_type([str(g.get("name") or "") for g in r.get("gpus") or ()]),
            )
            if set(self.telemetry.unhealthy(node.id)) != before.get(node.id, set()):
                changed = True
        if changed:
            self.flag_unhealthy(active, now)
            self._wake()
        self.apply_idle(now)
        self.apply_session_idle(active, now)

    @staticmethod
    def cross_check(node: NodeRecord, report: dict[str, Any]) -> str:
        if report.get("simulated"):
            return f"simulated GPUs (no NVIDIA GPU here: {report.get('why_none') or 'NVML sees none'})"
        nvml = int(report.get("nvml_gpus") or 0)
        if nvml != node.gpus:
            return f"Ray advertises {node.gpus} GPUs but NVML counts {nvml}"
        if node.gpus == 0 and report.get("why_none"):
            return f"no GPUs: {report['why_none']}"
        return ""

    def flag_unhealthy(self, active: list[JobRow], now: float) -> None:
        for h in self.holders(active):
            bad = self.telemetry.unhealthy(h.node)
            hit = sorted(set(h.gpus) & set(bad))
            if hit:
                self.store.note(h.job_id, "; ".join(f"GPU {i} unhealthy: {bad[i]}" for i in hit), now)

    def apply_idle(self, now: float) -> None:
        c = self.config
        verdicts = idle_verdicts(
            self.telemetry,
            lambda user: self._quotas().for_user(user).idle_action,
            c.idle_window_s,
            c.idle_action_after_s,
            now,
        )
        for v in verdicts:
            row = self.store.get(v.job_id)
            if row.state not in ACTIVE:
                continue
            idle = f"its GPUs have been under {c.idle_threshold_pct:g}% utilization for {format_duration(v.idle_for)}"
            if v.action == "flag":
                self.store.note(row.id, f"idle: {idle}", now)
            elif v.action == "cancel":
                self.control.request_stop(
                    row, "cancelled", f"cancelled because {idle} (idle_action: cancel)", self.control.grace(row)
                )
            elif v.action == "requeue":
                self.control.request_stop(
                    row, "preempted", f"requeued because {idle} (idle_action: requeue)", self.control.grace(row)
                )

    def apply_session_idle(self, active: list[JobRow], now: float) -> None:
        """Sessions idle for session_idle_s end, with a warning in their terminal (and
        their history) session_idle_warn_s before; using the GPUs again lifts it."""
        limit = self.config.session_idle_s
        if limit <= 0:
            return
        running = set()
        for row in active:
            if row.kind == "batch" or row.state is not JobState.RUNNING:
                continue
            running.add(row.id)
            idle_for = self.telemetry.idle_for(row.id, now)
            if idle_for is None:
                self._warned.discard(row.id)
                continue
            if idle_for >= limit:
                self.control.request_stop(
                    row, "cancelled",
                    f"session ended: its GPUs were idle for {format_duration(idle_for)} (session_idle_s)",
                    self.control.grace(row),
                )
            elif idle_for >= limit - self.config.session_idle_warn_s and row.id not in self._warned:
                self._warned.add(row.id)
                left = format_duration(limit - idle_for)
                text = f"this session's GPUs have been idle for {format_duration(idle_for)}; it ends in {left} unless they are used"
                self.store.note(row.id, f"idle: {text}", now)
                self.control.notice(row, f"labq: {text}")
        self._warned &= running

    # -- views ------------------------------------------------------------------------------------
    def node_views(self, history: bool = False, may_see: Callable[[str], bool] = lambda user: True) -> list[dict[str, Any]]:
        """Every node with its GPUs as the agents last saw them, and who holds each.
        `may_see(user)`: whether the caller may see that user's pids ("": a process outside labq)."""
        now = time.time()
        active = self.store.jobs(states=ACTIVE, with_spec=False)
        holder: dict[tuple[str, int], JobRow] = {}
        used: dict[str, int] = {}
        for j in active:
            for node, count, ids in j.placements():  # a gang: each rank's GPUs on its node
                used[node] = used.get(node, 0) + count
                for idx in ids.split(","):
                    if node and idx.isdigit():
                        holder[(node, int(idx))] = j
        by_id = {j.id: j for j in active}
        nodes = [n.public() for n in self.nodes.all()]
        for n in nodes:
            n["gpus_used"] = used.get(n["id"], 0)
            st = self.telemetry.nodes.get(n["id"])
            n["age_s"] = self.telemetry.age(n["id"], now)
            n["stale"] = self.telemetry.stale(n["id"], now)
            n["monitor_error"] = self.fleet.errors.get(n["id"], "") if self.fleet else ""
            report = st.report if st else {}
            n["host"] = report.get("host")
            n["monitor_pid"] = report.get("pid")
            n["sampled_at"] = report.get("time")
            n["driver"] = report.get("driver")
            occupied = self.telemetry.occupied(n["id"])
            gpus = []
            for raw in report.get("gpus", []):
                g: dict[str, Any] = dict(raw)
                held_by = holder.get((n["id"], int(g["index"])))
                g["job_id"] = held_by.id if held_by else None
                if held_by is not None and held_by.array_id is not None:
                    g["job_ref"] = held_by.ref  # a task: 42.7, as people name it
                g["user"] = held_by.user if held_by else None
                stray = occupied.get(int(g["index"]))
                g["blocked"] = f"no new jobs: {stray}" if stray and not held_by else None
                procs = []
                for proc in raw.get("processes", []):
                    owner = by_id.get(proc.get("job_id") or -1)
                    if not may_see(owner.user if owner is not None else ""):
                        # Another's job, or a process outside labq (admins only): no pid.
                        proc = {k: v for k, v in proc.items() if k != "pid"}
                    procs.append(
                        {
                            **proc,
                            "user": owner.user if owner else None,
                            "outside_labq": proc.get("job_id") is None,
                            **({"job_ref": owner.ref} if owner is not None and owner.array_id is not None else {}),
                        }
                    )
                g["processes"] = procs
                if history:
                    g["history"] = self.telemetry.gpu_history(n["id"], int(g["index"]))
                gpus.append(g)
            n["gpu_list"] = gpus
        return nodes

    def usage_report(self, since_s: float, by: str) -> dict[str, Any]:
        now = time.time()
        live = {j: ju.totals() for j, ju in list(self.telemetry.jobs.items())}
        rows = usage_report(self.store.usage_rows(now - since_s), live, now - since_s, now, by)
        return {"since": now - since_s, "until": now, "by": by, "rows": rows}

    def gpu_flags(self, job: JobRow, now: float) -> list[str]:
        flags: list[str] = []
        idle_for = self.telemetry.idle_for(job.id, now)
        if idle_for is not None and idle_for >= self.config.idle_window_s:
            flags.append(f"idle {format_duration(idle_for)}")
        if job.node and job.gpu_ids:
            bad = self.telemetry.unhealthy(job.node)
            for g in job.gpu_ids.split(","):
                if g.isdigit() and int(g) in bad:
                    flags.append(f"GPU {g} unhealthy")
        return flags

    def job_gpu(self, job_id: int, now: float) -> dict[str, Any] | None:
        """A running job's GPU use so far (None before the first sample)."""
        ju = self.telemetry.jobs.get(job_id)
        if ju is None:
            return None
        return {**ju.totals(), "util_now": ju.util_now, "mem_now": ju.mem_now, "idle_for_s": self.telemetry.idle_for(job_id, now)}
