"""The daemon's side of the node agents: one NodeMonitor actor per Ray node.

`Fleet.sync` starts a monitor on each node that joined (zero CPUs, hard node
affinity, detached and named so a restarted daemon finds it again) and drops the
monitors of nodes that left. `Fleet.poll` asks every monitor for its latest report
in parallel, telling each which labq jobs run on its node, and hands the answers
to `Telemetry`. A monitor that does not answer keeps its node's last values, which
the views then mark stale with their age.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from scheduler.agent import MONITOR_PREFIX, NodeMonitor
from scheduler.telemetry import Holder, Telemetry

log = logging.getLogger("labq.fleet")


class Fleet:
    def __init__(self, namespace: str, telemetry: Telemetry, interval: float) -> None:
        self.namespace = namespace
        self.telemetry = telemetry
        self.interval = interval
        self.monitors: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    def sync(self, nodes: dict[str, int]) -> None:
        """`nodes`: alive node id -> GPUs Ray advertises there."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        for node_id, gpus in nodes.items():
            if node_id in self.monitors:
                continue
            try:
                self.monitors[node_id] = NodeMonitor.options(  # type: ignore[attr-defined]
                    name=MONITOR_PREFIX + node_id,
                    namespace=self.namespace,
                    lifetime="detached",
                    get_if_exists=True,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
                ).remote(node_id, gpus, self.interval)
            except Exception as e:  # noqa: BLE001 - one node's monitor must not stop the others
                self.errors[node_id] = f"cannot start the GPU monitor: {e}"
        for node_id in [n for n in self.monitors if n not in nodes]:
            handle = self.monitors.pop(node_id)
            self.telemetry.forget_node(node_id)
            try:
                ray.kill(handle)
            except Exception:  # noqa: BLE001,S110 - the node is gone; so is its actor
                pass

    def poll(self, holders: Iterable[Holder], now: float, timeout: float) -> None:
        import ray

        by_node: dict[str, list[dict[str, Any]]] = {}
        all_holders = list(holders)
        for h in all_holders:
            by_node.setdefault(h.node, []).append({"job_id": h.job_id, "pid": h.pid, "gpus": list(h.gpus)})
        refs = {node_id: m.report.remote(by_node.get(node_id, [])) for node_id, m in self.monitors.items()}
        deadline = time.monotonic() + timeout
        for node_id, ref in refs.items():
            try:
                report = ray.get(ref, timeout=max(0.01, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001 - silent or dead monitor: keep last values
                self.errors[node_id] = f"the GPU monitor does not answer ({type(e).__name__})"
                if "ActorDied" in type(e).__name__ or "ActorUnavailable" in type(e).__name__:
                    self.monitors.pop(node_id, None)  # started again by the next sync
                continue
            self.errors.pop(node_id, None)
            if report:
                self.telemetry.ingest(node_id, report, now, all_holders)

    def dirs(self, asks: dict[str, list[tuple[int, str]]], timeout: float) -> dict[str, list[bool]]:
        """Ask each node's agent which of these (uid, directory) it has; a node that
        does not answer in time is left out (asked again next round)."""
        import ray

        refs = {}
        for node_id, keys in asks.items():
            m = self.monitors.get(node_id)
            if m is None:
                continue
            try:
                refs[node_id] = m.dirs.remote([list(k) for k in keys])
            except AttributeError:
                # A monitor of an older labq (detached actors outlive the daemon):
                # dropped, so that the next sync starts one that knows this.
                self.monitors.pop(node_id, None)
                try:
                    ray.kill(m)
                except Exception:  # noqa: BLE001,S110 - gone already
                    pass
        out: dict[str, list[bool]] = {}
        deadline = time.monotonic() + timeout
        for node_id, ref in refs.items():
            try:
                out[node_id] = list(ray.get(ref, timeout=max(0.01, deadline - time.monotonic())))
            except Exception as e:  # noqa: BLE001 - a silent node: nothing known there yet
                log.debug("node %s did not say which directories it has: %s", node_id, e)
        return out

    def stop_all(self) -> None:
        import ray

        for handle in self.monitors.values():
            try:
                ray.kill(handle)
            except Exception:  # noqa: BLE001,S110 - best effort at shutdown
                pass
        self.monitors.clear()
