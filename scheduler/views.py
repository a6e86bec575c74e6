"""What the API returns for a job: built field by field, never the database row.

What a caller may see is decided here and only here:
- everyone: id, owner, name, size, state, times, node, reasons, GPU use;
- the owner and admins also: the command, the working directory, the values of
  the environment (often API keys), the job's pid;
- admins alone: where the log lives on the head node.
Another user sees the *names* of the environment variables, so a colleague can tell
what a job was given without reading the secrets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.auth import Caller
from scheduler.store import JobRow

# Spec fields only the owner and admins see.
PRIVATE_SPEC = ("command", "workdir", "env")

# Every list row has exactly these keys (plus what the caller may see).
SUMMARY_FIELDS = (
    "id",
    "user",
    "name",
    "gpus",
    "priority",
    "time_limit",
    "state",
    "reason",
    "submit_time",
    "start_time",
    "end_time",
    "attempt",
    "node",
    "node_name",
    "gpu_ids",
    "exit_code",
    "signal",
    "requeued",
)


def summary(row: JobRow, caller: Caller) -> dict[str, Any]:
    d: dict[str, Any] = {k: getattr(row, k) for k in SUMMARY_FIELDS}
    d["state"] = row.state.value
    d["requeued"] = bool(row.requeued)
    if caller.may_see(row.user):
        d["pid"] = row.pid
    return d


def spec_for(row: JobRow, caller: Caller) -> dict[str, Any]:
    """The submission as the caller may see it."""
    spec = dict(row.spec)
    if caller.may_see(row.user):
        return spec
    env = spec.get("env") or {}
    out = {k: v for k, v in spec.items() if k not in PRIVATE_SPEC}
    out["env_names"] = sorted(env) if isinstance(env, Mapping) else []
    return out


def detail(
    row: JobRow,
    caller: Caller,
    base: dict[str, Any],
    events: Sequence[Mapping[str, Any]],
    log_path: str,
) -> dict[str, Any]:
    """`labq show`: the summary `base` plus the spec, history and log facts."""
    d = dict(base)
    d["spec"] = spec_for(row, caller)
    d["private"] = not caller.may_see(row.user)
    d["events"] = [dict(e) for e in events]
    d["log"] = {
        "bytes": row.log_bytes,
        "removed": row.log_removed,
        "readable": caller.may_see(row.user),
    }
    if caller.admin:
        d["log_path"] = log_path
    return d
