"""The team cluster: invites, `labq join`, and the registry of nodes that joined.

An admin's `labq node invite` makes a one-time, short-lived join secret (only its
SHA-256 is kept). A new box's `labq join` shows it to the daemon's TLS listener and
gets the Ray token and the head's address back, and its address goes into the
registry. Ray's token auth keeps strangers out of Ray; the registry keeps out a Ray
node that came in some other way (someone who copied the token and ran `ray start`
by hand): such a node is `untrusted`, gets no job, and `doctor` fails on it.

The registry applies when the daemon runs a team head (`advertise`); a one-machine
head listens on loopback only, and an external cluster's membership is its
operator's (its token auth is checked at start, see raycluster.check_external_auth).

Called from API threads and the Ray link's node refresh. Owns the invites and the
registry (both persisted in the store's meta table) behind one lock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scheduler.auth import Caller
from scheduler.errors import DaemonError
from scheduler.nodes import NodeRecord
from scheduler.store import Store

log = logging.getLogger("labq.team")

INVITE_PREFIX = "lqjoin_"
_INVITE = re.compile(r"^lqjoin_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
MAX_INVITE_S = 7 * 86400.0


@dataclass(frozen=True)
class HeadInfo:
    """What a joining node needs: where Ray is and its token; where the API listens."""

    ray_address: str
    token_path: str
    listener: str
    cert_sha256: str
    # Which Ray head this is (its pid and address, hashed): a joined worker that sees
    # it change knows the head restarted, and joins the new cluster at once.
    epoch: str = ""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Team:
    def __init__(self, store: Store, enforced: bool, head: Callable[[], HeadInfo | None]) -> None:
        self.store = store
        self.enforced = enforced
        self._head = head
        self._lock = threading.Lock()
        self._refusals: dict[str, tuple[float, int]] = {}  # peer -> (last audited, refused since)
        # The registry, read once: the node refresh asks for it every 2 s, and only
        # join and remove (here, under the lock) change it.
        self._joined: dict[str, dict[str, Any]] = dict(json.loads(store.get_meta("team_nodes") or "{}"))

    # -- invites ----------------------------------------------------------------------------------
    def invite(self, caller: Caller, ttl_s: float, now: float | None = None) -> dict[str, Any]:
        if not caller.admin:
            raise DaemonError("only admins may invite nodes", 403)
        if caller.via != "socket":
            raise DaemonError("invites are made on the head node itself (over the Unix socket)", 403)
        if not 0 < ttl_s <= MAX_INVITE_S:
            raise DaemonError("an invite lasts more than 0 and at most 7 days")
        head = self._head()
        if head is None or not self.enforced:
            raise DaemonError(
                "this daemon runs no team head: start it with `labq up --advertise ADDRESS` "
                "(an address the other machines reach) to let nodes join"
            )
        now = time.time() if now is None else now
        invite_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
        with self._lock:
            invites = [i for i in self._invites() if i["expires"] > now]
            invites.append({"id": invite_id, "hash": _digest(secret), "expires": now + ttl_s, "by": caller.user})
            self.store.set_meta("join_invites", json.dumps(invites))
        self.store.audit(caller.user, "node invite", invite_id, f"valid {ttl_s / 60:.0f} min", now)
        text = f"{INVITE_PREFIX}{invite_id}_{secret}"
        return {
            "id": invite_id,
            "secret": text,
            "expires": now + ttl_s,
            "url": head.listener,
            "cert_sha256": head.cert_sha256,
            "command": f"labq join {head.listener} --secret {text} --cert-sha256 {head.cert_sha256}",
        }

    def _invites(self) -> list[dict[str, Any]]:
        return list(json.loads(self.store.get_meta("join_invites") or "[]"))

    # -- join -------------------------------------------------------------------------------------
    def join(self, secret: Any, hostname: Any, peer: str, now: float | None = None) -> dict[str, Any]:
        """A node shows its invite: consume it, register the node, hand over Ray's token."""
        now = time.time() if now is None else now
        m = _INVITE.match(secret) if isinstance(secret, str) else None
        if not isinstance(hostname, str) or not _HOSTNAME.match(hostname):
            raise DaemonError("hostname must be a plain host name")
        head = self._head()
        if head is None or not self.enforced:
            raise DaemonError("this daemon runs no team head (labq up --advertise)", 409)
        with self._lock:
            invites = self._invites()
            found = None
            if m is not None:
                for i in invites:
                    if i["id"] == m.group(1) and hmac.compare_digest(i["hash"], _digest(m.group(2))):
                        found = i
            if found is None or found["expires"] <= now:
                # Same answer for unknown, used and expired: a prober learns nothing.
                self._refused(peer, hostname, now)
                raise DaemonError("the invite is not valid (unknown, used or expired): ask an admin for `labq node invite`", 403)
            taken = self._joined.get(hostname)
            if taken is not None and taken["address"] != peer:
                # One invite must not move another machine's trust to this address.
                raise DaemonError(
                    f"a node named {hostname} already joined from {taken['address']}: an admin removes it first "
                    f"(`labq node remove {hostname}`), or join from that address", 409)
            invites.remove(found)
            self.store.set_meta("join_invites", json.dumps([i for i in invites if i["expires"] > now]))
            # A host name joined again (reinstalled box) takes its new address.
            nodes = {**self._joined, hostname: {"address": peer, "joined": now, "by": found["by"], "invite": found["id"]}}
            self.store.set_meta("team_nodes", json.dumps(nodes))
            self._joined = nodes
        self.store.audit(found["by"], "node join", hostname, f"{peer} (invite {found['id']})", now)
        log.info("node %s joined from %s (invite %s by %s)", hostname, peer, found["id"], found["by"])
        try:
            with open(head.token_path) as f:
                token = f.read().strip()
        except OSError as e:
            raise DaemonError(f"cannot read Ray's token: {e.strerror}", 500) from None
        return {"name": hostname, "ray_address": head.ray_address, "ray_token": token}

    def _refused(self, peer: str, hostname: str, now: float) -> None:
        """One audit line per address per minute, however fast it guesses (a flood of
        refused joins must not fill the database, nor bury the audit)."""
        last, quiet = self._refusals.get(peer, (0.0, 0))
        if now - last < 60:
            self._refusals[peer] = (last, quiet + 1)
            return
        more = f"; and {quiet} more refused from there in the minute before" if quiet else ""
        self.store.audit("(unknown)", "node join refused", hostname, f"from {peer}{more}", now)
        self._refusals[peer] = (now, 0)
        if len(self._refusals) > 4096:  # many addresses: keep the recent ones
            self._refusals = {p: v for p, v in self._refusals.items() if now - v[0] < 60}

    def leave(self, caller: Caller, name: str, now: float | None = None) -> dict[str, Any]:
        """`labq node remove NAME`: forget a joined node (its Ray node becomes untrusted)."""
        if not caller.admin:
            raise DaemonError("only admins may remove nodes", 403)
        now = time.time() if now is None else now
        with self._lock:
            nodes = dict(self._joined)
            if name not in nodes:
                raise DaemonError(f"no joined node {name!r}", 404)
            gone = nodes.pop(name)
            self.store.set_meta("team_nodes", json.dumps(nodes))
            self._joined = nodes
        self.store.audit(caller.user, "node remove", name, str(gone.get("address", "")), now)
        return {"node": name, "removed": True}

    def epoch(self, peer: str, lost: set[str], node_timeout_s: float) -> dict[str, Any]:
        """`GET /v1/nodes/head` (no token): which Ray head runs, whether the asking
        machine's Ray node is one the head took for lost (`lost`: their addresses), and
        after how long silent the head takes a node for lost (join.rejoin_reason())."""
        head = self._head()
        if head is None or not self.enforced:
            raise DaemonError("this daemon runs no team head", 404)
        return {"epoch": head.epoch, "lost": peer in lost, "node_timeout_s": node_timeout_s}

    # -- the registry -----------------------------------------------------------------------------
    def registry(self) -> dict[str, dict[str, Any]]:
        return dict(self._joined)  # replaced whole on a change: a copy of the dict is enough

    def trusted_addresses(self) -> set[str] | None:
        """Addresses of joined nodes; None = every Ray node is trusted (no team head)."""
        if not self.enforced:
            return None
        return {str(n["address"]) for n in self.registry().values()}

    def membership(self, added: list[NodeRecord], removed: list[NodeRecord], now: float | None = None) -> None:
        """Ray's node table changed: every node's coming and going goes in the audit."""
        now = time.time() if now is None else now
        # The Ray node's id too: a rebooted machine's new node is up under its name
        # before its old node is down under the same name.
        for n in added:
            action = "node up" if n.trusted else "node up untrusted"
            self.store.audit("ray", action, n.name, f"{n.address}, {n.gpus} GPUs, Ray node {n.id[:8]}", now)
            if not n.trusted:
                log.warning("untrusted Ray node %s (%s) joined without `labq join`: it gets no jobs", n.name, n.address)
        for n in removed:
            self.store.audit("ray", "node down", n.name, f"{n.address}, Ray node {n.id[:8]}", now)

    def missing(self, alive: list[NodeRecord]) -> list[str]:
        """Joined nodes Ray does not list: down, cut off, or their Ray stopped."""
        if not self.enforced:
            return []
        here = {n.address for n in alive}
        return sorted(f"{name} ({n['address']})" for name, n in self.registry().items() if n["address"] not in here)
