"""Per-researcher quotas and usage accounting: plain data and pure functions.

Usage is GPU-seconds decayed with a half-life H: a GPU-second used `a` seconds ago
counts 2^(-a/H). Integrating that over a job that held g GPUs from t0 to t1 gives
g * H/ln2 * (2^(-(now-t1)/H) - 2^(-(now-t0)/H)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

WEEK_S = 7 * 86400.0


@dataclass(frozen=True)
class Quota:
    shares: float = 1.0
    guaranteed_gpus: int = 0
    max_gpus: int | None = None
    max_jobs: int | None = None
    gpu_hours_per_week: float | None = None
    # What happens to this researcher's jobs whose GPUs sit idle past the idle window:
    # "notify" (flag only), "cancel" or "requeue" after a further window.
    idle_action: str = "notify"
    # Over the weekly budget, jobs run as scavengers (preemptibly, on idle GPUs only)
    # instead of waiting for the week to roll over.
    scavenge: bool = False
    # At most this many GPUs of each listed type at once (`max_gpus: {h100: 4}` in the
    # quota file), sorted (type, GPUs) pairs; other types are not capped by it.
    max_gpus_per_type: tuple[tuple[str, int], ...] = ()

    def merged(self, overrides: Mapping[str, Any]) -> Quota:
        return replace(self, **dict(overrides))


QUOTA_FIELDS = tuple(f.name for f in fields(Quota))
IDLE_ACTIONS = ("notify", "cancel", "requeue")


class QuotaError(ValueError):
    """A quota value or file that cannot be used; the message is user-facing."""


def _per_type(caps: Mapping[Any, Any], prefix: str) -> tuple[tuple[str, int], ...]:
    """`{h100: 4, a100-80g: 8}` as Quota.max_gpus_per_type."""
    from scheduler.gputypes import check_name

    out = {}
    for t, n in caps.items():
        try:
            name = check_name("GPU type", str(t))
        except ValueError as e:
            raise QuotaError(f"{prefix}max_gpus: {e}") from None
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1_000_000:
            raise QuotaError(f"{prefix}max_gpus: {name} must be a whole number >= 0, got {n!r}")
        out[name] = n
    return tuple(sorted(out.items()))


def validate_quota_fields(values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Check and normalise a mapping of quota fields; raise QuotaError naming the field."""
    out: dict[str, Any] = {}
    prefix = f"{where}: " if where else ""
    for key, v in values.items():
        if key not in QUOTA_FIELDS:
            raise QuotaError(f"{prefix}unknown quota field {key!r} (known: {', '.join(QUOTA_FIELDS)})")
        if key == "idle_action":
            if v not in IDLE_ACTIONS:
                raise QuotaError(f"{prefix}idle_action must be one of {', '.join(IDLE_ACTIONS)}, got {v!r}")
            out[key] = v
            continue
        if key in ("max_gpus", "max_gpus_per_type") and isinstance(v, Mapping):
            out["max_gpus_per_type"] = _per_type(v, prefix)
            continue
        if key == "max_gpus_per_type":
            # As stored: a list of [type, GPUs] pairs; None or empty: no per-type caps.
            if v is None:
                out[key] = ()
                continue
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, (list, tuple)) and len(x) == 2 for x in v):
                raise QuotaError(f"{prefix}max_gpus_per_type must map GPU types to GPUs ({{h100: 4}}), got {v!r}")
            out[key] = _per_type(dict(v), prefix)
            continue
        if key == "scavenge":
            if not isinstance(v, bool):
                raise QuotaError(f"{prefix}scavenge must be true or false, got {v!r}")
            out[key] = v
            continue
        if v is None and key not in ("shares", "guaranteed_gpus"):
            out[key] = None
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise QuotaError(f"{prefix}{key} must be a number, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise QuotaError(f"{prefix}{key} must be finite")
        if key == "shares":
            if not 0 < v <= 1e6:
                raise QuotaError(f"{prefix}shares must be > 0, got {v}")
            out[key] = float(v)
        elif key == "gpu_hours_per_week":
            if v < 0 or v > 1e9:
                raise QuotaError(f"{prefix}gpu_hours_per_week must be >= 0, got {v}")
            out[key] = float(v)
        else:
            if int(v) != v or v < 0 or v > 1e6:
                raise QuotaError(f"{prefix}{key} must be a whole number >= 0, got {v}")
            out[key] = int(v)
    return out


@dataclass(frozen=True)
class QuotaBook:
    """Defaults, groups and named researchers; `for_user` resolves one person's quota."""

    defaults: Quota = Quota()
    researchers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    groups: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    members: Mapping[str, str] = field(default_factory=dict)  # user -> group
    # Resolved quotas, memoized: the book never changes (with_override makes a new one),
    # and every scheduling pass asks for every active researcher's.
    _resolved: dict[str, Quota] = field(default_factory=dict, compare=False, repr=False)

    def for_user(self, user: str) -> Quota:
        q = self._resolved.get(user)
        if q is not None:
            return q
        q = self.defaults
        group = self.members.get(user)
        if group is not None:
            q = q.merged(self.groups.get(group, {}))
        q = q.merged(self.researchers.get(user, {}))
        self._resolved[user] = q
        return q

    def with_override(self, user: str, values: Mapping[str, Any]) -> QuotaBook:
        people = {k: dict(v) for k, v in self.researchers.items()}
        people.setdefault(user, {}).update(values)
        return replace(self, researchers=people, _resolved={})

    def known_users(self) -> list[str]:
        return sorted(self.researchers)


def quota_book_from_dict(data: Mapping[str, Any] | None) -> QuotaBook:
    """Build a QuotaBook from the parsed `quotas.yaml` mapping."""
    if data is None:
        return QuotaBook()
    if not isinstance(data, Mapping):
        raise QuotaError("quota file must be a mapping with defaults:, researchers:, groups:")
    unknown = set(data) - {"defaults", "researchers", "groups"}
    if unknown:
        raise QuotaError(f"unknown top-level key(s) {sorted(unknown)} in quota file")
    defaults = Quota().merged(validate_quota_fields(data.get("defaults") or {}, "defaults"))
    groups: dict[str, dict[str, Any]] = {}
    members: dict[str, str] = {}
    for gname, g in (data.get("groups") or {}).items():
        if not isinstance(g, Mapping):
            raise QuotaError(f"groups.{gname} must be a mapping")
        g = dict(g)
        for user in g.pop("members", None) or []:
            members[str(user)] = str(gname)
        groups[str(gname)] = validate_quota_fields(g, f"groups.{gname}")
    people: dict[str, dict[str, Any]] = {}
    for name, r in (data.get("researchers") or {}).items():
        if not isinstance(r, Mapping):
            raise QuotaError(f"researchers.{name} must be a mapping")
        r = dict(r)
        if "group" in r:
            members[str(name)] = str(r.pop("group"))
        people[str(name)] = validate_quota_fields(r, f"researchers.{name}")
    return QuotaBook(defaults=defaults, researchers=people, groups=groups, members=members)


def decayed_gpu_seconds(gpus: int, start: float, end: float, now: float, half_life: float) -> float:
    """GPU-seconds of one interval [start, end] as seen at `now`, decayed."""
    if end <= start:
        return 0.0
    k = math.log(2) / half_life
    return gpus * (math.exp(-k * (now - end)) - math.exp(-k * (now - start))) / k


@dataclass(frozen=True)
class Interval:
    user: str
    gpus: int
    start: float
    end: float  # `now` for a job still running


def usage_by_user(
    intervals: Iterable[Interval], now: float, half_life: float
) -> tuple[dict[str, float], dict[str, float]]:
    """(decayed GPU-seconds, raw GPU-seconds in the last 7 days) per user."""
    decayed: dict[str, float] = {}
    week: dict[str, float] = {}
    since = now - WEEK_S
    for iv in intervals:
        decayed[iv.user] = decayed.get(iv.user, 0.0) + decayed_gpu_seconds(
            iv.gpus, iv.start, iv.end, now, half_life
        )
        overlap = min(iv.end, now) - max(iv.start, since)
        if overlap > 0:
            week[iv.user] = week.get(iv.user, 0.0) + iv.gpus * overlap
    return decayed, week


def fair_share_factor(usage: float, total_usage: float, shares: float, total_shares: float) -> float:
    """Slurm's classic F = 2^(-U/S): 1 for no usage, 0.5 when usage equals the share."""
    s = shares / total_shares if total_shares > 0 else 1.0
    u = usage / total_usage if total_usage > 0 else 0.0
    return float(2.0 ** (-u / s)) if s > 0 else 0.0
