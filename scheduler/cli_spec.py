"""Building a submission from the command line: `submit`'s, `rerun`'s and the
sessions' job options over a spec. Stdlib-only, as the rest of the client."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from scheduler.console import UsageError
from scheduler.jobfile import JobFileError, load_job_file
from scheduler.paths import INHERITED_ENV
from scheduler.present import parse_env
from scheduler.units import UNIT_WORDS, UnitError, parse_array, parse_job_ids, parse_sweep


# -- building a submission -------------------------------------------------------------------------
def _cwd() -> str:
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise UsageError("this shell's directory no longer exists: cd into one that does, or give --workdir") from None


def apply_job_options(spec: dict[str, Any], args: argparse.Namespace) -> None:
    """`submit`'s and `rerun`'s job options (cliparse._job_options) over `spec`; --env
    is merged by each (submit adds the inherited environment first)."""
    for field in ("gpus", "cpus", "memory", "time", "workdir", "name", "priority", "grace", "gpu_type", "constraint"):
        value = getattr(args, field)
        if value is not None:
            spec[field] = value
    for field in ("after", "after_any"):
        value = getattr(args, field)
        if value is not None:
            try:
                spec[field] = parse_job_ids(value)
            except ValueError as e:
                raise UsageError(f"--{field.replace('_', '-')}: {e}") from None
    if args.array is not None and args.sweep:
        raise UsageError("give --array or --sweep, not both (a sweep's tasks are numbered from 0)")
    if args.array is not None:
        try:
            parse_array(args.array)
        except UnitError as e:
            raise UsageError(str(e)) from None
        spec["array"] = args.array
        spec.pop("sweep", None)
    if args.sweep:
        try:
            spec["sweep"] = parse_sweep(args.sweep)
        except UnitError as e:
            raise UsageError(str(e)) from None
        spec.pop("array", None)
    if args.max_running is not None:
        spec["max_running"] = args.max_running
    _apply_nodes(spec, getattr(args, "nodes", None), getattr(args, "gpus_per_node", None), args.gpus)
    if getattr(args, "preemptible", None) is not None:
        spec["preemptible"] = args.preemptible  # False: rerun --no-preemptible
    if args.notify:
        from scheduler.userconfig import user_notify

        spec["notify"] = user_notify()


def _apply_nodes(spec: dict[str, Any], nodes: int | None, per_node: int | None, gpus: int | None) -> None:
    """--nodes N --gpus-per-node G: N*G GPUs on N whole nodes (--gpus, if given, must agree)."""
    if nodes is not None:
        if nodes < 1:
            raise UsageError("--nodes must be 1 or more")
        spec["nodes"] = nodes
    if per_node is not None:
        if per_node < 1:
            raise UsageError("--gpus-per-node must be 1 or more")
        if nodes is None and spec.get("nodes"):
            nodes = int(spec["nodes"])  # from a job file, or the job a rerun repeats
        if nodes is None and gpus is not None and gpus % per_node == 0:
            spec["nodes"] = nodes = gpus // per_node  # --gpus 16 --gpus-per-node 8: 2 nodes
        if nodes is None:
            raise UsageError("--gpus-per-node goes with --nodes N (N nodes of that many GPUs each)")
        total = nodes * per_node
        if gpus is not None and gpus != total:
            raise UsageError(f"--gpus {gpus} disagrees with --nodes {nodes} x --gpus-per-node {per_node}: give one or the other")
        spec["gpus"] = total
    elif nodes is not None and gpus is None and "gpus" not in spec:
        raise UsageError("--nodes needs --gpus-per-node G (or --gpus TOTAL)")


def build_spec(
    args: argparse.Namespace, remote: bool = False
) -> tuple[dict[str, Any], Path | None, dict[str, int]]:
    command: list[str] = list(args.command or [])
    if command and command[0] == "--":
        command = command[1:]
    spec: dict[str, Any] = {}
    job_file: Path | None = None
    lines: dict[str, int] = {}
    if len(command) == 1 and command[0].endswith((".yaml", ".yml")) and not args.dashdash:
        job_file = Path(command[0])
        try:
            spec, lines = load_job_file(job_file)
        except JobFileError as e:
            raise UsageError(str(e)) from None
    elif command:
        spec["command"] = command
    if args.time is not None and command and command[0].lower() in UNIT_WORDS:
        raise UsageError(
            f"--time {args.time} {command[0]}: write --time {args.time}{command[0][0].lower()} "
            f"(`{command[0]}` would be taken for the command)"
        )
    apply_job_options(spec, args)
    if "command" not in spec:
        raise UsageError("no command: `labq submit [options] -- COMMAND ARGS...` or `labq submit job.yaml`")
    # A remote daemon runs the job on another machine, where this shell's PATH and
    # directory mean nothing: the job starts in the user's home there unless told.
    env = {} if remote else {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    try:
        env.update(parse_env(args.env or []))
    except ValueError as e:
        raise UsageError(f"--env: {e}") from None
    spec["env"] = env
    if "umask" not in spec and not remote:
        # As Slurm does: the job's files get the permissions this shell would give them.
        mask = os.umask(0)
        os.umask(mask)
        spec["umask"] = mask
    if args.workdir is None and "workdir" not in spec and not remote:
        spec["workdir"] = _cwd()
    elif isinstance(spec.get("workdir"), str) and spec["workdir"] and not os.path.isabs(spec["workdir"]):
        spec["workdir"] = os.path.join(_cwd(), spec["workdir"])
    return spec, job_file, lines

