"""Parsing and printing of durations and sizes, shared by the CLI and the daemon.

Kept free of third-party imports: the CLI imports it and must start fast.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class UnitError(ValueError):
    """A duration or size that cannot be understood; the message is user-facing."""


def parse_duration(text: str | int | float) -> float:
    """Seconds from '90', '90s', '30m', '4h', '1d12h', '1-02:00:00' or 'HH:MM:SS'."""
    # Whatever arrives over the API: anything but a number or a string is refused here.
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise UnitError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = text.strip().lower()
        value = _parse_duration_str(s)
    if not (value > 0) or value != value or value > 10 * 365 * 86400:
        raise UnitError(f"duration must be between 1s and 10 years, got {text!r}")
    return value


# Words people write after a number meaning a unit: `--time 2 hours` must not become a
# 2-second limit and a job that runs `hours`.
UNIT_WORDS = frozenset(
    {"s", "sec", "secs", "second", "seconds", "m", "min", "mins", "minute", "minutes"}
    | {"h", "hr", "hrs", "hour", "hours", "d", "day", "days", "w", "week", "weeks"}
)


def parse_time_limit(text: str | int | float) -> float:
    """A job's time limit: like parse_duration, except that a bare number in text is
    refused. Slurm reads `--time 90` as minutes, most tools as seconds: labq asks."""
    if isinstance(text, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", text):
        n = text.strip()
        if float(n) == 0:
            raise UnitError("a time limit must be more than 0 (for example 30m or 4h)")
        raise UnitError(f"{n} what? give a unit: {n}m, {n}s, {n}h, or HH:MM:SS (Slurm would read minutes)")
    return parse_duration(text)


def _parse_duration_str(s: str) -> float:
    if not s:
        raise UnitError("empty duration")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    # Slurm's D-HH:MM:SS and HH:MM:SS forms, familiar to cluster users.
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", s)
    if m:
        days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
        return float(days * 86400 + hours * 3600 + minutes * 60 + seconds)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", s)
    if parts and "".join(f"{n}{u}" for n, u in parts) == s.replace(" ", ""):
        return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise UnitError(f"not a duration: {s!r} (use e.g. 90s, 30m, 4h, 1d or HH:MM:SS)")


def parse_size(text: str | int | float) -> int:
    """Bytes from '512M', '16G', '16GiB' or a plain integer of bytes."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise UnitError(f"not a size: {text!r}")
    if isinstance(text, float):
        if text != text or text in (float("inf"), float("-inf")) or text != int(text):
            raise UnitError(f"not a whole number of bytes: {text!r}")
        value = int(text)
    elif isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
        if not m:
            raise UnitError(f"not a size: {text!r} (use e.g. 512M or 16G)")
        value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if value < 0 or value > 1024**5:
        raise UnitError(f"size out of range: {text!r}")
    return value


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def format_size(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def parse_job_ids(text: str) -> list[int]:
    """`41,42` or `41 42`: job ids for --after / --after-any. `42.*` is array 42 as a
    whole (all its tasks); a single task (`42.7`) is refused: its row exists only once
    it starts, so a chain names the array."""
    ids = []
    for part in text.replace(",", " ").split():
        if part.endswith(".*"):
            part = part[:-2]
        elif "." in part and part.replace(".", "", 1).isdigit():
            raise ValueError(f"{part!r}: wait for a whole array ({part.split('.')[0]}.*), not one task")
        if not part.isascii() or not part.isdigit() or len(part) > 18:
            raise ValueError(f"{part!r} is not a job id (give ids like 41,42 or 42.* for an array)")
        ids.append(int(part))
    if not ids:
        raise ValueError("no job id given")
    return ids


MAX_ARRAY_TASKS = 100_000
MAX_SWEEP_VALUE = 256  # characters in one --sweep value


class IndexPlan:
    """An array's indices in order, kept as ranges: a 100,000-task array is a few
    objects, not a list (the daemon keeps one per waiting array). `len`, `plan[i]` (the
    i-th index handed out) and `index in plan` are arithmetic."""

    def __init__(self, ranges: list[range]) -> None:
        self.ranges = ranges
        self.starts: list[int] = []  # position of each range's first index
        total = 0
        for r in ranges:
            self.starts.append(total)
            total += len(r)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, pos: int) -> int:
        if not 0 <= pos < self.total:
            raise IndexError(pos)
        i = bisect.bisect_right(self.starts, pos) - 1
        return self.ranges[i][pos - self.starts[i]]

    def __contains__(self, index: object) -> bool:
        return any(index in r for r in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for r in self.ranges:
            yield from r


def parse_array(text: str) -> tuple[IndexPlan, int | None]:
    """Slurm's --array: `0-99`, `1,3,5-9`, `0-98:2` (a step), with `%8` at the end to run
    at most 8 at once. Returns (the indices in order, the cap or None). The work is
    bounded by the count the text asks for (never above MAX_ARRAY_TASKS), so no string
    of ranges can make the daemon count for long; an index given twice is refused."""
    body, pct, cap_text = str(text).strip().partition("%")
    cap: int | None = None
    if pct:
        if not cap_text.isascii() or not cap_text.isdigit() or len(cap_text) > 9 or int(cap_text) < 1:
            raise UnitError("--array: %N needs a whole number from 1 (at most N tasks at once)")
        cap = min(int(cap_text), MAX_ARRAY_TASKS)
    ranges: list[range] = []
    total = 0
    for part in body.split(","):
        m = re.fullmatch(r"([0-9]{1,9})(?:-([0-9]{1,9})(?::([0-9]{1,9}))?)?", part.strip(), re.ASCII)
        if m is None:
            raise UnitError("--array: write ranges like 0-99, 1,3,5-9 or 0-98:2, then %N to cap")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo or step < 1:
            raise UnitError(f"--array: {part.strip()[:40]} is an empty range")
        r = range(lo, hi + 1, step)
        total += len(r)
        if total > MAX_ARRAY_TASKS:
            raise UnitError(f"--array: at most {MAX_ARRAY_TASKS:,} tasks in one array")
        ranges.append(r)
    if len(ranges) > 1:
        seen: set[int] = set()
        for r in ranges:  # at most MAX_ARRAY_TASKS steps in all: checked above
            for i in r:
                if i in seen:
                    raise UnitError(f"--array: index {i} is given twice")
                seen.add(i)
    return IndexPlan(ranges), cap


_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}", re.ASCII)


def parse_sweep(items: list[str]) -> dict[str, list[str]]:
    """`--sweep lr=1e-3,3e-4 --sweep bs=32,64`: each name's values, in the order given."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, eq, values = item.partition("=")
        name = name.strip()
        if not eq or not _PARAM.fullmatch(name):
            raise UnitError(f"--sweep {item[:60]}: write NAME=v1,v2,... (a name of letters, digits, _)")
        if name in ("index", "array_id"):
            raise UnitError(f"--sweep {name}: that name is labq's own ({{{name}}} is always there)")
        if name.upper() in {n.upper() for n in out}:
            # Each is $LABQ_PARAM_<NAME> in the task's environment: lr and LR would be one.
            raise UnitError(f"--sweep {name} given twice (names differ by more than case)")
        vals = [v.strip() for v in values.split(",")]
        if not all(vals):
            raise UnitError(f"--sweep {item[:60]}: an empty value")
        if any(len(v) > MAX_SWEEP_VALUE for v in vals):
            # A value is a learning rate or a dataset name; each is copied into every task.
            raise UnitError(f"--sweep {name}: a value longer than {MAX_SWEEP_VALUE} characters (put it in a file)")
        out[name] = vals
    return out
