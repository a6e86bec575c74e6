"""Two Ray nodes (Ray's own cluster_utils.Cluster), each with its own GPU monitor."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.conftest import Labq, cleanup, make_labq

BUSY = [sys.executable, "-c", "while True: pass"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 2})
    try:
        yield c
    finally:
        c.shutdown()


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
    lq = make_labq("grace_period_s: 2\nmin_runtime_s: 0\nmonitor_interval_s: 0.5\n")
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
        placed = {j["id"]: j["node"] for j in lq.json("queue")}
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
