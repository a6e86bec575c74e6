"""Job traces for the simulator: the Philly-style CSV files and the daemon's own history.

A trace is a list of `TraceJob`s in submission order. Nothing here replays anything
(simulator.py does); this is reading and checking, with one-line errors.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TRACE_COLUMNS = ("job_id", "vc", "submit_s", "num_gpus", "duration_s")


class TraceError(ValueError):
    """A trace or quota table that cannot be replayed; the message is user-facing."""


@dataclass(frozen=True)
class TraceJob:
    id: int  # row number; the trace's own id is kept in `name`
    name: str
    tenant: str
    submit: float
    gpus: int
    duration: float
    # Only GPUs of this type (an optional `gpu_type` column; a typed cluster: --nodes 40:h100,40:a100).
    gpu_type: str = ""


def load_trace(path: Path, limit: int | None = None) -> list[TraceJob]:
    """Jobs from a CSV with the columns of ../shared/traces (`job_id, vc, submit_s, num_gpus, duration_s`)."""
    try:
        f = path.open(newline="")
    except OSError as e:
        raise TraceError(f"cannot read trace {path}: {e.strerror}") from None
    jobs: list[TraceJob] = []
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(
                f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(TRACE_COLUMNS)})"
            )
        for line, row in enumerate(reader, start=2):
            try:
                gpus = int(row["num_gpus"])
                submit = float(row["submit_s"])
                duration = float(row["duration_s"])
            except (TypeError, ValueError):
                raise TraceError(
                    f"{path}:{line}: num_gpus, submit_s and duration_s must be numbers"
                ) from None
            if gpus < 1 or duration < 0 or submit < 0 or not math.isfinite(submit + duration):
                raise TraceError(f"{path}:{line}: needs num_gpus >= 1, submit_s >= 0 and duration_s >= 0")
            gtype = (row.get("gpu_type") or "").strip().lower()
            jobs.append(TraceJob(len(jobs) + 1, row["job_id"], row["vc"], submit, gpus, duration, gtype))
            if limit is not None and len(jobs) >= limit:
                break
    if not jobs:
        raise TraceError(f"{path}: no jobs")
    jobs.sort(key=lambda j: (j.submit, j.id))
    return jobs


def shares_from_sizes(path: Path, tenants: Iterable[str]) -> dict[str, float]:
    """Shares proportional to a `vc,node num` table; tenants not in it get the smallest share."""
    try:
        rows = list(csv.reader(path.open()))
    except OSError as e:
        raise TraceError(f"cannot read {path}: {e.strerror}") from None
    sizes: dict[str, float] = {}
    for row in rows[1:]:
        if len(row) >= 2 and row[1].strip():
            try:
                sizes[row[0].strip()] = float(row[1])
            except ValueError:
                raise TraceError(f"{path}: size of {row[0]!r} is not a number") from None
    if not sizes:
        raise TraceError(f"{path}: no tenant sizes")
    smallest = min(sizes.values())
    return {t: sizes.get(t, smallest) for t in sorted(set(tenants))}


def history_trace(db: Path) -> list[TraceJob]:
    """The daemon's own past jobs as a trace: user, GPUs, submit time, GPU run time."""
    import sqlite3

    if not db.exists():
        raise TraceError(f"no labq database at {db} (give --state-dir)")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = conn.execute(
            "SELECT j.id, j.user, j.gpus, j.submit_time, SUM(r.end_time - r.start_time) "
            "FROM jobs j JOIN runs r ON r.job_id = j.id "
            "WHERE r.end_time IS NOT NULL AND j.state IN ('SUCCEEDED','FAILED','TIMEOUT','CANCELLED') "
            "GROUP BY j.id ORDER BY j.submit_time"
        ).fetchall()
        conn.close()
    except sqlite3.Error as e:
        raise TraceError(f"cannot read {db}: {e}") from None
    if not rows:
        raise TraceError(f"{db} has no finished jobs to replay")
    t0 = rows[0][3]
    return [
        TraceJob(i + 1, str(jid), str(user), float(submit - t0), int(gpus), max(0.0, float(dur)))
        for i, (jid, user, gpus, submit, dur) in enumerate(rows)
    ]
