"""What admins change: quotas, which nodes take new jobs, and stopping the daemon.

Called from API threads. Owns the quota book (the file's, with the admins' changes
from the store on top), replaced whole on each change so the scheduler's reads never
see half of one; and the shutdown request the composition acts on.
"""

from __future__ import annotations

import logging
import pwd
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler.auth import Admins, Caller
from scheduler.config import DaemonConfig
from scheduler.control import JobControl
from scheduler.errors import DaemonError
from scheduler.nodes import NodeBook
from scheduler.quota import QuotaBook, QuotaError, quota_book_from_dict, validate_quota_fields
from scheduler.shapes import ACTIVE
from scheduler.store import Store, StoreError

log = logging.getLogger("labq.admin")


class Admin:
    def __init__(
        self,
        store: Store,
        config: DaemonConfig,
        admins: Admins,
        nodes: NodeBook,
        control: JobControl,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.config = config
        self.admins = admins
        self.nodes = nodes
        self.control = control
        self._wake = wake
        self._lock = threading.Lock()
        self.quotas = QuotaBook()
        self.shutdown_mode: str | None = None

    # -- quotas ---------------------------------------------------------------------------------
    def load_quotas(self) -> None:
        data: Any = None
        if self.config.quotas_file:
            import yaml

            try:
                data = yaml.safe_load(Path(self.config.quotas_file).read_text())
            except (OSError, yaml.YAMLError) as e:
                raise DaemonError(f"cannot read quotas file {self.config.quotas_file}: {e}") from None
        try:
            book = quota_book_from_dict(data)
        except QuotaError as e:
            raise DaemonError(f"{self.config.quotas_file}: {e}") from None
        for user, fields in self.store.quota_overrides().items():
            book = book.with_override(user, fields)
        self.quotas = book

    def set_quota(self, caller: Caller, user: str, values: dict[str, Any]) -> dict[str, Any]:
        if not caller.admin:
            raise DaemonError(f"only admins may change quotas ({self.admins})", 403)
        if not user or len(user) > 64 or any(c in user for c in "\x00/\n"):
            raise DaemonError("bad user name")
        try:
            clean = validate_quota_fields(values)
        except QuotaError as e:
            raise DaemonError(str(e)) from None
        if not clean:
            raise DaemonError("nothing to change: give at least one field")
        with self._lock:
            known = self._known(user)  # before this change makes them a named researcher
            current = self.quotas.for_user(user)
            old = {k: getattr(current, k) for k in clean}
            self.store.set_quota_override(caller.user, user, old, clean, time.time())
            self.quotas = self.quotas.with_override(user, clean)
        self._wake()
        out: dict[str, Any] = {"user": user, "old": old, "new": clean}
        if not known:
            # Set all the same (a researcher may be set up before their first job, or
            # have an account only on the machines they log into), but a typo would
            # otherwise change nobody's quota without a word.
            out["warning"] = (
                f"no account, job, token or quotas-file entry for {user!r} here: "
                "set anyway; check the name"
            )
        return out

    def _known(self, user: str) -> bool:
        """Does anything here know `user`: a Unix account, a named quota (the quotas file
        or an earlier `quota set`), a job, a token?"""
        try:
            pwd.getpwnam(user)
            return True
        except KeyError:
            pass
        book = self.quotas
        if user in book.researchers or user in book.members:
            return True
        return bool(self.store.jobs(user=user, limit=1, with_spec=False)) or bool(self.store.tokens(user))

    # -- nodes ----------------------------------------------------------------------------------
    def set_drained(self, caller: Caller, ref: str, drain: bool) -> dict[str, Any]:
        """`labq node drain|resume NODE`: no new jobs there; running ones finish."""
        if not caller.admin:
            raise DaemonError(f"only admins may {'drain' if drain else 'resume'} nodes", 403)
        matches = self.nodes.find(ref)
        known = ", ".join(sorted(n.name for n in self.nodes.all())) or "none"
        if not matches and not (not drain and ref in self.nodes.drained()):
            raise DaemonError(f"no node {ref!r} (nodes: {known})", 404)
        if len(matches) > 1:
            raise DaemonError(f"{ref!r} matches {len(matches)} nodes; give its full name or id")
        name = matches[0].name if matches else ref
        self.nodes.set_drained(name, drain)
        running = [j.id for j in self.store.jobs(states=ACTIVE, with_spec=False) if matches and j.node == matches[0].id]
        self.store.audit(
            caller.user, "node.drain" if drain else "node.resume", name, f"{len(running)} jobs running there", time.time()
        )
        self._wake()
        return {"node": name, "drained": drain, "running_jobs": running}

    # -- stopping the daemon --------------------------------------------------------------------
    def request_shutdown(self, caller: Caller, mode: str) -> dict[str, Any]:
        if not caller.admin:
            raise DaemonError("only admins may stop the daemon", 403)
        active = self.store.jobs(states=ACTIVE)
        if mode == "refuse" and active:
            raise DaemonError(
                f"{len(active)} job{'s' if len(active) != 1 else ''} still running: "
                "`labq down --drain` waits for them, `labq down --kill` stops them",
                409,
            )
        self.control.admission.closed = True
        self.shutdown_mode = mode
        if mode == "kill":
            for job in active:
                self.control.request_stop(job, "cancelled", f"labq down --kill by {caller.user}", self.control.grace(job))
        try:
            self.store.audit(caller.user, "daemon.down", mode, f"{len(active)} jobs active", time.time())
        except StoreError as e:
            # A full disk must not keep the admin from stopping the daemon.
            log.error("labq down by %s not in the audit log: %s", caller.user, e)
        self._wake()
        return {"stopping": True, "active": len(active)}

    @property
    def stopping(self) -> bool:
        return self.shutdown_mode is not None
