"""Tokens for remote clients: issued by admins on the head node, checked on every request.

A token is `labq_<id>_<secret>` (apitoken.py); only a SHA-256 of the secret is stored.
Called from API threads; the only state here is when each token was last noted as
used (one write a minute is plenty for `labq token list`), behind a lock.
"""

from __future__ import annotations

import pwd
import threading
import time
from typing import Any

from scheduler import apitoken
from scheduler.auth import Admins, Caller
from scheduler.errors import DaemonError
from scheduler.store import Store


class Tokens:
    def __init__(self, store: Store, admins: Admins) -> None:
        self.store = store
        self.admins = admins
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}

    def create(self, caller: Caller, user: str, expires_s: float | None, note: str) -> dict[str, Any]:
        """`labq token create USER`: admins only; the secret is returned once, kept hashed."""
        if not caller.admin:
            raise DaemonError("only admins may issue tokens", 403)
        if caller.via != "socket":
            # A stolen token must not mint more tokens: issuing needs a local login.
            raise DaemonError("tokens are issued on the head node itself (over the Unix socket)", 403)
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise DaemonError(f"no Unix user {user!r} on this machine: jobs run as that user") from None
        if pw.pw_uid == 0:
            raise DaemonError("no tokens for root: a network client never acts as root")
        if expires_s is not None and expires_s <= 0:
            raise DaemonError("expires must be a positive duration")
        if len(note) > 200 or any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in note):
            raise DaemonError("note must be one line of at most 200 characters")
        new = apitoken.generate()
        now = time.time()
        expires = now + expires_s if expires_s else None
        self.store.add_token(new.id, user, new.hash, caller.user, expires, note, now)
        return {"id": new.id, "user": user, "token": new.text, "expires": expires}

    def list(self, caller: Caller) -> list[dict[str, Any]]:
        return self.store.tokens(None if caller.admin else caller.user)

    def revoke(self, caller: Caller, token_id: str) -> dict[str, Any]:
        row = self.store.token(token_id)
        if row is None or (not caller.admin and row["user"] != caller.user):
            raise DaemonError(f"no token {token_id!r}", 404)
        if not self.store.revoke_token(token_id, caller.user, time.time()):
            raise DaemonError(f"token {token_id} was already revoked", 409)
        with self._lock:
            self._seen.pop(token_id, None)
        return {"id": token_id, "user": row["user"], "revoked": True}

    def live(self, now: float) -> int:
        return sum(1 for t in self.store.tokens() if not t["revoked"] and (t["expires"] or now) >= now)

    def authenticate(self, raw: str | None) -> Caller:
        """The caller a network request's bearer token stands for, or a 401."""
        if not raw:
            raise DaemonError(
                "unauthenticated: this listener needs a token (an admin issues one with "
                "`labq token create USER`; the client reads LABQ_TOKEN)",
                401,
            )
        parsed = apitoken.parse(raw)
        row = self.store.token(parsed[0]) if parsed else None
        now = time.time()
        if parsed is None or row is None or not apitoken.matches(parsed[1], row["hash"]):
            raise DaemonError("unauthenticated: the token is not valid", 401)
        if row["revoked"] is not None:
            raise DaemonError(f"unauthenticated: token {row['id']} was revoked", 401)
        if row["expires"] is not None and now >= row["expires"]:
            raise DaemonError(f"unauthenticated: token {row['id']} has expired", 401)
        try:
            uid = pwd.getpwnam(row["user"]).pw_uid
        except KeyError:
            raise DaemonError(f"unauthenticated: user {row['user']} no longer exists here", 401) from None
        with self._lock:
            seen = self._seen.get(row["id"], 0.0)
            due = now - seen > 60
            if due:
                self._seen[row["id"]] = now
        if due:
            self.store.token_used(row["id"], now)
        return Caller(uid, row["user"], self.admins(uid, row["user"]), via=f"token {row['id']}")
