"""What a replay keeps of each job (SimJob) and what it reports (SimResult,
summarize): the records of simulator.py, which re-exports them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.traces import TraceJob


@dataclass
class SimJob:
    trace: TraceJob
    work_left: float  # seconds of the job's own work still to do
    restore: float = 0.0  # seconds of restoring a checkpoint, paid first at the next start
    first_start: float | None = None
    end: float | None = None
    start: float | None = None  # current attempt
    placement: tuple[tuple[str, int], ...] = ()
    stop_at: float | None = None  # preemption requested: GPUs free at this time
    attained: float = 0.0  # GPU-seconds of service so far (Tiresias)
    preemptions: int = 0
    requeued: bool = False
    run_gpu_s: float = 0.0  # GPU-seconds of useful work done (conservation check)
    scavenging: bool = False  # the current attempt runs as a scavenger (Start.preemptible)

    @property
    def id(self) -> int:
        return self.trace.id

    @property
    def remaining(self) -> float:
        return self.work_left + self.restore


@dataclass
class SimResult:
    policy: str
    jobs: int
    finished: int
    gpus: int
    jct: list[float]
    wait: list[float]
    makespan: float
    busy_gpu_s: float
    demand_gpu_s: float
    preempted_gpu_s: float
    per_tenant_jct: dict[str, float]
    passes: int
    preemptions: int

    @classmethod
    def from_jobs(
        cls,
        policy: str,
        jobs: list[SimJob],
        gpus: int,
        preempted_gpu_s: float,
        busy_gpu_s: float,
        passes: int,
    ) -> SimResult:
        done = [j for j in jobs if j.end is not None]
        jct = [j.end - j.trace.submit for j in done if j.end is not None]
        # Queueing delay: everything that was not running the job's own work.
        wait = [(j.end - j.trace.submit) - j.trace.duration for j in done if j.end is not None]
        first = min((j.trace.submit for j in jobs), default=0.0)
        last = max((j.end for j in done if j.end is not None), default=first)
        per: dict[str, list[float]] = {}
        for j in done:
            if j.end is not None:
                per.setdefault(j.trace.tenant, []).append(j.end - j.trace.submit)
        return cls(
            policy=policy,
            jobs=len(jobs),
            finished=len(done),
            gpus=gpus,
            jct=jct,
            wait=wait,
            makespan=last - first,
            busy_gpu_s=busy_gpu_s,
            demand_gpu_s=sum(j.trace.gpus * j.trace.duration for j in jobs),
            preempted_gpu_s=preempted_gpu_s,
            per_tenant_jct={t: statistics.fmean(v) for t, v in sorted(per.items())},
            passes=passes,
            preemptions=sum(j.preemptions for j in jobs),
        )


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def jain(xs: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one gets everything.

    Applied to share attainment min(1, 1/rho): a tenant doing at least as well as on
    its own dedicated slice has attained its share fully (1), so sharing that helps
    some tenants more than others is not counted as unfair.
    """
    if not xs:
        return 1.0
    sq = sum(x * x for x in xs)
    return (sum(xs) ** 2) / (len(xs) * sq) if sq > 0 else 1.0


def summarize(res: SimResult, alone: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The report: the keys the issue names, plus per-tenant detail and rho."""
    rho = {t: res.per_tenant_jct[t] / alone[t] for t in res.per_tenant_jct if alone and alone.get(t)}
    return {
        "policy": res.policy,
        "jobs": res.jobs,
        "finished": res.finished,
        "gpus": res.gpus,
        "mean_jct_s": statistics.fmean(res.jct) if res.jct else 0.0,
        "median_jct_s": statistics.median(res.jct) if res.jct else 0.0,
        "p99_jct_s": _pct(res.jct, 0.99),
        "mean_wait_s": statistics.fmean(res.wait) if res.wait else 0.0,
        "p99_wait_s": _pct(res.wait, 0.99),
        "makespan_s": res.makespan,
        "utilization": res.busy_gpu_s / (res.gpus * res.makespan) if res.makespan > 0 else 0.0,
        "max_rho": max(rho.values()) if rho else None,
        "rho_p50": statistics.median(rho.values()) if rho else None,
        "jain_index": jain([min(1.0, 1 / r) for r in rho.values()]) if rho else None,
        "preempted_gpu_hours": res.preempted_gpu_s / 3600,
        "preempted_fraction": res.preempted_gpu_s / res.busy_gpu_s if res.busy_gpu_s else 0.0,
        "preemptions": res.preemptions,
        "passes": res.passes,
        "per_tenant": {t: {"mean_jct_s": v, "rho": rho.get(t)} for t, v in res.per_tenant_jct.items()},
    }
