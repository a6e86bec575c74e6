"""A job over several nodes (a gang, issue 15): its ranks, how they meet, one fate.

Pure bookkeeping, no Ray: the Executor (executor.py) holds one `Gang` per multi-node
attempt under its lock, the MemoryLauncher's tests drive the same class by hand.

- **Meeting.** Every rank checks in (`arrive`) before it starts anything; rank 0 brings
  the rendezvous address (its node's address and a port free there). Only when all
  ranks are in does any of them start its command, so a gang never runs half: a rank
  whose node died before it got there keeps the others from starting, and the
  Executor ends the attempt unplaced (requeued, nothing ran).
- **One fate.** The first rank that ends otherwise than succeeding (exit status,
  signal, time limit, its node lost) decides the job's end: every other rank is asked
  to stop (the job's grace, then killed) and the job ends as that rank did, saying
  which ("rank 1 exited 1"). A stop asked of the job (cancel, preemption) goes to every
  rank. The job has ended when every rank has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# The environment every rank's command gets (documented in README, "Jobs over several
# nodes"): labq's own names; the ones torch.distributed's `env://` reads, for one
# process per node (torchrun sets its own for the processes it starts); and torchrun's
# PET_* defaults, so that a bare `torchrun train.py` finds its rendezvous.
GANG_ENV = (
    "LABQ_MASTER_ADDR", "LABQ_MASTER_PORT", "LABQ_NODE_RANK", "LABQ_NNODES", "LABQ_GPUS_PER_NODE",
    "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "RANK", "WORLD_SIZE",
    "PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NODE_RANK", "PET_NNODES", "PET_NPROC_PER_NODE",
)  # fmt: skip


def rank_env(rank: int, nnodes: int, gpus_per_node: int, addr: str, port: int) -> dict[str, str]:
    """What rank `rank` of a gang is told (GANG_ENV, in that order)."""
    values = (
        addr, str(port), str(rank), str(nnodes), str(gpus_per_node),
        addr, str(port), str(rank), str(rank), str(nnodes),
        addr, str(port), str(rank), str(nnodes), str(max(1, gpus_per_node)),
    )  # fmt: skip
    return dict(zip(GANG_ENV, values, strict=True))


def rank_key(key: str, rank: int) -> str:
    """The key a rank reports under: the attempt's key and its rank."""
    return f"{key}#{rank}"


def split_key(key: str) -> tuple[str, int | None]:
    """(the attempt's key, the rank) of a key a rank reports under; rank None: a one-node job."""
    base, sep, rank = key.partition("#")
    return (base, int(rank)) if sep and rank.isdigit() else (key, None)


@dataclass
class Rank:
    node: str  # the Ray node id it was placed on
    started: bool = False
    result: dict[str, Any] | None = None
    seen: float | None = None  # when it last reported (the daemon's node watch)
    info: dict[str, Any] | None = None  # what it said when its command started (pid, host, GPUs)


def describe(rank: int, result: dict[str, Any]) -> str:
    """A rank's end in words, for the job's reason."""
    outcome = str(result.get("outcome", ""))
    code, sig, why = result.get("exit_code"), result.get("signal"), str(result.get("reason") or "")
    if outcome == "failed" and code is not None and not why.startswith(("cannot", "labq")):
        return f"rank {rank} exited {code}"
    if outcome == "failed" and sig:
        return f"rank {rank} was killed by signal {sig}"
    if outcome == "lost":
        return f"rank {rank} was lost: {why}" if why else f"rank {rank} was lost"
    if outcome == "timeout":
        return f"rank {rank}: {why or 'time limit reached'}"
    return f"rank {rank} {outcome}: {why}" if why else f"rank {rank} {outcome}"


@dataclass
class Gang:
    """One multi-node attempt. `nodes[r]` is rank r's node."""

    nodes: list[str]
    grace: float
    ranks: list[Rank] = field(init=False)
    arrived: set[int] = field(default_factory=set)
    master: tuple[str, int] | None = None
    # The end every rank was asked for (a rank's failure, or the job's own stop).
    stop: dict[str, Any] | None = None
    cause: tuple[int, dict[str, Any]] | None = None  # the rank whose end decided the job's
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.ranks = [Rank(n) for n in self.nodes]

    @property
    def size(self) -> int:
        return len(self.nodes)

    # -- meeting ------------------------------------------------------------------------------
    def arrive(self, rank: int, addr: str = "", port: int = 0) -> tuple[str, int] | None:
        """Rank `rank` is on its node and ready (rank 0 brings the address). The
        rendezvous address once every rank is in and none was stopped; None: wait."""
        self.arrived.add(rank)
        if rank == 0 and addr:
            self.master = (addr, port)
        if self.stop is not None or len(self.arrived) < self.size or self.master is None:
            return None
        return self.master

    @property
    def met(self) -> bool:
        return len(self.arrived) == self.size and self.master is not None

    # -- reports ------------------------------------------------------------------------------
    def heard(self, rank: int, now: float) -> None:
        self.ranks[rank].seen = now

    def started(self, rank: int, info: dict[str, Any]) -> dict[str, Any] | None:
        """A rank's command started. The job's own `started` (rank 0's, with every rank's
        node, host, pid and GPUs) once all have; None until then (or said already)."""
        r = self.ranks[rank]
        if r.started:
            return None
        r.started, r.info = True, dict(info)
        if not all(x.started for x in self.ranks):
            return None
        first = self.ranks[0].info or {}
        return {**first, "ranks": [dict(x.info or {}, rank=i, node=x.node) for i, x in enumerate(self.ranks)]}

    def ask(self, outcome: str, reason: str, grace: float) -> bool:
        """The job is asked to stop (cancel, preemption): every rank is. False if a stop
        was already on its way (a shorter grace still shortens it)."""
        if self.stop is None:
            self.stop = {"outcome": outcome, "reason": reason, "grace": grace}
            return True
        if grace < self.stop["grace"]:
            self.stop = {**self.stop, "grace": grace}
        return False

    def ended(self, rank: int, result: dict[str, Any]) -> dict[str, Any] | None:
        """Rank `rank` ended with `result`. The job's result once every rank has (None
        before). The first rank to end badly stops the others and names the job's end."""
        r = self.ranks[rank]
        if r.result is not None:
            return None
        r.result = dict(result)
        bad = result.get("outcome") != "succeeded"
        if bad and self.stop is None:  # (a cause is only ever set with the stop)
            # This rank's end is the job's: the others stop (grace, then killed).
            self.cause = (rank, r.result)
            outcome = str(result.get("outcome"))
            self.stop = {"outcome": outcome, "reason": describe(rank, result), "grace": self.grace}
        if any(x.result is None for x in self.ranks):
            return None
        return self._result()

    def _result(self) -> dict[str, Any]:
        results = [x.result or {} for x in self.ranks]
        end = max(float(x.get("end_time") or 0.0) for x in results) or time.time()
        dropped = sum(int(x.get("log_dropped") or 0) for x in results)
        if self.cause is not None:
            rank, res = self.cause
            out = {
                "outcome": res.get("outcome"),
                "exit_code": res.get("exit_code"),
                "signal": res.get("signal"),
                "reason": describe(rank, res),
                # Which node a lost rank was on: that node is the one to take for dead.
                "lost_node": self.ranks[rank].node if res.get("outcome") == "lost" else None,
            }
        elif self.stop is not None:
            # Stopped as a whole (cancel, preemption): the stop's end, whatever each rank
            # was doing (one may have ended well before, one may never have run).
            out = {
                "outcome": self.stop["outcome"], "reason": self.stop["reason"],
                "exit_code": results[0].get("exit_code"), "signal": results[0].get("signal"),
            }  # fmt: skip
        else:
            out = {"outcome": "succeeded", "exit_code": 0, "signal": None, "reason": ""}
        out["end_time"] = end
        if dropped:
            out["log_dropped"] = dropped
        return out

    def never_ran(self) -> dict[str, Any]:
        """The result of a rank whose task returned without running anything (the gang
        was stopped before it met): the stop's, if any."""
        stop = self.stop or {"outcome": "lost", "reason": "its rank never started"}
        return {"outcome": stop["outcome"], "exit_code": None, "signal": None, "reason": stop["reason"],
                "end_time": time.time()}  # fmt: skip

    def unplaced(self, why: str) -> dict[str, Any]:
        """The attempt could not start on its nodes (one is gone): its result, for a gang
        that never met. The daemon requeues it without counting a retry."""
        self.stop = self.stop or {"outcome": "lost", "reason": why, "grace": 0.0}
        return {
            "outcome": "lost", "exit_code": None, "signal": None, "reason": why,
            "end_time": time.time(), "unplaced": True,
        }  # fmt: skip

    def lagging(self) -> str:
        """The node of the running rank heard from least recently (a cut-off node)."""
        running = [(r.seen or 0.0, r.node) for r in self.ranks if r.result is None]
        return min(running)[1] if running else self.nodes[0]

    def last_seen(self) -> float | None:
        """When the running rank heard from least recently last spoke (None: none has yet)."""
        seen = [r.seen for r in self.ranks if r.result is None and r.seen is not None]
        return min(seen) if seen else None
