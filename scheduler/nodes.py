"""The daemon's picture of the cluster's nodes, and which of them may take new jobs.

`NodeBook` owns three things, behind one lock:
- the nodes Ray reports alive (refreshed by the Ray link every couple of seconds);
- the nodes known dead: a task reported its node gone before Ray's node table caught
  up; nothing is placed there again (a node that comes back has a new id);
- the node *names* an admin drained (names survive a node's restart), persisted in the
  store's meta table.
Readers get copies; nobody outside holds the dicts.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from scheduler.gputypes import LABEL_PREFIX, SIMULATE_LABEL
from scheduler.store import Store


@dataclass
class NodeRecord:
    id: str
    name: str
    address: str
    gpus: int
    cpus: float
    memory: float
    simulated: bool
    alive: bool = True
    schedulable: bool = True
    nvml_gpus: int | None = None
    note: str = ""
    # False: a Ray node that did not come in through `labq join` (team head only).
    trusted: bool = True
    # Issue 15: its GPUs' type (gputypes.gpu_type of NVML's product name, once its
    # monitor has reported), the labels it was started with (`labels:`, `--labels`),
    # and the model its simulated GPUs are served as (`--simulate-gpu`).
    gpu_type: str = ""
    labels: tuple[str, ...] = ()
    simulate: str = ""

    def public(self) -> dict[str, Any]:
        return dict(self.__dict__)


class NodeBook:
    def __init__(self, store: Store | None = None) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeRecord] = {}
        self._dead: set[str] = set()
        self._in_ray: dict[str, NodeRecord] = {}  # Ray's alive list as last seen, dead-marked ones too
        self.store = store
        self._drained: set[str] = (
            set(json.loads(store.get_meta("drained_nodes") or "[]")) if store is not None else set()
        )

    # -- reading -------------------------------------------------------------------------------
    def all(self) -> list[NodeRecord]:
        with self._lock:
            return [replace(n) for n in self._nodes.values()]

    def get(self, node_id: str) -> NodeRecord | None:
        with self._lock:
            n = self._nodes.get(node_id)
            return replace(n) if n is not None else None

    def __contains__(self, node_id: object) -> bool:
        with self._lock:
            return node_id in self._nodes

    def lost_addresses(self) -> set[str]:
        """Addresses of nodes labq took for lost that Ray still lists (cut off, and
        back before Ray's own timeout): their `labq join` restarts Ray there."""
        with self._lock:
            ghosts = {n.address for k, n in self._in_ray.items() if k in self._dead}
            # Once the machine's new node is in, its address is fine again (the old node
            # lingers in Ray's list a while): no rejoining over and over.
            return ghosts - {n.address for n in self._nodes.values()}

    def name_of(self, node_id: str) -> str:
        n = self.get(node_id)
        return n.name if n is not None else node_id

    def gpu_sizes(self) -> list[int]:
        with self._lock:
            return [n.gpus for n in self._nodes.values()]

    def drained(self) -> set[str]:
        with self._lock:
            return set(self._drained)

    # -- Ray's view ----------------------------------------------------------------------------
    def update_from_ray(
        self,
        raw: list[dict[str, Any]],
        head_address: str,
        simulated_head: bool,
        trusted: set[str] | None = None,
        head_id: str = "",
    ) -> tuple[list[NodeRecord], list[NodeRecord]]:
        """Replace the alive set with what `ray.nodes()` says, keeping what the GPU
        monitors learned about nodes that stay. `trusted`: the addresses of joined
        nodes (None: all are); the head is. `head_id`: the daemon's own Ray node, which
        is the head. Returns the nodes (added, removed)."""

        # Each node's (host name, is the head, trusted), worked out once.
        facts: dict[str, tuple[str, bool, bool]] = {}
        for n in raw:
            # Not by Ray's `node:__internal_head__` resource alone: any node may declare
            # that resource (`ray start --resources`) and would be taken as trusted. The
            # daemon's own node, or one with that mark at the head's address.
            is_head = n["NodeID"] == head_id or (
                "node:__internal_head__" in n.get("Resources", {})
                and n.get("NodeManagerAddress", head_address) == head_address
            )
            ok = trusted is None or is_head or n.get("NodeManagerAddress", head_address) in trusted
            facts[n["NodeID"]] = (str(n.get("NodeManagerHostname", "") or n["NodeID"][:8]), is_head, ok)
        with self._lock:
            # Nodes of one host name are told apart by their ids (a Ray node names itself).
            # A node labq took for dead does not count: a rebooted machine's new node has
            # its plain name at once, not once Ray's health checks drop the old one (~15 s);
            # the old one keeps the name it had, for the audit's "node down". Nor does an
            # untrusted node: one calling itself after a joined machine gets the suffix,
            # and the machine keeps its name (and a drain by that name keeps holding).
            live = [f for i, f in facts.items() if i not in self._dead]
            ours = Counter(host for host, _, ok in live if ok)
            others = Counter(host for host, _, ok in live if not ok)
            views: dict[str, NodeRecord] = {}
            for n in raw:
                res = n.get("Resources", {})
                host, is_head, ok = facts[n["NodeID"]]
                old = self._nodes.get(n["NodeID"]) or self._in_ray.get(n["NodeID"])
                if n["NodeID"] in self._dead and old is not None:
                    name = old.name
                else:
                    alone = ours[host] <= 1 if ok else not ours[host] and others[host] <= 1
                    name = host if alone else f"{host}-{n['NodeID'][:6]}"
                simulated = simulated_head and is_head
                address = n.get("NodeManagerAddress", head_address)
                marks = n.get("Labels") or {}
                views[n["NodeID"]] = NodeRecord(
                    id=n["NodeID"],
                    name=name,
                    address=address,
                    gpus=int(res.get("GPU", 0)),
                    cpus=float(res.get("CPU", 0)),
                    memory=float(res.get("memory", 0)),
                    simulated=old.simulated if old and old.nvml_gpus is not None else simulated,
                    schedulable=ok and not self._is_drained(name, n["NodeID"]),
                    nvml_gpus=old.nvml_gpus if old else None,
                    note=old.note if old else "",
                    trusted=ok,
                    gpu_type=old.gpu_type if old else "",
                    labels=tuple(sorted(k.removeprefix(LABEL_PREFIX) for k in marks if k.startswith(LABEL_PREFIX))),
                    simulate=str(marks.get(SIMULATE_LABEL, "")),
                )
            # Comings and goings as Ray sees them (a node labq took for dead first still
            # leaves Ray's table later, and that is worth a line in the audit).
            added = [replace(v) for k, v in views.items() if k not in self._in_ray]
            removed = [replace(v) for k, v in self._in_ray.items() if k not in views]
            self._in_ray = views
            self._nodes = {k: v for k, v in views.items() if k not in self._dead}
        return added, removed

    def set_all(self, nodes: Mapping[str, NodeRecord]) -> None:
        """For tests and tools that build the picture by hand."""
        with self._lock:
            self._nodes = {k: replace(v) for k, v in nodes.items()}

    def mark_dead(self, node_id: str) -> NodeRecord | None:
        with self._lock:
            self._dead.add(node_id)
            return self._nodes.pop(node_id, None)

    def update_monitor(self, node_id: str, simulated: bool, nvml_gpus: int, note: str, gpu_type: str = "") -> None:
        with self._lock:
            n = self._nodes.get(node_id)
            if n is not None:
                n.simulated, n.nvml_gpus, n.note = simulated, nvml_gpus, note
                n.gpu_type = gpu_type or n.gpu_type

    # -- drain ---------------------------------------------------------------------------------
    def find(self, ref: str) -> list[NodeRecord]:
        """Nodes whose name or id is `ref` (or whose id starts with it, 6+ characters)."""
        with self._lock:
            return [
                replace(n)
                for n in self._nodes.values()
                if ref in (n.name, n.id) or (len(ref) >= 6 and n.id.startswith(ref))
            ]

    def _is_drained(self, name: str, node_id: str) -> bool:
        """A drain holds on a node by any name it goes by: its host name (a drained
        machine that rebooted while Ray still lists its old node has two live nodes,
        both named `host-<id>`) and its own `host-<id>` (the node's sibling gone, it is
        plain `host` again). Both names are the admin's word about this machine."""
        suffix = "-" + node_id[:6]
        host = name[: -len(suffix)] if name.endswith(suffix) else name
        d = self._drained
        return name in d or host in d or host + suffix in d

    def set_drained(self, name: str, drained: bool) -> None:
        with self._lock:
            if drained:
                self._drained.add(name)
            else:
                self._drained.discard(name)
            for n in self._nodes.values():
                n.schedulable = n.trusted and not self._is_drained(n.name, n.id)
            names = sorted(self._drained)
        if self.store is not None:
            self.store.set_meta("drained_nodes", json.dumps(names))
