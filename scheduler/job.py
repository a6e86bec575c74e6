"""A job: what a researcher asked for (JobSpec) and the states it moves through.

State machine (docs/architecture.md draws it)::

    PENDING -> STARTING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | TIMEOUT
       |          |           |
       |          |           +-> PREEMPTED -> PENDING      (reclaimed by fair share; runs again)
       |          +-> PENDING                               (launch never reached Ray, or its node was gone)
       +-> CANCELLED
    STARTING | RUNNING -> LOST                              (Ray no longer runs it; reason required)
    STARTING | RUNNING -> NODE_LOST [-> PENDING]            (its node died; requeued while retries last)

Only `transition()` changes a state, and it refuses anything not in TRANSITIONS.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scheduler.gputypes import check_name
from scheduler.shapes import TERMINAL, JobState
from scheduler.units import (
    MAX_ARRAY_TASKS,
    IndexPlan,
    UnitError,
    parse_array,
    parse_duration,
    parse_job_ids,
    parse_size,
    parse_sweep,
    parse_time_limit,
)

__all__ = ["TERMINAL", "JobSpec", "JobState", "IllegalTransition", "transition"]


def _is_control(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat == "Cc" or (cat == "Cf" and ch != "\u00ad") or ch in "\u2028\u2029"


def has_controls(text: str) -> bool:
    return any(_is_control(ch) for ch in text)


def strip_controls(text: str) -> str:
    return "".join(ch for ch in text if not _is_control(ch))


# Programs that run a script: a job's default name is the script, not `python`.
_LAUNCHERS = re.compile(r"(python|pypy|ipython)[\d.]*|bash|sh|zsh|torchrun|deepspeed|accelerate|uv|env|nohup|time")
_SCRIPT = re.compile(r".+\.(py|sh|jl|r|lua|ipynb)", re.IGNORECASE)


def default_name(command: list[str]) -> str:
    """`python train.py --lr 3` → train.py; `torchrun ... train.py` → train.py;
    `python -m pkg.main` → pkg.main; anything else → the program's name."""
    prog = os.path.basename(command[0])
    if _LAUNCHERS.fullmatch(prog):
        args = command[1:]
        for i, arg in enumerate(args):
            if arg == "-m" and i + 1 < len(args):
                return args[i + 1]
            if _SCRIPT.fullmatch(arg) and not arg.startswith("-"):
                return os.path.basename(arg)
    return prog


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.STARTING, JobState.CANCELLED}),
    JobState.STARTING: frozenset(
        {
            JobState.RUNNING,
            JobState.PENDING,
            JobState.CANCELLED,
            JobState.FAILED,
            JobState.LOST,
            # A job so short that its end is reported with its start.
            JobState.SUCCEEDED,
            JobState.TIMEOUT,
            JobState.PREEMPTED,
            JobState.NODE_LOST,
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.TIMEOUT,
            JobState.PREEMPTED,
            JobState.LOST,
            JobState.NODE_LOST,
        }
    ),
    JobState.PREEMPTED: frozenset({JobState.PENDING, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMEOUT: frozenset(),
    JobState.LOST: frozenset(),
    # Final unless the retry setting requeues it, which the daemon does at once.
    JobState.NODE_LOST: frozenset({JobState.PENDING}),
}


class IllegalTransition(Exception):
    def __init__(self, job_id: int, old: JobState, new: JobState) -> None:
        super().__init__(f"job {job_id}: illegal transition {old.value} -> {new.value}")
        self.job_id, self.old, self.new = job_id, old, new


def transition(job_id: int, old: JobState, new: JobState, reason: str = "") -> JobState:
    """Return `new` if the move is legal, else raise IllegalTransition."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(job_id, old, new)
    if new in (JobState.LOST, JobState.NODE_LOST) and not reason:
        raise ValueError(f"job {job_id}: LOST needs a reason")
    return new


# Limits that keep one request from hurting the daemon (issue 7 fuzzes these).
MAX_ARGV = 4096
MAX_ARG_LEN = 65536
MAX_ENV = 512
MAX_NAME = 128
MAX_DEPS = 256  # jobs one job may wait for (--after / --after-any)


class CodeRef(BaseModel):
    """The code snapshot a job runs (issue 17): its id in the head's code store and
    what the daemon read in it (never the client's say: admission fills these in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[0-9a-f]{64}$")
    summary: str = Field(default="", max_length=512)
    kind: str = Field(default="", max_length=16)
    commit: str = Field(default="", max_length=64)
    branch: str = Field(default="", max_length=256)
    # A git snapshot holds only what differs from `commit`: the node reads the commit
    # from this repository (no shared filesystem: it must exist there, issue 14).
    repo: str = Field(default="", max_length=4096)


class JobSpec(BaseModel):
    """What a job asks for. Same fields on the command line and in a job YAML."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str] = Field(min_length=1, max_length=MAX_ARGV)
    gpus: int = Field(default=1, ge=1, le=1024)
    cpus: float = Field(default=0, ge=0, le=4096)
    memory: int = Field(default=0, ge=0, description="bytes reserved in Ray; 0 = none")
    time: float | None = Field(default=None, description="time limit in seconds")
    workdir: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    name: str = Field(default="", max_length=MAX_NAME)
    priority: int = Field(default=0, ge=-1000, le=1000)
    grace: float | None = Field(
        default=None, description="seconds between SIGTERM and SIGKILL; default from config"
    )
    # The submitter's umask, which the job's files get (as with Slurm); None = 022.
    umask: int | None = Field(default=None, ge=0, le=0o777)
    # Chains, as Slurm's afterok / afterany: start only once each of `after` has
    # SUCCEEDED (if one ends otherwise, this job is cancelled, saying which), and each
    # of `after_any` has ended in any state. Only existing jobs: no cycle can be made.
    after: list[int] = Field(default_factory=list, max_length=MAX_DEPS)
    after_any: list[int] = Field(default_factory=list, max_length=MAX_DEPS)
    # Arrays and sweeps (issue 16): one submission, many tasks. `array` is Slurm's
    # syntax ("0-99%8"); `sweep` a grid of named values; `max_running` caps how many
    # tasks run at once (the `%N`). `{index}`, `{array_id}` and `{NAME}` in the command
    # are replaced per task. The tasks' rows are made as they start (store_arrays.py).
    array: str | None = Field(default=None, max_length=4096)
    sweep: dict[str, list[str]] = Field(default_factory=dict, max_length=16)
    max_running: int | None = Field(default=None, ge=1, le=MAX_ARRAY_TASKS)
    # When it ends (an array: when all of it has): {"webhook": URL} (Slack-compatible
    # JSON) or {"command": [...]} run as the owner. Private: a webhook URL is a secret.
    notify: dict[str, Any] | None = None
    # The code as submitted (issue 17); None runs the workdir as it is when the job starts.
    code: CodeRef | None = None
    # An interactive session (issue 17): the command runs on a terminal (a pty) that
    # `labq attach` connects to; "notebook" is JupyterLab. None: a batch job.
    session: Literal["shell", "notebook"] | None = None
    # A scavenger (issue 19): it runs only on GPUs no other job can use now, any job
    # that needs them takes them back (grace, then requeued), and it is not held back
    # by its owner's weekly budget nor counted toward anyone's guarantee.
    preemptible: bool = False
    # A job over several nodes (issue 15): this many whole nodes, one rank on each
    # (gang.py), its GPUs split evenly. 1 with more GPUs than a node has: as many
    # whole nodes as they fill.
    nodes: int = Field(default=1, ge=1, le=64)  # each rank waits in the Executor (a thread) to meet
    # Only nodes whose GPUs are of this type (gputypes.gpu_type: h100, a100-80g, ...) and
    # that have every one of these labels (the node's `labels:`, e.g. ib).
    gpu_type: str = Field(default="", max_length=63)
    constraint: list[str] = Field(default_factory=list, max_length=16)

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, v: Any) -> Any:
        # A single string is run by the user's shell explicitly, never split by us.
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("command is empty")
            return ["/bin/sh", "-c", v]
        return v

    @field_validator("command")
    @classmethod
    def _command_items(cls, v: list[str]) -> list[str]:
        if not v or not v[0].strip():
            raise ValueError("command is empty")
        for arg in v:
            if len(arg) > MAX_ARG_LEN or "\x00" in arg:
                raise ValueError("command argument too long or contains a NUL byte")
        return v

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type(cls, v: str) -> str:
        return check_name("GPU type", v) if v else ""

    @field_validator("constraint", mode="before")
    @classmethod
    def _constraint(cls, v: Any) -> Any:
        return [x for x in v.split(",") if x.strip()] if isinstance(v, str) else v

    @field_validator("constraint")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        return sorted({check_name("label", x) for x in v})

    @property
    def wants(self) -> str:
        """What kind of node it must run on, as the store keeps it: TYPE|LABEL,LABEL ('' any)."""
        return f"{self.gpu_type}|{','.join(self.constraint)}" if self.gpu_type or self.constraint else ""

    @field_validator("after", "after_any", mode="before")
    @classmethod
    def _job_ids(cls, v: Any) -> Any:
        # "41,42" from a job file or the form; a single id too.
        if isinstance(v, int) and not isinstance(v, bool):
            return [v]
        if isinstance(v, str):
            return parse_job_ids(v)
        return v

    @field_validator("after", "after_any")
    @classmethod
    def _positive_ids(cls, v: list[int]) -> list[int]:
        if any(i < 1 or i >= 2**62 for i in v):
            raise ValueError("job ids are whole numbers from 1")
        return sorted(set(v))

    @field_validator("array", mode="before")
    @classmethod
    def _array(cls, v: Any) -> Any:
        if v is None or v == "":
            return None
        try:
            parse_array(str(v))
        except UnitError as e:
            raise ValueError(str(e).removeprefix("--array: ")) from None
        return str(v)

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep(cls, v: Any) -> Any:
        # From a job file: {lr: [0.001, 0.0003]}; from the CLI: already strings.
        if v is None:
            return {}
        if isinstance(v, dict):
            items = []
            for k, vals in v.items():
                vals = vals if isinstance(vals, list) else [vals]
                for x in vals:
                    # Numbers and words only: str() of null, true or a mapping is no value.
                    if isinstance(x, bool) or not isinstance(x, (str, int, float)):
                        raise ValueError(f"{str(k)[:32]}: each value is a number or a word")
                    if "," in str(x):
                        raise ValueError(f"{str(k)[:32]}: a value cannot hold a comma")
                items.append(f"{k}={','.join(str(x) for x in vals)}")
            try:
                return parse_sweep(items)
            except UnitError as e:
                raise ValueError(str(e).removeprefix("--sweep ")) from None
        return v

    @field_validator("notify", mode="before")
    @classmethod
    def _notify(cls, v: Any) -> Any:
        if v is None or v == {}:
            return None
        if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in ("webhook", "command"):
            raise ValueError("notify is {webhook: URL} or {command: CMD}")
        if "webhook" in v:
            url = v["webhook"]
            if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
                raise ValueError("notify webhook must be an http:// or https:// URL (at most 2048 characters)")
            if has_controls(url) or any(ch.isspace() for ch in url):
                raise ValueError("notify webhook contains spaces or control characters")
            if not url.isascii():
                raise ValueError("notify webhook must be ASCII: percent-encode other characters (%C3%A9 for é)")
            return {"webhook": url}
        cmd = v["command"]
        if isinstance(cmd, str):
            cmd = ["/bin/sh", "-c", cmd] if cmd.strip() else []
        if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
            raise ValueError("notify command must be a command line or a list of arguments")
        if len(cmd) > 256 or any(len(a) > 4096 or "\x00" in a for a in cmd):
            raise ValueError("notify command too long or contains a NUL byte")
        return {"command": cmd}

    @field_validator("time", mode="before")
    @classmethod
    def _time_limit(cls, v: Any) -> Any:
        # A number in JSON is seconds (the API's unit); text needs its unit.
        if v is None:
            return None
        try:
            return parse_time_limit(v)
        except UnitError as e:
            raise ValueError(str(e)) from None

    @field_validator("grace", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        if v is None:
            return None
        try:
            return parse_duration(v)
        except UnitError as e:
            raise ValueError(str(e)) from None

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        if v is None:
            return 0
        try:
            return parse_size(v)
        except UnitError as e:
            raise ValueError(str(e)) from None

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_ENV:
            raise ValueError(f"at most {MAX_ENV} environment variables")
        for k, val in v.items():
            if not k or "=" in k or has_controls(k) or "\x00" in val or len(val) > MAX_ARG_LEN:
                raise ValueError(f"bad environment variable {k!r}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # Printed in everyone's terminal: no C0/C1 controls (ESC, CSI \x9b) nor the
        # invisible format characters that reorder text (bidi overrides).
        if has_controls(v):
            raise ValueError("name contains control characters")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str) -> str:
        if v and not os.path.isabs(v):
            raise ValueError("workdir must be an absolute path")
        if has_controls(v):
            raise ValueError("workdir contains control characters")
        if len(v.encode(errors="surrogateescape")) > 4095:
            raise ValueError("workdir is longer than a path may be (4,095 bytes)")
        # Lexically: /a/./b/../c is /a/c (what `cd` does). A node asked whether it
        # has the directory then walks each name once, never `..` up and down.
        return os.path.normpath(v) if v else v

    @model_validator(mode="after")
    def _array_size(self) -> JobSpec:
        if self.array and self.sweep:
            raise ValueError("give --array or --sweep, not both (a sweep's tasks are numbered from 0)")
        if self.sweep:
            n = 1
            for vals in self.sweep.values():
                n *= len(vals)
            if n > MAX_ARRAY_TASKS:
                raise ValueError(f"the sweep makes {n:,} tasks; at most {MAX_ARRAY_TASKS:,} in one array")
        if self.max_running is not None and not self.is_array:
            raise ValueError("max_running (%N) is for arrays and sweeps")
        if self.session and self.is_array:
            raise ValueError("an interactive session is one job, not an array")
        if self.nodes > 1:
            if self.session:
                raise ValueError("an interactive session runs on one node (no --nodes)")
            if self.gpus % self.nodes:
                raise ValueError(
                    f"{self.gpus} GPU{'s' if self.gpus != 1 else ''} cannot be split evenly over {self.nodes} nodes: "
                    "give the GPUs per node (--gpus-per-node, gpus_per_node:) or a multiple of the nodes"
                )
        if self.array and "%" in self.array and self.max_running is not None:
            raise ValueError("give the cap once: --array ...%N or --max-running N")
        return self

    @property
    def is_array(self) -> bool:
        return bool(self.array or self.sweep)

    @property
    def signature(self) -> str:
        """What kind of job this is, for learned runtimes (predict.signature)."""
        from scheduler.predict import signature

        return signature(self.name, self.command)

    @property
    def needs_dir(self) -> str:
        """The directories a node must have to run this job, one per line ('' when any
        node can): the live workdir without a snapshot, the repository of a git snapshot
        (its commit is read there); a snapshot of plain files needs nothing of the node.
        A notebook also needs the directory of its token file (made for it, private)."""
        dirs = []
        if self.code is None:
            dirs.append(self.workdir)
        elif self.code.kind == "git" and self.code.commit:
            dirs.append(self.code.repo)
        token = self.env.get("JUPYTER_TOKEN_FILE", "") if self.session == "notebook" else ""
        if token.startswith("/") and not has_controls(token):
            dirs.append(os.path.dirname(os.path.normpath(token)))
        return "\n".join(d for d in dirs if d)

    def array_plan(self) -> tuple[IndexPlan, int | None]:
        """(each task's index, in order; the cap on tasks at once). A sweep's index is
        its place in the grid (the first name varies slowest, as itertools.product)."""
        if self.sweep:
            n = 1
            for vals in self.sweep.values():
                n *= len(vals)
            return IndexPlan([range(n)]), self.max_running
        indices, cap = parse_array(self.array or "")
        return indices, cap if cap is not None else self.max_running

    def task_values(self, index: int) -> dict[str, str]:
        """The sweep's values of task `index` ({} for an --array)."""
        out: dict[str, str] = {}
        rest = index
        names = list(self.sweep)
        for name in reversed(names):
            vals = self.sweep[name]
            rest, i = divmod(rest, len(vals))
            out[name] = vals[i]
        return {k: out[k] for k in names}

    def task_spec(self, array_id: int, index: int) -> dict[str, Any]:
        """What task `index` of array `array_id` runs: the command and the values of
        --env with `{index}`, `{array_id}` and each sweep name replaced (other braces are
        left alone: a shell `${HOME}` or a JSON argument stays as written), and
        LABQ_ARRAY_ID, LABQ_ARRAY_INDEX and LABQ_PARAM_<NAME> in its environment."""
        return self._expand(str(array_id), str(index), self.task_values(index))

    def task_bytes_bound(self) -> int:
        """The most one task's spec can take once expanded (JSON bytes): each sweep name
        at its longest value, the largest index. A submission's size says little here
        (`{lr}` written a thousand times, a long value): admission bounds this instead."""
        indices, _ = self.array_plan()
        top = max((r[-1] for r in indices.ranges if len(r)), default=0)
        longest = {k: max(vals, key=lambda v: len(json.dumps(v))) for k, vals in self.sweep.items()}
        return len(json.dumps(self._expand("9" * 19, str(top), longest)))

    def _expand(self, array_id: str, index: str, values: dict[str, str]) -> dict[str, Any]:
        subs = {"index": index, "array_id": array_id, **values}
        pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in subs) + r")\}")
        # The array is told of once, when it ends: its tasks carry no notify.
        data = self.model_dump(exclude={"array", "sweep", "max_running", "after", "after_any", "notify"})
        data["command"] = [pattern.sub(lambda m: subs[m.group(1)], a) for a in self.command]
        env = {k: pattern.sub(lambda m: subs[m.group(1)], v) for k, v in self.env.items()}
        env["LABQ_ARRAY_ID"] = array_id
        env["LABQ_ARRAY_INDEX"] = index
        for k, v in values.items():
            env[f"LABQ_PARAM_{k.upper()}"] = v
        data["env"] = env
        return data

    @model_validator(mode="after")
    def _default_name(self) -> JobSpec:
        if not self.name:
            name = strip_controls(default_name(self.command))[:MAX_NAME]
            object.__setattr__(self, "name", name or "job")
        return self


def first_error(exc: Exception) -> tuple[str, str]:
    """(field, message) of the first pydantic validation error, for a one-line refusal."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        errs = errors()
        if errs:
            # A field name is the caller's text (an unknown key): one line, escaped.
            loc = ".".join(str(p) for p in errs[0].get("loc", ()))
            if has_controls(loc) or len(loc) > 64:
                loc = repr(loc[:64])[1:-1]
            msg = str(errs[0].get("msg", "invalid"))
            if errs[0].get("type") == "extra_forbidden":
                msg = "unknown field"
            ctx = errs[0].get("ctx") or {}
            limit = ctx.get("ge", ctx.get("le"))
            if errs[0].get("type") in ("greater_than_equal", "less_than_equal") and limit is not None:
                # pydantic's "Input should be greater than or equal to 1", in plain words.
                msg = f"must be {limit} or {'more' if errs[0]['type'] == 'greater_than_equal' else 'less'}"
            msg = msg.removeprefix("Value error, ")
            return loc, msg
    return "", str(exc)
