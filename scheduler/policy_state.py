"""The plain records a pass works on: each node's free capacity and release times, and
the reservations made so far. Mutable, and never outside the `schedule()` call that
made them (policy_pass.py)."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.policy_types import INF, NodeInfo, PendingJob


@dataclass
class NodeState:
    info: NodeInfo
    free: int
    cpus: float
    memory: float
    # (end time, gpus) of what runs here now, including jobs started in this pass.
    releases: list[tuple[float, int]]
    sorted_releases: list[tuple[float, int]] | None = None
    # The earliest release here that rests on a learned runtime, not a limit: an ETA at
    # or after it is a prediction ("predicted" in the views).
    first_predicted: float = INF

    def release_order(self) -> list[tuple[float, int]]:
        if self.sorted_releases is None:
            self.sorted_releases = sorted(self.releases)
        return self.sorted_releases


@dataclass
class Reservation:
    job_id: int
    node: str
    at: float
    gpus: int
    more_nodes: tuple[str, ...] = ()
    # When the reserved job ends if it uses its whole limit: a job held back so as not to
    # delay it can expect to start then at the latest, as far as that reservation goes.
    end: float = INF


def can_hold(node: NodeState, j: PendingJob, gpus: int | None = None) -> bool:
    """Could this node ever run `j` (its whole capacity, not what is free now)?
    A job no node can hold must never hold a reservation: it would block every GPU
    it reserved for a start that cannot come."""
    info = node.info
    return (
        info.schedulable
        and (j.nodes is None or info.id in j.nodes)
        and info.gpus >= (j.gpus if gpus is None else gpus)
        and info.cpus >= j.cpus
        and info.memory >= j.memory
    )
