"""Two Ray nodes (Ray's own cluster_utils.Cluster), each with its own GPU monitor."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.conftest import Labq, cleanup, make_labq, unix_user, wait_for

pytestmark = pytest.mark.integration

BUSY = [sys.executable, "-c", "while True: pass"]
# Ray's own test cluster runs in this process's environment without token auth (on
# loopback, for this test alone); labq refuses such a cluster unless told so.
OPEN = "ray_auth: disabled\n"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    settings = {
        "RAY_AUTH_MODE": "disabled",
        # Notice a dead node in a couple of seconds rather than the default ~30.
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_failure_threshold": "3",
    }
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    from ray.cluster_utils import Cluster

    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 2})
        try:
            yield c
        finally:
            c.shutdown()
    finally:
        # Later modules' daemons inherit this process's environment: give it back.
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def nodes(lq: Labq) -> list[dict[str, Any]]:
    return list(lq.json("gpus")["nodes"])


def wait_nodes(lq: Labq, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        ns = nodes(lq)
        if len(ns) == count and all(len(n["gpu_list"]) == n["gpus"] for n in ns):
            return ns
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} reporting nodes, got {ns}")
        time.sleep(0.5)


def test_each_node_has_its_own_monitor_and_nodes_come_and_go(cluster: Any) -> None:
    lq = make_labq(OPEN + "grace_period_s: 2\nmin_runtime_s: 0\nmonitor_interval_s: 0.5\n")
    try:
        lq.up("--address", cluster.address)
        wait_nodes(lq, 1)
        worker = cluster.add_node(num_cpus=1, num_gpus=2)
        ns = wait_nodes(lq, 2)
        pids = {n["monitor_pid"] for n in ns}
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
        assert all(n["simulated"] and n["gpus"] == 2 for n in ns)

        jobs = [lq.submit("--gpus", "2", "--", *BUSY) for _ in range(2)]
        lq.wait_all(jobs, ("RUNNING",))
        placed = {j["id"]: j["node"] for j in lq.queue()}
        assert len(set(placed.values())) == 2  # one 2-GPU job per node

        deadline = time.monotonic() + 30
        while True:
            by_node = {n["id"]: n for n in nodes(lq)}
            holders = {nid: {g["job_id"] for g in n["gpu_list"]} for nid, n in by_node.items()}
            if all(holders[placed[j]] == {j} for j in jobs):
                break
            assert time.monotonic() < deadline, holders
            time.sleep(0.5)
        for j in jobs:
            n = by_node[placed[j]]
            assert all(p["job_id"] == j for g in n["gpu_list"] for p in g["processes"])

        # The worker node leaves: its monitor is dropped with it.
        cluster.remove_node(worker)
        ns = wait_nodes(lq, 1, timeout=90)
        assert ns[0]["monitor_pid"] in pids
        for j in jobs:
            lq.run("cancel", str(j), check=False)
    finally:
        cleanup(lq)


def test_a_lost_node_ends_its_jobs_node_lost_and_they_are_retried(cluster: Any) -> None:
    lq = make_labq(OPEN + "grace_period_s: 2\nmin_runtime_s: 0\nmonitor_interval_s: 0.5\nnode_lost_retries: 1\n")
    try:
        lq.up("--address", cluster.address)
        worker = cluster.add_node(num_cpus=1, num_gpus=2)
        wait_nodes(lq, 2)
        jobs = [lq.submit("--gpus", "2", "--", *BUSY) for _ in range(2)]
        lq.wait_all(jobs, ("RUNNING",))
        on_worker = next(j for j in lq.queue() if j["node"] == worker.node_id)
        victim = int(on_worker["id"])

        cluster.remove_node(worker, allow_graceful=False)
        # NODE_LOST, then requeued at once (retry 1 of 1): a poll may see the moment
        # between the two writes, so wait for the requeue itself.
        j = lq.wait(victim, ("PENDING",), timeout=90)
        assert j["state"] == "PENDING", [e["reason"] for e in j["events"]]
        lost = [e for e in j["events"] if e["new_state"] == "NODE_LOST"]
        assert (
            len(lost) == 1
            and "was lost at" in lost[0]["reason"]
            and on_worker["node_name"] in lost[0]["reason"]
        )
        assert any("retry 1 of 1" in e["reason"] for e in j["events"])
        assert len(wait_nodes(lq, 1)) == 1  # its GPUs left the inventory
        assert j["reasons"] and j["attempt"] == 1

        # The node comes back (a new raylet): its GPUs return and the job runs again.
        back = cluster.add_node(num_cpus=1, num_gpus=2)
        wait_nodes(lq, 2, timeout=90)
        j = lq.wait(victim, ("RUNNING",), timeout=90)
        assert j["attempt"] == 2 and j["node"] == back.node_id

        # A second loss is past the retry budget: the job stays NODE_LOST.
        cluster.remove_node(back, allow_graceful=False)
        j = lq.wait(victim, ("NODE_LOST",), timeout=90)
        assert j["state"] == "NODE_LOST" and j["reasons"][0].startswith("node ")
        for other in jobs:
            lq.run("cancel", str(other), check=False)
    finally:
        cleanup(lq)


# A rendezvous with the stdlib alone: rank 0 listens on $LABQ_MASTER_PORT, every other
# rank connects to $LABQ_MASTER_ADDR and says who it is (what torchrun's c10d store does).
RENDEZVOUS = """
import os, socket, sys, time
rank, n = int(os.environ["LABQ_NODE_RANK"]), int(os.environ["LABQ_NNODES"])
addr, port = os.environ["LABQ_MASTER_ADDR"], int(os.environ["LABQ_MASTER_PORT"])
print(f"rank {rank}/{n} gpus={os.environ['CUDA_VISIBLE_DEVICES']} world={os.environ['WORLD_SIZE']}", flush=True)
if rank == 0:
    srv = socket.create_server(("", port))
    srv.settimeout(60)
    for _ in range(n - 1):
        conn, _ = srv.accept()
        print("rank 0 heard:", conn.recv(200).decode(), flush=True)
else:
    for _ in range(300):
        try:
            conn = socket.create_connection((addr, port), timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    conn.sendall(f"hello from rank {rank}".encode())
    print("rank", rank, "said hello", flush=True)
"""


def test_a_job_over_two_nodes_meets_fails_as_one_and_is_requeued_whole(cluster: Any) -> None:
    lq = make_labq(OPEN + "grace_period_s: 2\nmin_runtime_s: 0\nmonitor_interval_s: 0.5\nnode_lost_retries: 1\n")
    try:
        lq.up("--address", cluster.address)
        worker = cluster.add_node(num_cpus=1, num_gpus=2)
        wait_nodes(lq, 2)
        # Both ranks start, meet at rank 0's address and port, and the job succeeds.
        met = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--", sys.executable, "-c", RENDEZVOUS)
        j = lq.wait(met, ("SUCCEEDED", "FAILED", "LOST"), timeout=90)
        assert j["state"] == "SUCCEEDED", (j["reason"], lq.log(met), lq.run("logs", str(met), "--rank", "1").stdout)
        assert {r["node"] for r in j["ranks"]} == {n["id"] for n in nodes(lq)}
        assert "rank 0 heard: hello from rank 1" in lq.log(met) and "rank 0/2 gpus=0,1 world=2" in lq.log(met)
        assert "rank 1 said hello" in lq.run("logs", str(met), "--rank", "1").stdout
        every = lq.run("logs", str(met), "--all-ranks").stdout
        assert "[rank 0] rank 0 heard: hello from rank 1" in every and "[rank 1] rank 1 said hello" in every
        # A one-node job is a gang of one: the same LABQ_* names, so one script serves both.
        one = lq.submit("--gpus", "2", "--", "sh", "-c",
                        "echo one $LABQ_NODE_RANK/$LABQ_NNODES/$LABQ_GPUS_PER_NODE/$LABQ_MASTER_ADDR/${MASTER_ADDR:-unset}")  # fmt: skip
        assert lq.wait(one, ("SUCCEEDED", "FAILED"), timeout=60)["state"] == "SUCCEEDED"
        assert "one 0/1/2/127.0.0.1/unset" in lq.log(one), lq.log(one)
        refused = lq.run("logs", str(one), "--rank", "1", check=False)
        assert refused.returncode == 1 and "one node: rank 0 only" in refused.stderr

        # Rank 1 fails: rank 0 (which would sleep) is stopped within the grace, one end.
        fails = lq.submit("--gpus", "4", "--", "sh", "-c", 'if [ "$LABQ_NODE_RANK" = 1 ]; then sleep 1; exit 3; fi; sleep 300')
        j = lq.wait(fails, ("FAILED", "SUCCEEDED", "LOST"), timeout=90)
        assert j["state"] == "FAILED" and j["reason"] == "rank 1 exited 3", j["reason"]
        assert j["end_time"] - j["start_time"] < 1 + 2 + 5  # rank 1's second, the grace, 5 s

        # The daemon dies while a gang runs: the new one adopts it (attempt 1 goes on).
        adopted = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--", "sleep", "6")
        lq.wait(adopted, ("RUNNING",), timeout=90)
        os.kill(lq.daemon_pid(), 9)
        lq.up("--address", cluster.address)
        j = lq.wait(adopted, ("SUCCEEDED", "FAILED", "LOST", "NODE_LOST"), timeout=90)
        assert j["state"] == "SUCCEEDED" and j["attempt"] == 1, (j["state"], j["reason"])

        # Cancelled: every rank stops.
        gone = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--", *BUSY)
        lq.wait(gone, ("RUNNING",), timeout=90)
        pids = [r["pid"] for r in lq.job(gone)["ranks"]]
        assert all(psutil.pid_exists(p) for p in pids)
        lq.run("cancel", str(gone))
        lq.wait(gone, ("CANCELLED",), timeout=30)
        wait_for("every rank stopped", lambda: not any(psutil.pid_exists(p) for p in pids), 15)

        # A borrowed gang is reclaimed for a researcher under her guarantee: every rank
        # stops within the grace, the gang is back in the queue, her job runs (a job
        # over several nodes was never a victim, and she waited for its whole limit).
        if os.geteuid() == 0:
            carol = unix_user("labqtest-carol")
            lq.run("quota", "set", "labqtest-carol", "--guaranteed-gpus", "2")
            borrowed = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--", *BUSY)
            lq.wait(borrowed, ("RUNNING",), timeout=90)
            pids = [r["pid"] for r in lq.job(borrowed)["ranks"]]
            mine = lq.submit("--gpus", "2", "--", "sleep", "300", user=carol, cwd="/tmp")
            lq.wait(mine, ("RUNNING",), timeout=60)
            wait_for("every rank of the reclaimed gang stopped", lambda: not any(psutil.pid_exists(p) for p in pids), 15)
            j = lq.job(borrowed)
            assert j["state"] == "PENDING" and "PREEMPTED" in [e["new_state"] for e in j["events"]], j["events"]
            lq.run("cancel", "--now", str(borrowed), str(mine))
            lq.wait(mine, ("CANCELLED",), timeout=30)
            lq.run("quota", "set", "labqtest-carol", "--guaranteed-gpus", "0")

        # Behind one-node jobs a gang waits with a reservation on both nodes; a short job
        # backfills around it, a long one does not; it starts once its nodes are free.
        long = lq.submit("--gpus", "2", "--time", "2h", "--", *BUSY)
        lq.wait(long, ("RUNNING",), timeout=60)
        short = lq.submit("--gpus", "1", "--time", "1h", "--", *BUSY)
        lq.wait(short, ("RUNNING",), timeout=60)
        gang = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--time", "1h", "--", "true")
        wait_for("the gang's reservation", lambda: "reserved on" in " ".join(lq.job(gang).get("reasons", [])), 30)
        late = lq.submit("--gpus", "1", "--time", "3h", "--", *BUSY)
        wait_for("the long job held back", lambda: "backfill: would delay" in " ".join(lq.job(late).get("reasons", [])), 30)
        fits = lq.submit("--gpus", "1", "--time", "30m", "--", *BUSY)
        lq.wait(fits, ("RUNNING",), timeout=60)  # backfilled: it ends before the gang's start
        assert lq.job(gang)["state"] == "PENDING" and lq.job(late)["state"] == "PENDING"
        lq.run("cancel", "--now", str(long), str(short), str(fits))
        j = lq.wait(gang, ("SUCCEEDED", "FAILED", "LOST"), timeout=60)
        assert j["state"] == "SUCCEEDED", j["reason"]
        lq.run("cancel", "--now", str(late))
        lq.wait(late, ("CANCELLED",), timeout=30)

        # A node is lost mid-job: the whole gang is NODE_LOST and requeued; with one node
        # left it waits, saying so.
        lost = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--", *BUSY)
        lq.wait(lost, ("RUNNING",), timeout=90)
        pids = [r["pid"] for r in lq.job(lost)["ranks"]]
        cluster.remove_node(worker, allow_graceful=False)
        j = lq.wait(lost, ("PENDING",), timeout=90)
        assert [e["new_state"] for e in j["events"]][-2:] == ["NODE_LOST", "PENDING"], j["events"]
        wait_for("rank 0 stopped with its gang", lambda: not psutil.pid_exists(pids[0]), 30)
        lq.passes(2)
        assert lq.job(lost)["state"] == "PENDING" and lq.job(lost)["reasons"], lq.job(lost)
        lq.run("cancel", str(lost))

        # A node a gang was placed on leaves before its ranks meet: the gang is back in the
        # queue at the next node watch, not after GANG_MEET_S (60 s). A Ray task labq does
        # not know of holds Ray's GPUs on the new node, so the ranks cannot meet there.
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        spare = cluster.add_node(num_cpus=1, num_gpus=2)
        wait_nodes(lq, 2)
        flag = lq.root / "held"
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        try:
            hold = ray.remote(num_gpus=2, num_cpus=0)(lambda path: (open(path, "w").close(), time.sleep(300)))
            hold.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(spare.node_id, soft=False), max_retries=0
            ).remote(str(flag))
            wait_for("Ray's GPUs on the new node held", flag.exists, 60)
            stuck = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--", "true")
            lq.wait(stuck, ("STARTING",), timeout=30)
            t0 = time.monotonic()
            cluster.remove_node(spare, allow_graceful=False)
            j = lq.wait(stuck, ("PENDING",), timeout=60)
            assert time.monotonic() - t0 < 20, j["events"]
            assert any("left before its ranks met" in e["reason"] for e in j["events"]), j["events"]
            assert "NODE_LOST" not in [e["new_state"] for e in j["events"]]
            lq.run("cancel", str(stuck))
        finally:
            ray.shutdown()
    finally:
        cleanup(lq)


ALL_REDUCE = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1) * dist.get_rank()
dist.all_reduce(t)
print(f"worker {dist.get_rank()}/{dist.get_world_size()} sum {int(t.item())}", flush=True)
dist.barrier()
dist.destroy_process_group()  # else gloo's threads may abort the process at exit
"""


def test_torchrun_finds_its_rendezvous_in_what_labq_sets(cluster: Any, tmp_path: Any) -> None:
    """A bare `torchrun script.py` over two nodes (gloo on CPU): nnodes, node rank, master
    and processes per node come from labq's PET_* variables."""
    pytest.importorskip("torch", reason="torch is not installed in this environment: torchrun cannot be tried")
    lq = make_labq(OPEN + "grace_period_s: 2\nmin_runtime_s: 0\nmonitor_interval_s: 0.5\n")
    try:
        lq.up("--address", cluster.address)
        extra = cluster.add_node(num_cpus=1, num_gpus=2)
        wait_nodes(lq, 2)
        script = lq.work() / "allreduce.py"
        script.write_text(ALL_REDUCE)
        job = lq.submit("--nodes", "2", "--gpus-per-node", "2", "--", sys.executable, "-m", "torch.distributed.run",
                        str(script))  # fmt: skip
        j = lq.wait(job, ("SUCCEEDED", "FAILED", "LOST"), timeout=180)
        every = lq.run("logs", str(job), "--all-ranks").stdout
        assert j["state"] == "SUCCEEDED", (j["reason"], every)
        assert every.count("sum 6") == 4, every  # 4 workers (2 per node), ranks 0+1+2+3
        cluster.remove_node(extra)
    finally:
        cleanup(lq)
