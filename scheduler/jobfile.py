"""Job files (job.yaml): read once, checked the same way for the CLI and the UI.

YAML is imported only when a file is read (the CLI must start fast); the result is a
plain spec mapping plus the line of each top-level key, for error messages that point
into the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# The fields a job file (and `labq submit`) may give; the daemon's JobSpec checks them.
SPEC_FIELDS = (
    "command", "gpus", "cpus", "memory", "time", "workdir", "env", "name", "priority", "grace", "after", "after_any",
    "array", "sweep", "max_running", "notify", "preemptible", "nodes", "gpus_per_node", "gpu_type", "constraint",
)


class JobFileError(ValueError):
    """A job file that cannot be used; the message names the file (and line)."""


def load_job_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping in a job YAML, and the line of each top-level key. A relative
    `workdir` is taken relative to the file."""
    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise JobFileError(f"cannot read {path}: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise JobFileError(f"{path}{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict) or node is None:
        raise JobFileError(f"{path}: a job file is a mapping of {', '.join(SPEC_FIELDS)}")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    for key in data:
        if key not in SPEC_FIELDS:
            raise JobFileError(
                f"{path} line {lines.get(str(key), '?')}: unknown field {key!r} (known: {', '.join(SPEC_FIELDS)})"
            )
    if isinstance(data.get("time"), (int, float)) and not isinstance(data.get("time"), bool):
        n = data["time"]
        raise JobFileError(
            f"{path} line {lines.get('time', '?')}: time: {n} what? give a unit ({n}m, {n}h or HH:MM:SS)"
        )
    per = data.pop("gpus_per_node", None)
    if per is not None:
        # As --gpus-per-node: nodes x gpus_per_node GPUs in all.
        n = data.get("nodes", 1)
        at = f"{path} line {lines.get('gpus_per_node', '?')}"
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (per, n)):
            raise JobFileError(f"{at}: gpus_per_node and nodes must be whole numbers >= 1")
        if data.get("gpus") not in (None, n * per):
            raise JobFileError(f"{at}: gpus {data['gpus']} disagrees with nodes x gpus_per_node ({n * per})")
        data["gpus"] = n * per
    if data.get("env") is not None and not isinstance(data["env"], dict):
        raise JobFileError(f"{path} line {lines.get('env', '?')}: env must be a mapping")
    if isinstance(data.get("workdir"), str) and not os.path.isabs(data["workdir"]):
        try:
            data["workdir"] = str((path.parent / data["workdir"]).resolve())
        except (ValueError, OSError) as e:  # a NUL byte, a lone surrogate, a loop of links
            raise JobFileError(f"{path} line {lines.get('workdir', '?')}: workdir is not a usable path ({e})") from e
    return data, lines
