"""Plain data and formatting for the screens: no widgets here, so it is easy to test.

`Data` is what one poll of the daemon brought back; the screens turn it into rows
with the functions below. Every time-dependent text takes `now` from the caller
(the app's clock, fixed in the snapshot tests).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from scheduler.present import age, clean, clock, gib, job_holder, max_gpus_text, pct, queue_cells, stamp
from scheduler.shapes import ACTIVE_NAMES, TERMINAL_NAMES, WAITING_NAMES

__all__ = ["age", "clock", "gib", "pct", "stamp"]  # re-exported for the screens

SPARK = "▁▂▃▄▅▆▇█"
ACTIVE_STATES = ACTIVE_NAMES
WAITING_STATES = WAITING_NAMES
TERMINAL_STATES = TERMINAL_NAMES
STATES = ("PENDING", "STARTING", "RUNNING", "PREEMPTED", *TERMINAL_STATES)
# Samples of GPU history the UI keeps per GPU (one per poll): ~10 minutes at 1 s.
HISTORY = 600


@dataclass
class Data:
    """The latest answers from the daemon, and whether they are still fresh."""

    health: dict[str, Any] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    quotas: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    fetched_at: float | None = None
    error: str = ""
    down_since: float | None = None
    # (node id, gpu index) -> recent (util %, memory fraction) samples for the sparklines
    history: dict[tuple[str, int], deque[tuple[float | None, float | None]]] = field(default_factory=dict)

    @property
    def me(self) -> str:
        return str(self.health.get("caller", ""))

    @property
    def admin(self) -> bool:
        return bool(self.health.get("caller_is_admin"))

    def record_history(self, nodes: list[dict[str, Any]]) -> None:
        for n in nodes:
            for g in n.get("gpu_list", []):
                key = (n["id"], int(g["index"]))
                h = self.history.get(key)
                if h is None:
                    h = self.history[key] = deque(maxlen=HISTORY)
                    # Seed from the daemon's own history when it sent one.
                    for _, util, mem in g.get("history", []) or []:
                        h.append((util, _frac(mem, g.get("memory_total"))))
                h.append((g.get("util_gpu"), _frac(g.get("memory_used"), g.get("memory_total"))))


def _frac(used: Any, total: Any) -> float | None:
    if used is None or not total:
        return None
    return float(used) / float(total)


def spark(values: list[float | None], width: int, top: float = 100.0) -> str:
    """The last `width` values as block characters; a gap is a space."""
    tail = values[-width:]
    out = []
    for v in tail:
        if v is None:
            out.append(" ")
        else:
            i = int(round(max(0.0, min(1.0, v / top)) * (len(SPARK) - 1)))
            out.append(SPARK[i])
    return "".join(out).rjust(width)


def bar(value: float, full: float, width: int) -> str:
    """A horizontal bar; past `full` it is drawn to the end with a marker."""
    if full <= 0:
        return " " * width
    frac = value / full
    n = int(round(min(1.0, frac) * width))
    return ("█" * n + "·" * (width - n)) if frac <= 1 else "█" * (width - 1) + "▶"


def safe(text: object) -> str:
    """A string another user chose, for a table cell: controls shown as escapes, never
    sent to the terminal. (SyncTable makes each cell a Text: markup is not parsed.)"""
    return clean(text)


# -- the queue ---------------------------------------------------------------------------------------
QUEUE_COLUMNS = ("ID", "USER", "NAME", "GPUS", "STATE", "WAIT / RUN", "ETA", "UTIL", "REASON / NODE")
# Below 120 columns UTIL goes (the GPUs screen has it) and names are cut shorter; the
# reason, cut in the table, is whole on the line under it for the selected job.
QUEUE_NARROW = ("ID", "USER", "NAME", "GPUS", "STATE", "WAIT / RUN", "ETA", "REASON / NODE")


def queue_columns(width: int) -> tuple[str, ...]:
    return QUEUE_COLUMNS if width >= 120 else QUEUE_NARROW


def job_cells(j: dict[str, Any], now: float, columns: tuple[str, ...] = QUEUE_COLUMNS) -> tuple[str, ...]:
    """The queue's columns (present.queue_cells, the same as `labq queue`'s)."""
    cells = queue_cells(j, now)
    cells["NAME"] = cells["NAME"][: 28 if "UTIL" in columns else 14]
    return tuple(cells[c] for c in columns)


def pick(cells: tuple[str, ...], every: tuple[str, ...], columns: tuple[str, ...]) -> tuple[str, ...]:
    """The cells of `columns`, from a row with a cell for each of `every`."""
    if columns == every:
        return cells
    return tuple(cells[every.index(c)] for c in columns)


@dataclass(frozen=True)
class QueueFilter:
    mine: bool = False
    state: str = ""  # "" = every active job; "ALL" = finished too; else one state
    user: str = ""
    text: str = ""


def filter_jobs(jobs: list[dict[str, Any]], f: QueueFilter, me: str) -> list[dict[str, Any]]:
    text = f.text.lower()
    out = []
    for j in jobs:
        if f.mine and j["user"] != me:
            continue
        if f.user and j["user"] != f.user:
            continue
        if f.state == "" and j["state"] not in (*ACTIVE_STATES, *WAITING_STATES):
            continue
        if f.state not in ("", "ALL") and j["state"] != f.state:
            continue
        if text:
            hay = f"{j['id']} {j['user']} {j.get('name', '')} {j['state']} {' '.join(j.get('reasons') or [])}"
            if text not in hay.lower():
                continue
        out.append(j)
    return out


_STATE_ORDER = {s: i for i, s in enumerate(("RUNNING", "STARTING", "PENDING", "PREEMPTED"))}


def sort_jobs(jobs: list[dict[str, Any]], column: str, reverse: bool) -> list[dict[str, Any]]:
    """Default order: running, then waiting in the policy's rank, then the rest by id."""

    def key(j: dict[str, Any]) -> Any:
        if column == "ID":
            return (j["id"],)
        if column == "USER":
            return (j["user"], j["id"])
        if column == "NAME":
            return (str(j.get("name", "")), j["id"])
        if column == "GPUS":
            return (j["gpus"], j["id"])
        if column == "STATE":
            return (j["state"], j["id"])
        if column == "ETA":
            return (j.get("eta") or float("inf"), j["id"])
        rank = j.get("rank")
        return (_STATE_ORDER.get(j["state"], 9), rank if rank is not None else 1 << 30, j["id"])

    return sorted(jobs, key=key, reverse=reverse)


# -- the team ----------------------------------------------------------------------------------------------
TEAM_COLUMNS = (
    "USER",
    "SHARES",
    "FS GPU-h",
    "FACTOR",
    "HELD",
    "GUAR",
    "MAX",
    "PEND",
    "WEEK GPU-h",
    "IDLE GPU-h",
    "HELD vs SHARE",
)
TEAM_NARROW = ("USER", "SHARES", "FS GPU-h", "FACTOR", "HELD", "WEEK GPU-h", "IDLE GPU-h", "HELD vs SHARE")


def team_columns(width: int) -> tuple[str, ...]:
    return TEAM_COLUMNS if width >= 110 else TEAM_NARROW


def team_rows(data: Data, width: int = 20) -> list[tuple[str, tuple[str, ...]]]:
    """One row per researcher with a quota entry or recent usage: someone who ran jobs
    this week without an entry of their own (the default quota) is on it too."""
    quotas = list(data.quotas.get("quotas", []))
    listed = {q["user"] for q in quotas}
    for r in data.usage.get("rows", []):
        if r.get("user") and r["user"] not in listed:
            listed.add(r["user"])
            quotas.append(
                {"user": r["user"], "shares": None, "usage_gpu_s": None, "factor": None, "held_gpus": 0}
                | {"guaranteed_gpus": None, "max_gpus": None, "pending_jobs": 0}
            )
    total_gpus = sum(int(n.get("gpus", 0)) for n in data.nodes) or 1
    total_shares = sum(float(q["shares"]) for q in quotas if q["shares"] is not None) or 1.0
    usage = {r["user"]: r for r in data.usage.get("rows", [])}
    rows: list[tuple[str, tuple[str, ...]]] = []

    def opt(v: Any, fmt: str = "g") -> str:
        return "-" if v is None else format(v, fmt)

    for q in quotas:
        entitled = total_gpus * float(q["shares"] or 0) / total_shares
        u = usage.get(q["user"], {})
        fs = None if q["usage_gpu_s"] is None else q["usage_gpu_s"] / 3600
        rows.append(
            (
                q["user"],
                (
                    clean(q["user"]),
                    opt(q["shares"]),
                    opt(fs, ".1f"),
                    opt(q["factor"], ".3f"),
                    str(q["held_gpus"]),
                    opt(q["guaranteed_gpus"]),
                    max_gpus_text(q),
                    str(q["pending_jobs"]),
                    f"{u.get('allocated_gpu_h', 0.0):.1f}",
                    f"{u.get('idle_gpu_h', 0.0):.1f}",
                    f"{bar(q['held_gpus'], entitled, width)} {q['held_gpus']}/{entitled:.1f}"
                    if q["shares"] is not None
                    else "no quota entry (the default)",
                ),
            )
        )
    return rows


# -- the GPUs -----------------------------------------------------------------------------------------------
GPU_COLUMNS = (
    "NODE / GPU",
    "NAME",
    "UTIL",
    "UTIL (last minutes)",
    "MEM GiB",
    "MEM",
    "TEMP",
    "POWER W",
    "HEALTH",
    "JOB / USER",
)


def gpu_columns(width: int) -> tuple[str, ...]:
    """Narrower terminals lose the history first (TEMP, POWER, HEALTH and who holds a
    GPU matter more), then the model name."""
    if width >= 130:
        return GPU_COLUMNS
    if width >= 100:
        return tuple(c for c in GPU_COLUMNS if c != "MEM")
    return tuple(c for c in GPU_COLUMNS if c not in ("NAME", "UTIL (last minutes)", "MEM"))


def gpu_rows(data: Data, now: float, spark_width: int = 20) -> list[tuple[str, tuple[str, ...]]]:
    rows: list[tuple[str, tuple[str, ...]]] = []
    for n in data.nodes:
        kind = "simulated" if n.get("simulated") else "real"
        if n.get("gpu_type"):
            kind = f"{safe(n['gpu_type'])} {kind}"
        labels = f"labels {safe(', '.join(n['labels']))}" if n.get("labels") else ""
        status = "LOST" if not n.get("alive", True) else ("" if n.get("schedulable") else "drained")
        if n.get("alive", True) and not n.get("trusted", True):
            status = "UNTRUSTED"  # in Ray without `labq join`: gets no jobs
        stale = f"STALE {age(n.get('age_s'))}" if n.get("stale") else ""
        note = n["note"] if n.get("note") and not n.get("simulated") else ""
        utils = [g["util_gpu"] for g in n.get("gpu_list", []) if g.get("util_gpu") is not None]
        mean = f"{sum(utils) / len(utils):.0f}%" if utils else "n/a"
        rows.append(
            (
                f"node:{n['id']}",
                (
                    safe(n["name"][:24]),
                    kind,
                    mean,
                    "",
                    "",
                    "",
                    "",
                    "",
                    " ".join(x for x in (status, stale) if x),
                    # In the last column: the one every terminal width shows.
                    " · ".join(x for x in (f"{n.get('gpus_used', 0)}/{n['gpus']} GPUs held", labels, safe(note)) if x),
                ),
            )
        )
        for g in n.get("gpu_list", []):
            hist = list(data.history.get((n["id"], int(g["index"])), ()))
            util_spark = spark([u for u, _ in hist], spark_width)
            mem_spark = spark([None if m is None else m * 100 for _, m in hist], max(6, spark_width // 2))
            power = (
                "n/a"
                if g.get("power_mw") is None
                else f"{g['power_mw'] / 1000:.0f}/{(g.get('power_limit_mw') or 0) / 1000:.0f}"
            )
            holder = job_holder(g) if g.get("job_id") else ""
            outside = [p for p in g.get("processes", []) if p.get("outside_labq")]
            if outside:
                holder = (holder + " " if holder else "") + f"+{len(outside)} outside labq"
            rows.append(
                (
                    f"gpu:{n['id']}:{g['index']}",
                    (
                        f"  gpu {g['index']}",
                        safe(str(g.get("name") or "n/a").replace("NVIDIA ", "")),
                        pct(g.get("util_gpu")),
                        util_spark,
                        f"{gib(g.get('memory_used'))}/{gib(g.get('memory_total'))}",
                        mem_spark,
                        "n/a" if g.get("temperature_c") is None else f"{g['temperature_c']}C",
                        power,
                        "ok" if g.get("healthy", True) else "UNHEALTHY",
                        safe(holder),
                    ),
                )
            )
    return rows
