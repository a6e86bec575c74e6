"""Daemon-side GPU history, per-job accounting, idle detection and usage: fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.telemetry import Holder, Telemetry, idle_verdicts, usage_report

GIB = 2**30


class Node:
    """Builds agent reports the way NodeAgent.poll shapes them."""

    def __init__(self, gpus: int) -> None:
        self.seq = 0
        self.util = dict.fromkeys(range(gpus), 0)
        self.lost: set[int] = set()

    def report(self, job_procs: dict[int, tuple[int, int]] | None = None) -> dict[str, Any]:
        """`job_procs`: gpu index -> (job id, bytes it holds there)."""
        self.seq += 1
        gpus: list[dict[str, Any]] = []
        for i, u in self.util.items():
            if i in self.lost:
                gpus.append(
                    {
                        "index": i,
                        "util_gpu": None,
                        "memory_used": None,
                        "healthy": False,
                        "problem": f"GPU {i} is lost",
                        "processes": [],
                    }
                )
                continue
            procs = []
            if job_procs and i in job_procs:
                job, mem = job_procs[i]
                procs.append({"pid": 100 + i, "used_memory": mem, "sm_util": u, "job_id": job})
            gpus.append(
                {
                    "index": i,
                    "util_gpu": u,
                    "memory_used": 5 * GIB,
                    "healthy": True,
                    "problem": "",
                    "processes": procs,
                }
            )
        return {"seq": self.seq, "pid": 1, "gpus": gpus}


def notify(user: str) -> str:
    return "notify"


def test_idle_job_is_flagged_after_the_window_and_not_before() -> None:
    t = Telemetry(interval=60.0)
    node = Node(2)
    job = [Holder(1, "ana", "n1", (0, 1), pid=10)]
    now = 0.0
    node.util = {0: 0, 1: 1}  # under the 2% threshold: idle
    verdicts = []
    while now <= 1800:
        t.ingest("n1", node.report(), now, job)
        verdicts += idle_verdicts(t, notify, window=1800, after=1800, now=now)
        if now < 1800:
            assert verdicts == []
        now += 60
    assert [(v.job_id, v.action, v.idle_for) for v in verdicts] == [(1, "flag", 1800.0)]
    # Flagged once, not every pass.
    t.ingest("n1", node.report(), now, job)
    assert idle_verdicts(t, notify, 1800, 1800, now) == []
    assert t.jobs[1].idle_gpu_s == pytest.approx(2 * 1860)


def test_one_busy_gpu_means_the_job_is_not_idle() -> None:
    t = Telemetry(interval=60.0)
    node = Node(2)
    job = [Holder(1, "ana", "n1", (0, 1), pid=10)]
    node.util = {0: 0, 1: 90}
    for step in range(40):
        t.ingest("n1", node.report(), step * 60.0, job)
    assert t.idle_for(1, 40 * 60.0) is None
    assert idle_verdicts(t, notify, 1800, 1800, 40 * 60.0) == []


def test_activity_resets_the_idle_clock_and_cancel_comes_after_a_further_window() -> None:
    t = Telemetry(interval=60.0)
    node = Node(1)
    job = [Holder(3, "bo", "n1", (0,), pid=10)]
    actions: list[tuple[str, float]] = []

    def step(now: float, util: int) -> None:
        node.util = {0: util}
        t.ingest("n1", node.report(), now, job)
        actions.extend((v.action, v.idle_for) for v in idle_verdicts(t, lambda u: "cancel", 600, 300, now))

    for m in range(0, 9):
        step(m * 60.0, 0)
    step(9 * 60.0, 80)  # woke up just before the window ended
    assert t.idle_for(3, 9 * 60.0) is None and actions == []
    for m in range(10, 30):
        step(m * 60.0, 0)
    assert actions == [("flag", 600.0), ("cancel", 900.0)]


def test_accounting_busy_idle_peak_and_gaps() -> None:
    t = Telemetry(interval=1.0)
    node = Node(2)
    job = [Holder(5, "cy", "n1", (0, 1), pid=10)]
    node.util = {0: 100, 1: 50}
    for s in range(11):
        t.ingest("n1", node.report({0: (5, 2 * GIB), 1: (5, 3 * GIB)}), float(s), job)
    ju = t.jobs[5]
    assert ju.sampled_s == pytest.approx(10)
    assert ju.busy_gpu_s == pytest.approx(15)  # 10 s x (1.0 + 0.5)
    assert ju.util_mean() == pytest.approx(75)
    assert ju.mem_peak == 5 * GIB  # its own processes, not the whole GPUs' 10 GiB
    # The agent went silent for 100 s: the gap counts 3 intervals, not 100 s.
    t.ingest("n1", node.report({0: (5, GIB)}), 110.0, job)
    assert ju.sampled_s == pytest.approx(13)
    # The same report delivered twice is one sample.
    r = node.report({0: (5, GIB), 1: (5, GIB)})
    assert t.ingest("n1", r, 111.0, job) and not t.ingest("n1", r, 112.0, job)
    totals = t.finish_job(5)
    assert totals is not None and totals["mem_peak"] == 5 * GIB and 5 not in t.jobs


def test_lost_gpu_is_unhealthy_and_not_accounted() -> None:
    t = Telemetry(interval=1.0)
    node = Node(2)
    job = [Holder(1, "ana", "n1", (1,), pid=10)]
    node.util = {0: 0, 1: 100}
    t.ingest("n1", node.report(), 0.0, job)
    t.ingest("n1", node.report(), 1.0, job)
    node.lost.add(1)
    t.ingest("n1", node.report(), 2.0, job)
    assert t.unhealthy("n1") == {1: "GPU 1 is lost"}
    assert t.jobs[1].sampled_s == pytest.approx(1.0) and t.jobs[1].util_now is None


def test_stale_node_keeps_last_values_with_age() -> None:
    t = Telemetry(interval=1.0, stale_after_s=5.0)
    node = Node(1)
    node.util = {0: 42}
    t.ingest("n1", node.report(), 100.0, [])
    assert not t.stale("n1", 104.0)
    assert t.stale("n1", 130.0) and t.age("n1", 130.0) == pytest.approx(30.0)
    assert t.nodes["n1"].report["gpus"][0]["util_gpu"] == 42


def test_history_is_bounded_to_the_window() -> None:
    t = Telemetry(interval=1.0, history_s=60.0)
    node = Node(1)
    for s in range(200):
        node.util = {0: s % 100}
        t.ingest("n1", node.report(), float(s), [])
    h = t.gpu_history("n1", 0)
    assert len(h) == 60 and h[-1] == (199.0, 99, 5 * GIB) and h[0][0] == 140.0
    t.forget_node("n1")
    assert t.gpu_history("n1", 0) == [] and "n1" not in t.nodes


def run(
    job: int, user: str, gpus: int, start: float, end: float | None, busy: float | None
) -> dict[str, Any]:
    return {
        "job_id": job,
        "user": user,
        "gpus": gpus,
        "start_time": start,
        "end_time": end,
        "sampled_s": None if busy is None else (end or 0) - start,
        "busy_gpu_s": busy,
        "idle_gpu_s": 0.0 if busy is not None else None,
        "mem_peak": GIB,
        "name": f"j{job}",
        "state": "SUCCEEDED",
    }


def test_usage_report_by_user_and_job_with_pro_rata_window() -> None:
    now = 10_000.0
    runs = [
        run(1, "ana", 2, 0.0, 3600.0, busy=3600.0),  # 2 GPUs x 1 h, 50% busy
        run(2, "ana", 1, 5000.0, None, None),  # still running; live totals below
        run(3, "bo", 4, 1000.0, 8200.0, busy=7200.0 * 4),  # half inside the window
    ]
    live = {2: {"sampled_s": 5000.0, "busy_gpu_s": 1000.0, "idle_gpu_s": 4000.0, "mem_peak": 2 * GIB}}
    by_user = {r["user"]: r for r in usage_report(runs, live, since=0.0, now=now, by="user")}
    assert by_user["ana"]["allocated_gpu_h"] == pytest.approx(2 + 5000 / 3600, abs=1e-3)
    assert by_user["ana"]["busy_gpu_h"] == pytest.approx((3600 + 1000) / 3600, abs=1e-3)
    assert by_user["ana"]["idle_gpu_h"] == pytest.approx(4000 / 3600, abs=1e-3)
    assert by_user["ana"]["jobs"] == 2
    windowed = {r["user"]: r for r in usage_report(runs, live, since=4600.0, now=now, by="user")}
    assert windowed["bo"]["allocated_gpu_h"] == pytest.approx(4 * 3600 / 3600, abs=1e-3)
    assert windowed["bo"]["busy_gpu_h"] == pytest.approx(4.0, abs=1e-3) and windowed["bo"]["util_mean"] == 100
    by_job = usage_report(runs, live, since=0.0, now=now, by="job")
    assert [r["job_id"] for r in by_job] == [3, 1, 2]  # most GPU-hours first
    assert by_job[1]["util_mean"] == 50.0 and by_job[1]["name"] == "j1"
