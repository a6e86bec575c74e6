"""Turning the daemon's answers into text: shared by the CLI and the terminal UI.

Standard library only (the CLI imports it). Every string another user chose (a job
name, a command, an environment name, a log line, a token note) passes through
`clean()` before it reaches a terminal: a name like "\\x1b]0;...\\x07" or "\\x9b2J"
would otherwise drive the terminal of whoever lists the queue, an admin included.
"""

from __future__ import annotations

import re
import shlex
import time
import unicodedata
from collections.abc import Mapping
from typing import Any, NamedTuple

from scheduler.shapes import ACTIVE_NAMES, WAITING_NAMES
from scheduler.units import format_duration

_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def _bad(ch: str) -> bool:
    if ch.isprintable() or ch == " ":
        return False
    cat = unicodedata.category(ch)
    # Control characters and invisible format characters (bidi overrides, zero-width);
    # ordinary non-printables of other scripts (e.g. unassigned) are escaped as well.
    return cat in ("Cc", "Cf", "Zl", "Zp", "Cn", "Cs", "Co") or not ch.isprintable()


def clean(text: object, keep: str = "") -> str:
    """`text` with every control or invisible character shown as an escape (\\x1b)."""
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():
        return s
    return "".join(_escape(ch) if ch not in keep and _bad(ch) else ch for ch in s)


def clean_log(text: str) -> str:
    """A log for a terminal that is not its owner's: lines and tabs stay, escape
    sequences and other controls are shown, not obeyed."""
    return clean(text, keep="\n\t")


# -- numbers and times -------------------------------------------------------------------------------
def gib(b: Any) -> str:
    return "n/a" if b is None else f"{b / 2**30:.1f}"


def pct(v: Any) -> str:
    return "n/a" if v is None else f"{v:.0f}%"


def stamp(t: float | None) -> str:
    return "-" if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def clock(t: float | None, now: float | None = None) -> str:
    """HH:MM, with the date in front when it is not today."""
    if not t:
        return "-"
    today = time.localtime(now if now is not None else time.time())[:3]
    lt = time.localtime(t)
    return time.strftime("%H:%M" if lt[:3] == today else "%m-%d %H:%M", lt)


def age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(max(0.0, seconds))


def memory(n: Any) -> str:
    """A byte count as people read memory: 16.0 GiB (and '-' for none)."""
    return "-" if not n else f"{int(n) / 2**30:.1f} GiB"


# -- a job in the queue -------------------------------------------------------------------------------
def eta_cell(j: Mapping[str, Any], now: float) -> str:
    """When a pending job should start; '?' when unknown, or when the estimate has
    passed and it still waits (never "now" for a job that is not starting)."""
    if j["state"] != "PENDING":
        return ""
    text = eta_text(j.get("eta"), now)
    # "~": the estimate counts on learned runtimes (labq show says so in words).
    return f"~{text}" if j.get("eta_predicted") and text != "?" else text


def eta_text(e: float | None, now: float) -> str:
    return "?" if not e or e <= now else clock(e, now)


def backfill_hint(why: list[Mapping[str, Any]] | None, time_limit: float | None) -> str:
    """For a job held back only so as not to delay a reserved one: the --time that would
    let it start now. Said only when its limit is the default (the usual reason)."""
    for r in why or []:
        data = r.get("data") or {}
        if r.get("kind") == "backfill" and data.get("reserved_in_s", 0) >= 60 and time_limit is None:
            minutes = int(data["reserved_in_s"] // 60)
            return f"would start now with `--time {minutes}m` or less (its limit is the default, which backfill must assume)"
    return ""


def job_holder(g: Mapping[str, Any]) -> str:
    """Who holds a GPU or a process on it: `job 6 (ana)`; just `job 6` in the moment after
    a job ended, when the monitor still sees it but the daemon no longer lists its owner."""
    return f"job {g.get('job_ref') or g['job_id']}" + (f" ({clean(g['user'])})" if g.get("user") else "")


def preview_lines(out: Mapping[str, Any], now: float) -> list[Line]:
    """`labq submit --dry-run` and the UI's submit form: what would happen now."""
    if out.get("starts_now"):
        return [Line("head", "", f"would start now on {clean(out.get('node') or '?')}")]
    eta = out.get("eta")
    when = f" (estimated start {eta_text(eta, now)})" if eta and eta > now else ""
    lines = [Line("head", "", f"would wait{when}:")]
    lines += [Line("reason", "", clean(r)) for r in out.get("reasons") or []]
    hint = backfill_hint(out.get("why"), out.get("time_limit"))
    if hint:
        lines.append(Line("field", "hint", hint))
    return lines


def elapsed_cell(j: Mapping[str, Any], now: float) -> str:
    """How long it has waited (queued) or run (running or ended)."""
    state = j["state"]
    if state in WAITING_NAMES:
        return age(now - j["submit_time"])
    if state in ACTIVE_NAMES:
        return age(now - (j.get("start_time") or now))
    return age(j.get("runtime_s"))


def where_or_why(j: Mapping[str, Any], detail: bool = False) -> str:
    """A running job's node and GPUs (and flags); a waiting or ended job's first reason.
    `detail`: also a running job's stop reason, if one was asked. An array: its tasks in
    numbers, and why the rest wait."""
    a = j.get("array")
    if a:
        first = (j.get("reasons") or [""])[0]
        return clean(f"{array_text(a)}; {first}" if first and j["state"] == "PENDING" else array_text(a))
    if j["state"] in ACTIVE_NAMES:
        # Flags first: on a narrow screen "[idle 35m]" matters more than the node.
        marks = [*(j.get("flags") or []), *(["preemptible"] if j.get("preemptible") else [])]
        flags = "".join(f"[{f}] " for f in marks)
        where = f"{flags}{j.get('node_name') or '-'} [{j.get('gpu_ids') or '-'}]"
        if detail and j.get("reasons"):
            where += f" ({j['reasons'][0]})"
        return clean(where)
    reasons = j.get("reasons") or []
    return clean(reasons[0]) if reasons else ""


def ref(j: Mapping[str, Any]) -> str:
    """How a job is named: `42`, or `42.7` for task 7 of array 42."""
    return str(j.get("ref") or j["id"])


def array_text(a: Mapping[str, Any]) -> str:
    """An array's tasks in numbers: `6/48 running, 30 pending, 12 done, 0 failed`."""
    text = f"{a['running']}/{a['size']} running, {a['pending']} pending, {a['done']} done, {a['failed']} failed"
    if a.get("cancelled"):
        text += f", {a['cancelled']} cancelled"
    return text + (f" (at most {a['cap']} at once)" if a.get("cap") else "")


def array_state(j: Mapping[str, Any]) -> str:
    """An array's row says RUNNING while any task runs (its own state stays PENDING
    until all have ended: that is what a chain on it waits for)."""
    a = j.get("array")
    return "RUNNING" if a and j["state"] == "PENDING" and a["running"] else j["state"]


def queue_cells(j: Mapping[str, Any], now: float) -> dict[str, str]:
    """Every column either front end shows for a job, each written once."""
    gpu = j.get("gpu") or {}
    a = j.get("array")
    return {
        "ID": ref(j) + ("[]" if a else ""),
        "USER": clean(j["user"]),
        "NAME": clean(str(j.get("name", ""))),
        "KIND": str(j.get("kind") or "batch"),
        "GPUS": str(j["gpus"]) + ("/task" if a else ""),
        "STATE": array_state(j),
        "WAIT / RUN": elapsed_cell(j, now),
        "ETA": eta_cell(j, now),
        "UTIL": pct(gpu.get("util_now")) if j["state"] in ACTIVE_NAMES and gpu else "",
        "REASON / NODE": where_or_why(j),
    }


# -- a job in full (`labq show` and the UI's job screen) -----------------------------------------------
PRIVATE = "(private: only the owner and admins see it)"


class Line(NamedTuple):
    """One line of a job's details. `kind`: head, field, reason, flag, event."""

    kind: str
    label: str
    text: str


def job_lines(j: Mapping[str, Any], now: float, events: int | None = None) -> list[Line]:
    """A job in full, as lines both front ends render (the UI adds only markup).
    `events`: show the last N history lines (None: all)."""
    spec = j.get("spec") or {}
    private = bool(j.get("private"))
    a = j.get("array")
    kind = "array" if a else "job"
    out = [Line("head", "", f"{kind} {ref(j)}  {clean(j.get('name', ''))}  ({clean(j['user'])})  {array_state(j)}")]

    def field(label: str, text: str) -> None:
        out.append(Line("field", label, text))

    if a:
        plan = (
            spec.get("array")
            or " × ".join(f"{k}={','.join(v)}" for k, v in (spec.get("sweep") or {}).items())
            or " × ".join(f"{k} ({n} values)" for k, n in (spec.get("sweep_sizes") or {}).items())
        )
        field("tasks", f"{clean(plan)} ({a['size']} tasks; {ref(j)}.INDEX names one)")
        field("array", array_text(a))
    elif j.get("array_id") is not None:
        field("array", f"task {j.get('array_index')} of array {j['array_id']}")

    field("command", PRIVATE if private else clean(shlex.join(spec.get("command") or [])))
    default = j.get("default_time_limit")
    limit = (
        format_duration(j["time_limit"])
        if j.get("time_limit")
        else f"the default ({format_duration(default)})" if default else "the default"
    )
    n_nodes = len(j.get("ranks") or ()) or int(spec.get("nodes") or 1)
    over = f" over {n_nodes} whole nodes" if n_nodes > 1 else ""
    if spec.get("gpu_type"):
        over += f" of type {clean(str(spec['gpu_type']))}"
    if spec.get("constraint"):
        over += f" on nodes labelled {clean(', '.join(map(str, spec['constraint'])))}"
    field(
        "resources",
        f"{j['gpus']} GPU{'s' if j['gpus'] != 1 else ''}{over}   cpus {spec.get('cpus', 0):g}   "
        f"memory {memory(spec.get('memory'))}   time limit {limit}   priority {j.get('priority', 0)}",
    )
    chain = [f"{', '.join(map(str, spec[k]))} ({how})" for k, how in (("after", "must succeed"), ("after_any", "any end")) if spec.get(k)]
    if chain:
        field("after", "; ".join(chain))
    if private:
        names = spec.get("env_names") or []
        field("workdir", PRIVATE)
        field("env", f"{clean(', '.join(names)) if names else '-'}  (names only; values are private)")
    else:
        field("workdir", clean(spec.get("workdir") or "~"))
        code = spec.get("code")
        if j.get("kind") in ("shell", "notebook"):
            how = f"labq attach {ref(j)}" if j["kind"] == "shell" else "its URL: labq logs " + ref(j)
            field("session", f"{j['kind']} ({how}); runs the live tree")
        elif isinstance(code, Mapping):
            field("code", f"{clean(code.get('summary') or code.get('id', '')[:12])}   (labq diff {ref(j)})")
        elif spec.get("command"):
            field("code", "the workdir as it is when the job starts (no snapshot)")
    pred = j.get("predicted")
    if isinstance(pred, Mapping) and pred.get("seconds") is not None:
        how = "used for backfill and ETAs" if pred.get("confident") else "not confident: not used"
        field(
            "predicted",
            f"runtime {format_duration(pred['seconds'])} (90% within {format_duration(pred.get('high') or 0)}; "
            f"{pred.get('runs')} runs like it; {how})",
        )
    field("submitted", f"{stamp(j.get('submit_time'))}   started {stamp(j.get('start_time'))}   ended {stamp(j.get('end_time'))}")
    ranks = j.get("ranks") or []
    if ranks:
        # A job over several nodes: a line per rank (labq logs --rank N shows its output).
        for r in ranks:
            pid = f"   pid {r.get('pid') or '-'}" if "pid" in r else ""
            field(f"rank {r.get('rank')}", f"{clean(str(r.get('node_name') or '-'))}   GPUs {r.get('gpu_ids') or '-'}{pid}")
        field("nodes", f"{len(ranks)}, one rank each   attempt {j.get('attempt')}   (labq logs {ref(j)} --rank N)")
    elif j.get("node_name"):
        pid = f"   pid {j.get('pid') or '-'}" if "pid" in j else ""
        field("node", f"{clean(j['node_name'])}   GPUs {j.get('gpu_ids') or '-'}{pid}   attempt {j.get('attempt')}")
    if j.get("exit_code") is not None or j.get("signal") is not None:
        field("exit code", f"{j.get('exit_code')}   signal {j.get('signal') or '-'}")
    gpu = j.get("gpu")
    if gpu:
        now_util = "" if gpu.get("util_now") is None else f"   now {gpu['util_now']:.0f}%"
        field(
            "GPU use",
            f"mean {pct(gpu.get('util_mean'))}{now_util}   peak memory {gib(gpu.get('mem_peak'))} GiB   "
            f"busy {gpu.get('busy_gpu_s', 0) / 3600:.2f} GPU-h   idle {gpu.get('idle_gpu_s', 0) / 3600:.2f} GPU-h",
        )
    for flag in j.get("flags") or []:
        out.append(Line("flag", "flag", clean(flag)))
    if j["state"] == "PENDING":
        eta = j.get("eta")
        known = bool(eta and eta > now)
        basis = ""
        if known and j.get("eta_predicted"):
            tl = j.get("time_limit")
            basis = f" (predicted from similar runs; limit {format_duration(tl) if tl else 'the default'})"
        field("waiting", f"estimated start {stamp(eta) if known else 'unknown'}{basis}")
        for r in j.get("reasons") or []:
            out.append(Line("reason", "", clean(r)))
        hint = backfill_hint(j.get("why"), j.get("time_limit"))
        if hint:
            field("hint", hint)
    elif j.get("reasons"):
        field("reason", clean(j["reasons"][0]))
    log = j.get("log") or {}
    if a:
        pass  # an array has no log of its own: each task has one
    elif log.get("removed"):
        field("log", f"removed {stamp(log['removed'])} (per-user log cap, oldest first)")
    elif j.get("log_path"):
        field("log", clean(j["log_path"]))
    elif not log.get("readable", True):
        field("log", "private (the owner's and admins' only)")
    history = list(j.get("events") or [])
    if history:
        out.append(Line("field", "history", ""))
        for e in history[-events:] if events else history:
            arrow = f"{e['old_state']} → {e['new_state']}" if e.get("old_state") else e["new_state"]
            out.append(Line("event", "", f"{stamp(e['time'])}  {arrow}  {clean(e['reason'])}"))
    return out


def job_text(j: Mapping[str, Any], now: float) -> str:
    """`labq show`: the lines as plain text."""
    rows = []
    for line in job_lines(j, now):
        if line.kind == "head":
            rows.append(line.text)
        elif line.kind == "reason":
            rows.append(f"    - {line.text}")
        elif line.kind == "event":
            rows.append(f"    {line.text}")
        else:
            rows.append(f"  {line.label + ':':<11}{line.text}".rstrip())
    return "\n".join(rows)


# -- what people type ------------------------------------------------------------------------------
def parse_env(items: list[str]) -> dict[str, str]:
    """KEY=VALUE items (`--env`, the UI's env field); ValueError says which is wrong."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"use KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def max_gpus_text(q: Mapping[str, Any]) -> str:
    """A quota's GPU caps in one cell: `8`, `h100:4`, `8 h100:4`; '-' for none."""
    parts = [] if q.get("max_gpus") is None else [f"{q['max_gpus']:g}"]
    parts += [f"{t}:{n}" for t, n in q.get("max_gpus_per_type") or ()]
    return " ".join(parts) or "-"


# `{name}` as an array's or sweep's task sees it: not `${name}` (a shell variable).
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholder_warning(spec: dict[str, Any]) -> str | None:
    """A `{name}` in the command or --env that no task will replace (a typo: `{lrr}` for
    `{lr}`), or `{index}` in a job that is not an array. Such braces are passed as
    written (JobSpec.task_spec leaves other braces alone, for `${HOME}` or JSON), so
    the submission goes ahead: this only says so, before a whole sweep runs with them."""
    texts = [str(a) for a in spec.get("command") or []] + [str(v) for v in (spec.get("env") or {}).values()]
    found = dict.fromkeys(m for t in texts for m in _PLACEHOLDER.findall(t))
    if not found:
        return None
    sweep = list(spec.get("sweep") or {})
    if not spec.get("array") and not sweep:
        tasky = [n for n in found if n in ("index", "array_id")]
        if tasky:
            return f"{{{tasky[0]}}} is replaced only in an array or a sweep (--array, --sweep): this job gets it as written"
        return None
    known = ("index", "array_id", *sweep)
    unknown = [n for n in found if n not in known]
    if not unknown:
        return None
    names = ", ".join(f"{{{n}}}" for n in known)
    return f"{', '.join(f'{{{n}}}' for n in unknown)} is not one of {names}: each task gets it as written"
