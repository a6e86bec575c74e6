"""What a job row becomes at launch (a Launch and its Ray resources; for a job over
several nodes, one per rank, gang.py), and what a gang's start report adds to the row.
Plain functions, for JobControl."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from scheduler.codestore import CodeStore
from scheduler.config import DaemonConfig
from scheduler.errors import DaemonError
from scheduler.runner import Launch
from scheduler.store import JobRow


def nodes_of(job: JobRow) -> list[str]:
    """Every node the job's current attempt is on (rank 0's first)."""
    return [node for node, _, _ in job.placements() if node]


def gang_launches(
    launch: Launch, ranks: list[dict[str, Any]], resources: Mapping[str, float]
) -> list[tuple[Launch, str, dict[str, float]]]:
    """One Launch per rank: its rank, its node's GPU indices (None: Ray chooses), and
    its share of the resources (GPUs on its node; CPUs and memory are per node)."""
    out = []
    for i, r in enumerate(ranks):
        ids = r.get("gpu_ids")
        gpu_indices = tuple(int(g) for g in ids.split(",")) if ids else None
        per = {**resources, "GPU": float(r["gpus"])}
        out.append((replace(launch, rank=i, nnodes=len(ranks), gpu_indices=gpu_indices), str(r["node"]), per))
    return out


def started_ranks(placed: list[dict[str, Any]], reported: list[dict[str, Any]]) -> str:
    """JobRow.ranks: the ranks as placed, with what each said when its command started
    (host, pid, the GPUs it got)."""
    by_rank = {int(r.get("rank", i)): r for i, r in enumerate(reported)}
    out = []
    for i, r in enumerate(placed):
        got = by_rank.get(i, {})
        gpu_ids = got.get("gpu_ids")
        out.append(
            {
                **r,
                "host": str(got.get("host", "")),
                "pid": got.get("pid"),
                "gpu_ids": ",".join(map(str, gpu_ids)) if isinstance(gpu_ids, list) else r.get("gpu_ids"),
            }
        )
    return json.dumps(out)


def build_launch(
    job: JobRow, config: DaemonConfig, grace: float, log_room: int, namespace: str, code: tuple[bytes, str]
) -> tuple[Launch, dict[str, float]]:
    """The Launch for a job's current attempt (rank 0's, for a gang) and its resources."""
    spec = job.spec
    umask = spec.get("umask")
    launch = Launch(
        job_id=job.id,
        attempt=job.attempt,
        argv=list(spec["command"]),
        workdir=spec.get("workdir", ""),
        env=dict(spec.get("env", {})),
        uid=job.uid,
        user=job.user,
        # The default limit is a limit too: backfill and ETAs count on it.
        time_limit=job.time_limit or config.default_time_limit_s,
        grace=grace,
        log_limit=log_room,
        namespace=namespace,
        gpu_indices=tuple(int(g) for g in job.gpu_ids.split(",")) if job.gpu_ids else None,
        umask=0o022 if umask is None else int(umask),
        cgroup=config.job_cgroups,
        code=code[0],
        code_error=code[1],
        code_commit=str((spec.get("code") or {}).get("commit", "")),
        tty=job.kind == "shell",
        head_timeout=config.node_timeout_s,
    )
    resources: dict[str, float] = {"GPU": job.gpus, "CPU": float(spec.get("cpus", 0))}
    if spec.get("memory"):
        resources["memory"] = float(spec["memory"])
    return launch, resources


def placed_ranks(ranks: list[tuple[str, int, tuple[int, ...] | None]], name_of: Callable[[str], str]) -> str:
    """JobRow.ranks for a gang the scheduler placed: (node, GPUs, GPU indices or None) per rank."""
    return json.dumps(
        [
            {"node": n, "node_name": name_of(n), "gpus": g, "gpu_ids": None if p is None else ",".join(map(str, p))}
            for n, g, p in ranks
        ]
    )


def where_running(job: JobRow, ev: Mapping[str, Any], ranks: str) -> str:
    """The reason a job gets when it starts running: where, with which GPUs."""
    if ranks:
        return "running: " + "; ".join(
            f"rank {i} on {r['node_name']} with GPUs {r.get('gpu_ids') or '-'}" for i, r in enumerate(json.loads(ranks))
        )
    return f"running on {job.node_name} with GPUs {','.join(ev['gpu_ids']) or '-'}"


def code_for(job: JobRow, codes: CodeStore | None) -> tuple[bytes, str]:
    """The job's code snapshot from the head's store, or why it is not there."""
    ref = job.spec.get("code")
    if not ref or codes is None:
        return b"", ""
    try:
        return codes.get(job.uid, str(ref["id"])), ""
    except DaemonError:
        return b"", f"its code snapshot {str(ref['id'])[:12]} is no longer on the head (rerun it with --live)"
