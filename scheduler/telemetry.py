"""What the daemon remembers of the node agents' reports: plain data, no Ray, no clock.

- the latest report per node, marked stale with its age when the agent stops answering;
- a short history per GPU (utilization and memory, for the UI's sparklines);
- per-job accounting while a job runs: GPU-seconds busy (utilization integrated
  over time), idle GPU-seconds, peak GPU memory, and since when all its GPUs have
  been idle. `finish_job` hands the totals to the store when the job ends.

Every method takes `now` from the caller, so tests drive it with a fake clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Holder:
    """A running job and the GPUs it holds on one node (from the store)."""

    job_id: int
    user: str
    node: str
    gpus: tuple[int, ...]
    pid: int = 0  # the job's top process, for the agent's process-tree mapping


@dataclass
class JobUsage:
    job_id: int
    user: str
    gpus: int
    sampled_s: float = 0.0
    busy_gpu_s: float = 0.0
    idle_gpu_s: float = 0.0
    mem_peak: int = 0
    util_now: float | None = None
    mem_now: int | None = None
    idle_since: float | None = None
    last_t: float | None = None
    flagged_idle: bool = False  # the "idle" note was written to the job's history
    action_taken: bool = False

    def util_mean(self) -> float | None:
        if self.sampled_s <= 0 or self.gpus <= 0:
            return None
        return 100.0 * self.busy_gpu_s / (self.sampled_s * self.gpus)

    def totals(self) -> dict[str, Any]:
        return {
            "sampled_s": round(self.sampled_s, 3),
            "busy_gpu_s": round(self.busy_gpu_s, 3),
            "idle_gpu_s": round(self.idle_gpu_s, 3),
            "util_mean": None if self.util_mean() is None else round(self.util_mean() or 0.0, 2),
            "mem_peak": self.mem_peak,
        }


@dataclass
class NodeState:
    received: float
    report: dict[str, Any]
    last_seq: int = -1
    last_t: float | None = None


@dataclass
class Telemetry:
    interval: float = 1.0
    history_s: float = 600.0
    idle_threshold_pct: float = 2.0
    # A node whose agent has not answered for this long shows its last values as stale.
    stale_after_s: float = 5.0
    nodes: dict[str, NodeState] = field(default_factory=dict)
    history: dict[tuple[str, int], deque[tuple[float, int | None, int | None]]] = field(default_factory=dict)
    jobs: dict[int, JobUsage] = field(default_factory=dict)

    # -- ingest -----------------------------------------------------------------------------------
    def ingest(self, node_id: str, report: dict[str, Any], now: float, holders: list[Holder]) -> bool:
        """Take one agent report; False when it is the same sample as last time."""
        st = self.nodes.get(node_id)
        seq = int(report.get("seq", 0))
        if st is not None and st.last_seq == seq and st.report.get("pid") == report.get("pid"):
            st.received = now
            return False
        if st is None:
            st = self.nodes[node_id] = NodeState(received=now, report=report)
        st.report, st.received, st.last_seq = report, now, seq
        gpus = {int(g["index"]): g for g in report.get("gpus", [])}
        keep = max(2, int(self.history_s / max(self.interval, 1e-3)))
        for idx, g in gpus.items():
            h = self.history.get((node_id, idx))
            if h is None:
                h = self.history[(node_id, idx)] = deque(maxlen=keep)
            h.append((now, g.get("util_gpu"), g.get("memory_used")))
        for holder in holders:
            if holder.node == node_id:
                self._account(holder, gpus, now)
        return True

    def _account(self, holder: Holder, gpus: dict[int, dict[str, Any]], now: float) -> None:
        ju = self.jobs.get(holder.job_id)
        if ju is None:
            ju = self.jobs[holder.job_id] = JobUsage(holder.job_id, holder.user, len(holder.gpus))
        mine = [gpus.get(i) for i in holder.gpus]
        utils = [g.get("util_gpu") for g in mine if g is not None]
        if not utils or any(u is None for u in utils) or len(utils) != len(holder.gpus):
            ju.util_now = None  # a lost GPU or no report: no utilization to account
            ju.last_t = now
            return
        values = [float(u) for u in utils if u is not None]
        # Per-process memory when NVML gives it (the job's own share); else the whole GPU.
        proc_mem = [
            int(p["used_memory"])
            for g in mine
            if g is not None
            for p in g.get("processes", [])
            if p.get("job_id") == holder.job_id and p.get("used_memory") is not None
        ]
        mem = sum(proc_mem) if proc_mem else sum(int(g.get("memory_used") or 0) for g in mine if g)
        if ju.last_t is not None:
            # A gap (agent silent) counts at most a few intervals, never the whole gap.
            dt = max(0.0, min(now - ju.last_t, 3 * self.interval))
            ju.sampled_s += dt
            ju.busy_gpu_s += dt * sum(values) / 100.0
            ju.idle_gpu_s += dt * sum(1 for v in values if v < self.idle_threshold_pct)
        ju.last_t = now
        ju.util_now = sum(values) / len(values)
        ju.mem_now = mem
        ju.mem_peak = max(ju.mem_peak, mem)
        if all(v < self.idle_threshold_pct for v in values):
            if ju.idle_since is None:
                ju.idle_since = now
        else:
            ju.idle_since = None
            ju.flagged_idle = False
            ju.action_taken = False

    def finish_job(self, job_id: int) -> dict[str, Any] | None:
        ju = self.jobs.pop(job_id, None)
        return None if ju is None else ju.totals()

    def forget_node(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)
        for key in [k for k in self.history if k[0] == node_id]:
            del self.history[key]

    # -- views --------------------------------------------------------------------------------------
    def age(self, node_id: str, now: float) -> float | None:
        st = self.nodes.get(node_id)
        return None if st is None else now - st.received

    def stale(self, node_id: str, now: float) -> bool:
        age = self.age(node_id, now)
        return age is not None and age > self.stale_after_s

    def unhealthy(self, node_id: str) -> dict[int, str]:
        st = self.nodes.get(node_id)
        if st is None:
            return {}
        return {
            int(g["index"]): str(g.get("problem") or "unhealthy")
            for g in st.report.get("gpus", [])
            if not g.get("healthy", True)
        }

    def occupied(self, node_id: str) -> dict[int, str]:
        """GPUs with a process on them that belongs to no running labq job: a process
        started outside labq, or one a job left behind. Nothing new goes there."""
        st = self.nodes.get(node_id)
        if st is None:
            return {}
        out: dict[int, str] = {}
        for g in st.report.get("gpus", []):
            strays = [p for p in g.get("processes", []) if p.get("job_id") is None]
            if strays:
                pids = ", ".join(str(p.get("pid")) for p in strays[:3])
                out[int(g["index"])] = f"in use by pid {pids}, not a running labq job"
        return out

    def idle_for(self, job_id: int, now: float) -> float | None:
        ju = self.jobs.get(job_id)
        if ju is None or ju.idle_since is None:
            return None
        return now - ju.idle_since

    def gpu_history(self, node_id: str, index: int) -> list[tuple[float, int | None, int | None]]:
        return list(self.history.get((node_id, index), ()))


@dataclass(frozen=True)
class IdleVerdict:
    job_id: int
    idle_for: float
    action: str  # "flag" (note it, show it), "cancel" or "requeue"


def idle_verdicts(
    t: Telemetry, action_of: Callable[[str], str], window: float, after: float, now: float
) -> list[IdleVerdict]:
    """What to do about jobs whose GPUs have sat idle; each verdict is given once."""
    out: list[IdleVerdict] = []
    for ju in t.jobs.values():
        if ju.idle_since is None:
            continue
        idle_for = now - ju.idle_since
        if idle_for < window:
            continue
        if not ju.flagged_idle:
            ju.flagged_idle = True
            out.append(IdleVerdict(ju.job_id, idle_for, "flag"))
        action = action_of(ju.user)
        if action in ("cancel", "requeue") and idle_for >= window + after and not ju.action_taken:
            ju.action_taken = True
            out.append(IdleVerdict(ju.job_id, idle_for, action))
    return out


def usage_report(
    runs: list[dict[str, Any]],
    live: dict[int, dict[str, Any]],
    since: float,
    now: float,
    by: str,
) -> list[dict[str, Any]]:
    """`labq usage`: GPU-hours allocated and busy per researcher or per job since `since`.

    `runs` are the store's attempts (with their saved accounting); `live` the running
    jobs' totals so far. An attempt that started before `since` counts its share of
    busy and idle time pro rata to the part inside the window.
    """
    groups: dict[Any, dict[str, Any]] = {}
    for r in runs:
        end = r["end_time"] if r["end_time"] is not None else now
        inside = max(0.0, end - max(r["start_time"], since))
        full = end - r["start_time"]
        if inside <= 0:
            continue
        frac = inside / full if full > 0 else 1.0
        stats = live.get(r["job_id"]) if r["end_time"] is None else r
        key = r["user"] if by == "user" else r["job_id"]
        g = groups.get(key)
        if g is None:
            g = groups[key] = {
                "user": r["user"],
                "allocated_gpu_h": 0.0,
                "busy_gpu_h": 0.0,
                "idle_gpu_h": 0.0,
                "sampled_gpu_h": 0.0,
                "jobs": set(),
                "mem_peak": 0,
            }
            if by == "job":
                g.update(job_id=r["job_id"], name=r.get("name"), gpus=r["gpus"], state=r.get("state"))
        g["allocated_gpu_h"] += r["gpus"] * inside / 3600
        g["jobs"].add(r["job_id"])
        if stats and stats.get("sampled_s") is not None:
            g["busy_gpu_h"] += (stats.get("busy_gpu_s") or 0.0) * frac / 3600
            g["idle_gpu_h"] += (stats.get("idle_gpu_s") or 0.0) * frac / 3600
            g["sampled_gpu_h"] += (stats.get("sampled_s") or 0.0) * r["gpus"] * frac / 3600
            g["mem_peak"] = max(g["mem_peak"], int(stats.get("mem_peak") or 0))
    out = []
    for g in groups.values():
        g["jobs"] = len(g["jobs"])
        sampled = g.pop("sampled_gpu_h")
        g["util_mean"] = round(100.0 * g["busy_gpu_h"] / sampled, 1) if sampled > 0 else None
        for k in ("allocated_gpu_h", "busy_gpu_h", "idle_gpu_h"):
            g[k] = round(g[k], 4)
        out.append(g)
    out.sort(key=lambda g: (-g["allocated_gpu_h"], str(g.get("job_id", g["user"]))))
    return out
