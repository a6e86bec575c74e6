"""The store's tables about people rather than jobs: usage, log caps, quotas, audit, API tokens.

A mixin of `Store` (store.py), which provides the connection and the transaction:
split out only to keep each class small; there is one database and one writer.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from scheduler.store_base import Tables


class AccountTables(Tables):
    # -- GPU accounting of runs ------------------------------------------------------------------
    def runs_since(self, since: float) -> list[dict[str, Any]]:
        rows = self._reader().execute(
            "SELECT job_id, attempt, user, gpus, node, start_time, end_time FROM runs "
            "WHERE end_time IS NULL OR end_time >= ?",
            (since,),
        )
        return [dict(r) for r in rows]

    def usage_rows(self, since: float) -> list[dict[str, Any]]:
        """Every attempt that overlaps [since, now], with its job's name and GPU accounting."""
        rows = self._reader().execute(
            "SELECT r.job_id, r.attempt, r.user, r.gpus, r.node, r.start_time, r.end_time, "
            "r.sampled_s, r.busy_gpu_s, r.idle_gpu_s, r.util_mean, r.mem_peak, j.name, j.state "
            "FROM runs r JOIN jobs j ON j.id = r.job_id "
            "WHERE r.end_time IS NULL OR r.end_time >= ? ORDER BY r.start_time",
            (since,),
        )
        return [dict(r) for r in rows]

    def job_gpu_totals(self, job_id: int) -> dict[str, Any] | None:
        """GPU accounting summed over a job's attempts; None when nothing was sampled."""
        rows = [
            dict(r)
            for r in self._reader().execute(
                "SELECT sampled_s, busy_gpu_s, idle_gpu_s, mem_peak, gpus FROM runs "
                "WHERE job_id=? AND sampled_s IS NOT NULL",
                (job_id,),
            )
        ]
        if not rows:
            return None
        sampled = sum(r["sampled_s"] or 0.0 for r in rows)
        busy = sum(r["busy_gpu_s"] or 0.0 for r in rows)
        gpu_s = sum((r["sampled_s"] or 0.0) * r["gpus"] for r in rows)
        return {
            "sampled_s": sampled,
            "busy_gpu_s": busy,
            "idle_gpu_s": sum(r["idle_gpu_s"] or 0.0 for r in rows),
            "util_mean": 100.0 * busy / gpu_s if gpu_s > 0 else None,
            "mem_peak": max(r["mem_peak"] or 0 for r in rows),
        }

    # -- per-user log cap ----------------------------------------------------------------------
    def user_log_bytes(self, user: str) -> int:
        """Bytes of the user's logs still kept (ended jobs: as measured at their end)."""
        row = self._reader().execute(
            "SELECT COALESCE(SUM(log_bytes), 0) FROM jobs WHERE user=? AND log_removed IS NULL AND log_bytes > 0",
            (user,),
        ).fetchone()
        return int(row[0])

    def oldest_kept_logs(self, user: str, limit: int = 100) -> list[tuple[int, int]]:
        """(job id, bytes) of the user's ended jobs whose logs are kept, oldest end first."""
        rows = self._reader().execute(
            "SELECT id, log_bytes FROM jobs WHERE user=? AND log_removed IS NULL AND log_bytes > 0 "
            "AND end_time IS NOT NULL ORDER BY end_time, id LIMIT ?",
            (user, limit),
        )
        return [(int(r[0]), int(r[1])) for r in rows]

    def log_removed(self, job_id: int, now: float, why: str) -> None:
        with self._tx() as c:
            row = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            c.execute("UPDATE jobs SET log_removed=? WHERE id=?", (now, job_id))
            c.execute(
                "INSERT INTO events(job_id, time, old_state, new_state, reason) VALUES (?,?,?,?,?)",
                (job_id, now, row[0], row[0], why),
            )

    # -- quotas and audit ----------------------------------------------------------------------
    def quota_overrides(self) -> dict[str, dict[str, Any]]:
        rows = self._reader().execute("SELECT user, fields FROM quota_overrides")
        return {str(r[0]): json.loads(r[1]) for r in rows}

    def set_quota_override(
        self, actor: str, user: str, old: Mapping[str, Any], new: Mapping[str, Any], now: float
    ) -> None:
        """Persist a quota change and its audit record in one transaction."""
        with self._tx() as c:
            row = c.execute("SELECT fields FROM quota_overrides WHERE user=?", (user,)).fetchone()
            merged = json.loads(row[0]) if row else {}
            merged.update(new)
            c.execute(
                "INSERT INTO quota_overrides(user, fields) VALUES (?, ?) "
                "ON CONFLICT(user) DO UPDATE SET fields=excluded.fields",
                (user, json.dumps(merged, sort_keys=True)),
            )
            detail = json.dumps({"old": dict(old), "new": dict(new)}, sort_keys=True)
            _audit_row(c, now, actor, "quota.set", user, detail, user)

    # -- API tokens ---------------------------------------------------------------------------------
    def add_token(
        self, token_id: str, user: str, hashed: str, actor: str, expires: float | None, note: str, now: float
    ) -> None:
        """Store a new token and its audit record in one transaction."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO api_tokens(id, user, hash, created, created_by, expires, note) "
                "VALUES (?,?,?,?,?,?,?)",
                (token_id, user, hashed, now, actor, expires, note),
            )
            detail = f"token {token_id}" + (
                f", expires {time.strftime('%Y-%m-%d', time.localtime(expires))}" if expires else ""
            )
            _audit_row(c, now, actor, "token.create", user, detail, user)

    def token(self, token_id: str) -> dict[str, Any] | None:
        row = self._reader().execute("SELECT * FROM api_tokens WHERE id=?", (token_id,)).fetchone()
        return dict(row) if row else None

    def tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        """Every token (or one user's), newest first, without the hashes."""
        cols = "id, user, created, created_by, expires, revoked, last_used, note"
        if user is None:
            rows = self._reader().execute(f"SELECT {cols} FROM api_tokens ORDER BY created DESC")
        else:
            rows = self._reader().execute(
                f"SELECT {cols} FROM api_tokens WHERE user=? ORDER BY created DESC", (user,)
            )
        return [dict(r) for r in rows]

    def revoke_token(self, token_id: str, actor: str, now: float) -> bool:
        """False when it was already revoked."""
        with self._tx() as c:
            row = c.execute("SELECT user, revoked FROM api_tokens WHERE id=?", (token_id,)).fetchone()
            if row is None or row[1] is not None:
                return False
            c.execute("UPDATE api_tokens SET revoked=? WHERE id=?", (now, token_id))
            _audit_row(c, now, actor, "token.revoke", row[0], f"token {token_id}", row[0])
            return True

    def token_used(self, token_id: str, now: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE api_tokens SET last_used=? WHERE id=?", (now, token_id))

    def audit(self, actor: str, action: str, target: str, detail: str, now: float, concerns: str = "") -> None:
        """`concerns`: the researcher this line is about (who may read it besides the
        admins); "" for the cluster's own business (nodes, the daemon)."""
        with self._tx() as c:
            _audit_row(c, now, actor, action, target, detail, concerns)

    def audit_log(self, limit: int = 200, concerning: str | None = None) -> list[dict[str, Any]]:
        """The latest `limit` entries; with `concerning`, only those about that user
        (their jobs, their quota and tokens), chosen before the limit."""
        where, args = ("", ()) if concerning is None else ("WHERE concerns=? ", (concerning,))
        rows = self._reader().execute(
            f"SELECT time, actor, action, target, detail FROM audit {where}ORDER BY id DESC LIMIT ?", (*args, limit)
        )
        return [dict(r) for r in rows]

    def code_refs(self, ended_after: float) -> set[tuple[int, str]]:
        """(uid, snapshot id) of the code of every job not ended, or ended after
        `ended_after`: what the code store keeps (an old job's rerun needs --live)."""
        rows = self._reader().execute(
            "SELECT DISTINCT uid, json_extract(spec, '$.code.id') FROM jobs "
            "WHERE json_extract(spec, '$.code.id') IS NOT NULL AND (end_time IS NULL OR end_time > ?)",
            (ended_after,),
        )
        return {(int(uid), str(sha)) for uid, sha in rows}


def _audit_row(
    c: sqlite3.Connection, now: float, actor: str, action: str, target: str, detail: str, concerns: str
) -> None:
    """One audit line, inside the caller's transaction (with the change it records)."""
    c.execute(
        "INSERT INTO audit(time, actor, action, target, detail, concerns) VALUES (?,?,?,?,?,?)",
        (now, actor, action, target, detail, concerns),
    )
