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
        # node -> (the `dirs` call's ref, the keys asked, when): at most one per node.
        self._dir_calls: dict[str, tuple[Any, list[tuple[int, str, str]], float]] = {}

    def sync(self, nodes: dict[str, int], simulate: dict[str, str] | None = None) -> None:
        """`nodes`: alive node id -> GPUs Ray advertises there; `simulate`: the GPU model
        a node's simulated GPUs are served as (its `labq.io/simulated-gpu` label)."""
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
                ).remote(node_id, gpus, self.interval, (simulate or {}).get(node_id, ""))
            except Exception as e:  # noqa: BLE001 - one node's monitor must not stop the others
                self.errors[node_id] = f"cannot start the GPU monitor: {e}"
        for node_id in [n for n in self.monitors if n not in nodes]:
            handle = self.monitors.pop(node_id)
            self.telemetry.forget_node(node_id)
            self._kill(handle)  # the node is gone; so, most likely, is its actor

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

    # -- directories (no shared filesystem) ----------------------------------------------
    SILENT_S = 20.0  # a node whose agent has not answered for this long is taken as silent

    def dirs_busy(self) -> set[str]:
        """Nodes with a `dirs` call not answered yet: one at a time per node."""
        return set(self._dir_calls)

    def dirs_send(self, node_id: str, keys: list[tuple[int, str, str]], now: float) -> None:
        m = self.monitors.get(node_id)
        if m is None or node_id in self._dir_calls:
            return
        try:
            ref = m.dirs.remote([list(k) for k in keys])
        except AttributeError:
            # A monitor of an older labq (detached actors outlive the daemon): dropped,
            # so that the next sync starts one that knows this.
            self.monitors.pop(node_id, None)
            self._kill(m)
            return
        self._dir_calls[node_id] = (ref, keys, now)

    def dirs_collect(
        self, alive: list[str], now: float, wait_s: float = 0.0
    ) -> tuple[dict[str, tuple[list[tuple[int, str, str]], list[bool | None]]], set[str]]:
        """Answers that have come (waiting up to `wait_s` for them), and the alive nodes
        that are silent: no monitor, or a call unanswered for SILENT_S."""
        import ray

        calls = self._dir_calls
        ready: list[Any] = []
        if calls:
            refs = [c[0] for c in calls.values()]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        done = set(ready)
        out: dict[str, tuple[list[tuple[int, str, str]], list[bool | None]]] = {}
        for node_id, (ref, keys, _sent) in list(calls.items()):
            if ref not in done:
                continue
            del calls[node_id]
            try:
                out[node_id] = (keys, list(ray.get(ref, timeout=1.0)))
            except Exception as e:  # noqa: BLE001 - a failed call: asked again next round
                log.debug("node %s did not say which directories it has: %s", node_id, e)
        silent = {n for n in alive if n not in self.monitors}
        silent |= {n for n, (_r, _k, sent) in calls.items() if now - sent > self.SILENT_S}
        return out, silent

    @staticmethod
    def _kill(handle: Any) -> None:
        import ray

        try:
            ray.kill(handle)
        except Exception:  # noqa: BLE001,S110 - gone already
            pass

    def stop_all(self) -> None:

        for handle in self.monitors.values():
            self._kill(handle)  # best effort at shutdown
        self.monitors.clear()
