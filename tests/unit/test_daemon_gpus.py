"""The daemon's use of GPU health: unhealthy GPUs are not offered, jobs on them flagged.

Runs the real Daemon methods over a real SQLite store; no Ray is needed for these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler.config import DaemonConfig
from scheduler.daemon import Daemon
from scheduler.gpuwatch import GpuWatch
from scheduler.job import JobSpec, JobState
from scheduler.launcher import MemoryLauncher
from scheduler.nodes import NodeRecord
from scheduler.policy import schedule
from scheduler.scheduling import held_gpus


def report(gpus: int, bad: dict[int, str], seq: int = 1) -> dict[str, Any]:
    return {
        "seq": seq,
        "pid": 1,
        "simulated": True,
        "nvml_gpus": 0,
        "gpus": [
            {
                "index": i,
                "util_gpu": None if i in bad else 0,
                "memory_used": 0,
                "healthy": i not in bad,
                "problem": bad.get(i, ""),
                "processes": [],
            }
            for i in range(gpus)
        ],
    }


def make(tmp_path: Path) -> Daemon:
    d = Daemon(tmp_path / "state", tmp_path / "sock", DaemonConfig(min_runtime_s=0), launcher=MemoryLauncher())
    d.open_store()
    d.nodes.set_all(
        {"n1": NodeRecord(id="n1", name="box", address="", gpus=4, cpus=8, memory=0, simulated=True, nvml_gpus=0)}
    )
    return d


def running(d: Daemon, gpus: str, user: str = "ana") -> int:
    job = d.store.add_job(
        user, 1000, JobSpec.model_validate({"command": ["x"], "gpus": len(gpus.split(","))})
    )
    d.store.transition(job, JobState.STARTING, "placed", node="n1", node_name="box", attempt=1, gpu_ids=gpus)
    d.store.transition(job, JobState.RUNNING, "running", pid=4242, start_time=1.0)
    return job


def test_an_unhealthy_free_gpu_is_not_offered(tmp_path: Path) -> None:
    d = make(tmp_path)
    d.gpus.telemetry.ingest("n1", report(4, {1: "GPU 1 is lost"}), 10.0, [])
    snap = d.scheduler.snapshot(10.0)
    assert snap.nodes[0].gpus == 3
    assert d.scheduler.pick_gpus("n1", 3, {}) == (0, 2, 3)
    assert d.scheduler.pick_gpus("n1", 4, {}) is None
    # A 4-GPU job waits, and says why in GPUs.
    job = d.store.add_job("bo", 1001, JobSpec.model_validate({"command": ["x"], "gpus": 4}))
    decision = schedule(d.scheduler.snapshot(10.0))
    assert decision.starts == () and job in decision.waiting


def test_a_job_on_a_gpu_that_turns_bad_is_flagged_and_the_gpu_not_reused(tmp_path: Path) -> None:
    d = make(tmp_path)
    d.gpus.telemetry.ingest("n1", report(4, {}), 10.0, [])
    job = running(d, "2")
    held = held_gpus(d.store.jobs(states=(JobState.RUNNING,)))
    assert held == {"n1": {2}} and d.scheduler.pick_gpus("n1", 3, held) == (0, 1, 3)
    d.gpus.telemetry.ingest("n1", report(4, {2: "uncorrected ECC errors rose from 0 to 3"}, seq=2), 11.0, [])
    d.gpus.flag_unhealthy(d.store.jobs(states=(JobState.RUNNING,)), 11.0)
    row = d.store.get(job)
    assert d.gpus.gpu_flags(row, 11.0) == ["GPU 2 unhealthy"]
    assert d.store.events(job)[-1]["reason"] == "GPU 2 unhealthy: uncorrected ECC errors rose from 0 to 3"
    # Held by the job it still counts once (as used); once the job ends it is unusable.
    assert d.scheduler.snapshot(11.0).nodes[0].gpus == 4
    d.store.transition(job, JobState.FAILED, "ended", end_time=12.0)
    assert d.scheduler.snapshot(12.0).nodes[0].gpus == 3
    assert d.scheduler.pick_gpus("n1", 3, {}) == (0, 1, 3)


def test_ray_and_nvml_disagree_leaves_the_choice_to_ray(tmp_path: Path) -> None:
    d = make(tmp_path)
    # e.g. the raylet started with CUDA_VISIBLE_DEVICES=0,1,2,3
    d.nodes.update_monitor("n1", simulated=False, nvml_gpus=8, note="")
    assert d.scheduler.pick_gpus("n1", 1, {}) is None
    node = d.nodes.get("n1")
    assert node is not None
    note = GpuWatch.cross_check(node, {"simulated": False, "nvml_gpus": 8})
    assert note == "Ray advertises 4 GPUs but NVML counts 8"


def test_a_gpu_a_stray_process_holds_is_not_offered_and_is_flagged(tmp_path: Path) -> None:
    """A process an ended job left behind (or one started outside labq) still holds GPU 2:
    no new job gets it, and `labq gpus` says why. Once it is gone, the GPU is offered again."""
    d = make(tmp_path)
    r = report(4, {})
    r["gpus"][2]["processes"] = [{"pid": 777, "used_memory": 1 << 30, "sm_util": 90, "job_id": None}]
    d.gpus.telemetry.ingest("n1", r, 10.0, [])
    assert d.scheduler.snapshot(10.0).nodes[0].gpus == 3
    assert d.scheduler.pick_gpus("n1", 3, {}) == (0, 1, 3)
    assert d.scheduler.pick_gpus("n1", 4, {}) is None
    g2 = next(g for g in d.gpus.node_views()[0]["gpu_list"] if g["index"] == 2)
    assert "pid 777" in g2["blocked"] and "not a running labq job" in g2["blocked"]
    d.gpus.telemetry.ingest("n1", report(4, {}, seq=2), 11.0, [])
    assert d.scheduler.snapshot(11.0).nodes[0].gpus == 4


def test_a_running_jobs_own_gpu_is_not_blocked_by_its_processes(tmp_path: Path) -> None:
    d = make(tmp_path)
    job = running(d, "1")
    r = report(4, {})
    r["gpus"][1]["processes"] = [{"pid": 999, "used_memory": 1, "sm_util": 5, "job_id": None}]
    d.gpus.telemetry.ingest("n1", r, 10.0, [])
    # GPU 1 is the job's: 3 free GPUs are left, as without the stray process.
    assert d.gpus.unusable("n1") == {1} and d.scheduler.snapshot(10.0).nodes[0].gpus == 4
    g1 = next(g for g in d.gpus.node_views()[0]["gpu_list"] if g["index"] == 1)
    assert g1["job_id"] == job and g1["blocked"] is None


def test_gpus_ray_chose_before_the_first_report_are_never_handed_out_again(tmp_path: Path) -> None:
    """A job started before the node's first GPU report gets whatever GPU Ray chooses, and
    says which only once it runs. Seen under load (test_core's six jobs, two RUNNING with
    CUDA_VISIBLE_DEVICES=0): the report came, and labq picked GPU 0 for the next job while
    Ray was giving the first one GPU 0. Until the first job's GPUs are known, Ray chooses
    for the node's next ones too; then labq picks around them."""
    d = make(tmp_path)
    d.nodes.set_all({"n1": NodeRecord(id="n1", name="box", address="", gpus=4, cpus=8, memory=0, simulated=True)})
    spec = JobSpec.model_validate({"command": ["x"], "gpus": 1})
    first = d.store.add_job("ana", 1000, spec)
    d.scheduler.one_pass()
    assert d.store.get(first).state is JobState.STARTING and d.store.get(first).gpu_ids is None  # Ray chooses
    d.gpus.telemetry.ingest("n1", report(4, {}), 10.0, [])
    d.nodes.update_monitor("n1", simulated=True, nvml_gpus=0, note="")
    second = d.store.add_job("ana", 1000, spec)
    d.scheduler.one_pass()
    assert d.store.get(second).state is JobState.STARTING
    assert d.store.get(second).gpu_ids is None  # not "0": the first one's GPU is not known yet
    # Both say which GPUs Ray gave them; from then on labq picks around those.
    for job, got in ((first, "0"), (second, "1")):
        d.store.transition(job, JobState.RUNNING, "running", pid=4242, start_time=1.0, gpu_ids=got)
    third = d.store.add_job("ana", 1000, spec)
    d.scheduler.one_pass()
    assert d.store.get(third).gpu_ids == "2"
