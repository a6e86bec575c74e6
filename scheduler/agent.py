"""The per-node GPU agent: one zero-CPU Ray actor pinned to each node.

It polls NVML (or, on a node whose GPUs Ray was told about but NVML cannot see,
the same fake NVML the tests use, marked simulated) every `interval` seconds in
its own thread, reads host CPU and memory with psutil, and maps every GPU process
to the labq job whose process tree holds it. The daemon pulls the latest report
once per interval and tells the agent which jobs run on its node with the same
call, so the agent keeps no state the daemon cannot rebuild.

`NodeAgent` is plain Python (tested without a Ray cluster); `NodeMonitor` is its Ray face.
"""

from __future__ import annotations

import os
import pwd
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import psutil
import ray

from scheduler.gpu import GpuInventory, detect
from scheduler.monitor import GpuSample, GpuSampler, job_for_pid
from scheduler.safefs import workdir_problem

MONITOR_PREFIX = "labq-monitor-"


@dataclass(frozen=True)
class JobOnNode:
    """What the daemon tells the agent about one running job on its node."""

    job_id: int
    pid: int  # the job's top process (its session leader)
    gpus: tuple[int, ...]  # GPU indices it holds


def _parent(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds used so far by a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total


class NodeAgent:
    def __init__(
        self,
        node_id: str,
        ray_gpus: int,
        nvml: ModuleType | Any | None = None,
        clock: Callable[[], float] = time.time,
        parent: Callable[[int], int | None] = _parent,
        simulate: str = "",
    ) -> None:
        """`nvml`: the pynvml module to use (tests pass a FakeNVML); None = the real one.
        `simulate`: the GPU model simulated GPUs are served as (fakenvml.MODELS; '' = h200)."""
        self.node_id = node_id
        self.ray_gpus = ray_gpus
        self.clock = clock
        self.parent = parent
        self.jobs: dict[int, JobOnNode] = {}
        self.activity: dict[int, float] = {}  # job pid -> 0..1 share of one core, last interval
        self._cpu_seen: dict[int, tuple[float, float]] = {}  # job pid -> (cpu seconds, at)
        self.lock = threading.Lock()
        self.seq = 0
        self.latest: dict[str, Any] = {}
        self.inventory: GpuInventory = detect(nvml)
        self.simulated = False
        driver: Any = None
        if self.inventory.count > 0:
            driver = nvml
            if driver is None:
                import pynvml

                driver = pynvml
        elif ray_gpus > 0:
            # Ray was told this node has GPUs that NVML cannot see (`labq up --gpus N`):
            # serve them from the recording, following the jobs on them.
            from scheduler.fakenvml import FakeNVML

            driver = FakeNVML(ray_gpus, load=self._pids_on, clock=clock, activity=self._activity_of,
                              model=simulate or "h200")  # fmt: skip
            self.simulated = True
        self.sampler = None if driver is None else GpuSampler(driver, clock=clock)
        psutil.cpu_percent(None)  # first call primes the counter

    # -- what the simulated GPUs follow -------------------------------------------------------
    def _pids_on(self, index: int) -> list[int]:
        return [j.pid for j in self.jobs.values() if index in j.gpus]

    def _activity_of(self, pid: int) -> float:
        return self.activity.get(pid, 0.0)

    def _measure_activity(self) -> None:
        now = time.monotonic()
        seen: dict[int, tuple[float, float]] = {}
        for j in self.jobs.values():
            cpu = _tree_cpu_seconds(j.pid)
            if cpu is None:
                continue
            before = self._cpu_seen.get(j.pid)
            if before is not None and now > before[1]:
                self.activity[j.pid] = max(0.0, min(1.0, (cpu - before[0]) / (now - before[1])))
            seen[j.pid] = (cpu, now)
        self._cpu_seen = seen
        self.activity = {p: a for p, a in self.activity.items() if p in seen}

    # -- the poll ----------------------------------------------------------------------------
    def set_jobs(self, jobs: list[JobOnNode]) -> None:
        with self.lock:
            self.jobs = {j.job_id: j for j in jobs}

    def poll(self) -> dict[str, Any]:
        """Sample everything once; the result is plain data (it crosses Ray)."""
        with self.lock:
            if self.simulated:
                self._measure_activity()
            samples: list[GpuSample] = self.sampler.sample() if self.sampler else []
            roots = {j.pid: j.job_id for j in self.jobs.values()}
            gpus = []
            for g in samples:
                d = asdict(g)
                d["processes"] = [
                    {**p, "job_id": job_for_pid(p["pid"], roots, self.parent)} for p in d["processes"]
                ]
                d["mig_mode"] = None if g.mig_mode is None else list(g.mig_mode)
                gpus.append(d)
            vm = psutil.virtual_memory()
            self.seq += 1
            report = {
                "node_id": self.node_id,
                "seq": self.seq,
                "time": self.clock(),
                "pid": os.getpid(),
                "simulated": self.simulated,
                "ray_gpus": self.ray_gpus,
                "nvml_gpus": self.inventory.count,
                "driver": self.inventory.driver,
                "why_none": self.inventory.why_none,
                "host": {
                    "cpu_percent": psutil.cpu_percent(None),
                    "cpus": psutil.cpu_count() or 0,
                    "memory_total": vm.total,
                    "memory_used": vm.total - vm.available,
                },
                "gpus": gpus,
            }
            self.latest = report
            return report

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()


DIRS_BUDGET_S = 2.0  # per call: what is left is answered None and asked again next round


def has_dirs(
    queries: Sequence[Sequence[Any]], budget_s: float = DIRS_BUDGET_S, clock: Callable[[], float] = time.monotonic
) -> list[bool | None]:
    """For each (uid, user, directory): could that user's job run there on this node?
    The account must exist here under the same name (machines without a shared account
    database may give one uid to two people), and the directory must not be missing
    as far as they could tell by themselves (`workdir_problem`): the agent is root, and
    must tell nobody what lies behind a directory they may not enter. None: not looked
    at within the time budget (a hung mount, or a queue of slow paths)."""
    deadline = clock() + budget_s
    out: list[bool | None] = []
    for q in queries:
        if clock() > deadline:
            out.append(None)
            continue
        try:
            uid, user, path = int(q[0]), str(q[1]), q[2]
            same = pwd.getpwuid(uid).pw_name == user
        except (KeyError, ValueError, OverflowError, IndexError, TypeError):
            out.append(False)
            continue
        ok = same and isinstance(path, str) and path.startswith("/") and len(path) < 4096
        out.append(bool(ok) and workdir_problem(path, uid) == "")
    return out


def jobs_from_wire(jobs: Sequence[Mapping[str, Any]]) -> list[JobOnNode]:
    return [JobOnNode(int(j["job_id"]), int(j["pid"]), tuple(int(g) for g in j["gpus"])) for j in jobs]


# `dirs` has a thread of its own: a slow filesystem must never hold up the reports.
@ray.remote(num_cpus=0, max_concurrency=4, max_restarts=0, concurrency_groups={"dirs": 1})  # type: ignore[call-overload]
class NodeMonitor:
    """The Ray face of NodeAgent: polls in a thread, answers `report` with the latest."""

    def __init__(self, node_id: str, ray_gpus: int, interval: float, simulate: str = "") -> None:
        self.agent = NodeAgent(node_id, ray_gpus, simulate=simulate)
        self.interval = interval
        self.agent.poll()
        threading.Thread(target=self._loop, name="labq-nvml", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.agent.poll()
            except Exception as e:  # noqa: BLE001 - a bad poll must not end the monitor
                self.agent.latest = {**self.agent.latest, "error": f"{type(e).__name__}: {e}"}

    def report(self, jobs: list[dict[str, Any]]) -> dict[str, Any]:
        self.agent.set_jobs(jobs_from_wire(jobs))
        return self.agent.latest

    def ping(self) -> dict[str, Any]:
        return {"node_id": self.agent.node_id, "pid": os.getpid(), "interval": self.interval}

    @ray.method(concurrency_group="dirs")  # type: ignore[call-arg]
    def dirs(self, queries: list[list[Any]]) -> list[bool | None]:
        return has_dirs(queries)
