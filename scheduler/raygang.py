"""The Executor's side of gangs (jobs over several nodes, gang.py): reserve the nodes
labq chose, start a rank task on each, and turn the ranks' reports into the job's.

A mixin of the Executor actor (executor.py), under its lock (`self._cond`): the job
dicts live in `self._jobs` as the one-node jobs' do, with a `Gang` and one Ray task
per rank. The nodes are reserved at once by a placement group (STRICT_SPREAD, one
bundle per node with its GPUs), each bundle held to the node the policy chose by
Ray's `ray.io/node-id` label: labq, not Ray, decides where (and which GPUs), and the
group makes Ray hold all of them before any rank runs. A gang whose group is not
ready, or whose ranks have not all met, within GANG_MEET_S ends unplaced.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.util import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from scheduler.gang import Gang
from scheduler.launcher import key_of
from scheduler.runner import Launch

NODE_ID_LABEL = "ray.io/node-id"  # Ray's own label on every node (ray.util.placement_group)
# A gang whose ranks have not all met by then never will (a node is gone, or Ray cannot
# reserve the nodes): it ends unplaced and goes back to the queue.
GANG_MEET_S = 60.0


def task_options(resources: Mapping[str, float], strategy: Any) -> dict[str, Any]:
    """Ray's options for a job's task (one node's, or one rank's) from labq's resources."""
    return {
        "num_gpus": resources.get("GPU", 0),
        "num_cpus": resources.get("CPU", 0),
        "memory": resources.get("memory") or None,
        "scheduling_strategy": strategy,
    }


def _bundle(resources: dict[str, float]) -> dict[str, float]:
    bundle = {k: float(v) for k, v in resources.items() if v}
    # Ray refuses an empty bundle; a gang rank always has GPUs, this is for safety.
    return bundle or {"CPU": 0.01}


class GangHost:
    # Provided by the Executor.
    _cond: Any
    _jobs: dict[str, dict[str, Any]]
    _me: Any
    _rank_task: Any  # the remote function a rank runs (executor.run_rank)

    def _emit(self, event: dict[str, Any]) -> None: ...

    def launch_gang(
        self, job_id: int, attempt: int, ranks: Sequence[tuple[Launch, str, dict[str, float]]], grace: float
    ) -> bool:
        key = key_of(job_id, attempt)
        with self._cond:
            if key in self._jobs:
                return False  # a retried launch after a daemon restart: already running
            nodes = [node for _, node, _ in ranks]
            pg = placement_group(
                [_bundle(res) for _, _, res in ranks],
                strategy="STRICT_SPREAD",
                bundle_label_selector=[{NODE_ID_LABEL: node} for node in nodes],
            )
            refs = [
                self._rank_task.options(
                    **task_options(res, PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i))
                ).remote(self._me, key, launch)
                for i, (launch, _node, res) in enumerate(ranks)
            ]
            # A gang's stop is its Gang's (the one-node jobs' "ref" and "stop" are not used).
            self._jobs[key] = {
                "refs": refs,
                "pg": pg,
                "gang": Gang(nodes, grace),
                "reaped_ranks": set(),
                "started": False,
                "finished": False,
                "job_id": job_id,
                "attempt": attempt,
                "node": nodes[0],
            }
            self._cond.notify_all()
        return True

    def gang_arrive(self, key: str, rank: int, addr: str, port: int) -> dict[str, Any] | None:
        """A rank is on its node (rank 0 brings the rendezvous address): the address once
        all are; {"stop": ...} if the gang was stopped or ended first; None: ask again."""
        with self._cond:
            job = self._jobs.get(key)
            if job is None or job["finished"]:
                return {"stop": "ended"}
            gang: Gang = job["gang"]
            gang.arrive(rank, addr, port)
            self._cond.notify_all()
            # Wait here (briefly: each waiting rank holds one of the actor's threads) for
            # the others, so that all start the moment the last one is in.
            self._cond.wait_for(lambda: gang.met or gang.stop is not None or job["finished"], timeout=2.0)
            if gang.stop is not None or job["finished"]:
                return {"stop": (gang.stop or {}).get("outcome", "ended")}
            return {"master": list(gang.master)} if gang.met and gang.master else None

    def _rank_report(
        self,
        job: dict[str, Any],
        rank: int,
        info: dict[str, Any] | None,
        offset: int,
        data: bytes,
        result: dict[str, Any] | None,
        err: list[tuple[int, int, int]] | None,
    ) -> dict[str, Any] | None:
        """One rank's heartbeat (caller holds the lock): its log, its start, its end."""
        gang: Gang = job["gang"]
        ids = {"job_id": job["job_id"], "attempt": job["attempt"]}
        gang.heard(rank, time.time())
        if info is not None:
            started = gang.started(rank, info)
            if started is not None:
                job["started"] = True
                self._emit({"type": "started", **ids, **started})
        if data:
            self._emit({"type": "log", **ids, "rank": rank, "offset": offset, "data": data, "err": list(err or ())})
        if result is not None:
            self._rank_ended(job, rank, result)
        return gang.stop

    def _rank_ended(self, job: dict[str, Any], rank: int, result: dict[str, Any]) -> None:
        gang: Gang = job["gang"]
        final = gang.ended(rank, result)
        if final is not None and not job["finished"]:
            job["finished"] = True
            self._emit({"type": "finished", "job_id": job["job_id"], "attempt": job["attempt"], **final})

    def unplace_gang(self, job_id: int, attempt: int, reason: str) -> bool:
        """Launcher.unplace(): end a gang that has not met (its node is gone) now,
        rather than after GANG_MEET_S; False if it met, ended or is not known here."""
        with self._cond:
            job = self._jobs.get(key_of(job_id, attempt))
            if job is None or job["finished"] or "gang" not in job or job["gang"].met:
                return False
            self._unplace(job, reason)
            self._cond.notify_all()  # ranks waiting to meet see the stop and return
            return True

    def _gang_stop(self, job: dict[str, Any], outcome: str, reason: str, grace: float) -> None:
        gang: Gang = job["gang"]
        gang.ask(outcome, reason, grace)
        if not gang.met:
            # Nothing runs yet: the ranks waiting to meet see the stop and return.
            self._unplace(job, reason, outcome)

    def _unplace(self, job: dict[str, Any], why: str, outcome: str = "lost") -> None:
        """End a gang that never met (caller holds the lock); its tasks are cancelled."""
        gang: Gang = job["gang"]
        if job["finished"]:
            return
        final = gang.unplaced(why)
        if outcome != "lost":
            final = {**final, "outcome": outcome, "unplaced": False}
        job["finished"] = True
        self._emit({"type": "finished", "job_id": job["job_id"], "attempt": job["attempt"], **final})
        for ref in job["refs"]:
            ray.cancel(ref, force=False)

    def _gang_refs(self) -> dict[Any, tuple[str, int]]:
        """The rank tasks still to reap, and whose they are (caller holds the lock); ends
        the gangs that did not meet in time."""
        refs: dict[Any, tuple[str, int]] = {}
        now = time.time()
        for key, job in self._jobs.items():
            gang = job.get("gang")
            if gang is None or job.get("reaped"):
                continue
            if not gang.met and not job["finished"] and now - gang.started_at > GANG_MEET_S:
                self._unplace(job, f"its {gang.size} nodes could not all be reserved and reached within "
                                   f"{GANG_MEET_S:g}s (GangUnplaced)")  # fmt: skip
            for rank, ref in enumerate(job["refs"]):
                if rank not in job["reaped_ranks"]:
                    refs[ref] = (key, rank)
        return refs

    def _reap_rank(self, key: str, rank: int, value: Any, error: str | None) -> None:
        """A rank's task returned (`value`) or failed (`error`); caller holds the lock."""
        job = self._jobs[key]
        gang: Gang = job["gang"]
        job["reaped_ranks"].add(rank)
        if gang.ranks[rank].result is None and not job["finished"]:
            if error is None and isinstance(value, dict):
                self._rank_ended(job, rank, value)
            elif error is None and value is None and gang.met:
                # It returned without running: the gang was stopped as it met.
                self._rank_ended(job, rank, gang.never_ran())
            elif not gang.met:
                # Which node is gone is the node watch's to find out (Ray lists it no more).
                self._unplace(job, f"rank {rank} could not start on its node ({error or 'stopped'})")
            else:
                self._rank_ended(job, rank, {
                    "outcome": "lost", "exit_code": None, "signal": None, "end_time": time.time(),
                    "reason": f"the Ray task ended without a result ({error or 'no report'})",
                })  # fmt: skip
        if len(job["reaped_ranks"]) == gang.size:
            job["reaped"] = True
            try:
                remove_placement_group(job["pg"])
            except Exception:  # noqa: BLE001 - gone with its nodes, or removed already
                pass
