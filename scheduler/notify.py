"""A word when a job ends (`--notify`, issue 16): a webhook (Slack-compatible JSON) or a
command run as the job's owner.

The notify thread owns the sending: each second it reads the ended jobs still marked
`notify_pending` (a column, so a notification survives a daemon restart), sends, and
records what happened as an event of the job (`labq show` says it). Each send has a
thread of its own (Notifier), so one slow or dead endpoint delays only its owner's.

A webhook is a request the daemon makes, often as root, to an address a user chose:
without care, any user could make it reach what only the head can (a loopback admin
port, the cloud's metadata address, the LAN). So a webhook must be http(s) to a host
whose every address is public, unless an admin lists it in `notify_allow_hosts`; the
address checked is the one connected to (no second DNS answer can swap it); redirects
are not followed; the answer is not read beyond its status.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import pwd
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from scheduler.units import format_duration

log = logging.getLogger("labq.notify")

TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4COMPAT = ipaddress.ip_network("::/96")
MAX_PARALLEL = 8  # notifications in flight at once; at most one per user
# A job's history says how its notification went; others see only that one was sent
# (views.py), since the outcome names the owner's webhook host.
NOTIFY_EVENT = "notify: "


class NotifyRefused(ValueError):
    """A notification target labq will not use; the message says why, in one line."""


def _allowed(host: str, ip: str, allow: Sequence[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    for item in allow:
        if item == host:
            return True
        try:
            if addr in ipaddress.ip_network(item, strict=False):
                return True
        except ValueError:
            continue
    if isinstance(addr, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 one (mapped, 6to4, NAT64, the old compatible
        # form) are judged by it: [64:ff9b::a9fe:a9fe] is 169.254.169.254 through NAT64.
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and (addr in _NAT64 or addr in _V4COMPAT):
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded.is_global and not embedded.is_multicast
        if addr.teredo is not None:
            return False
    return addr.is_global and not addr.is_multicast


def check_webhook(url: str, allow: Sequence[str] = ()) -> tuple[str, str, int, str]:
    """(scheme, host, port, the address to connect to) for a webhook labq may call;
    NotifyRefused says why not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotifyRefused("a webhook is an http:// or https:// URL")
    if parts.username or parts.password:
        raise NotifyRefused("a webhook URL with a user or password in it is refused (put a token in its path)")
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise NotifyRefused("the webhook's port is not a number") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise NotifyRefused(f"cannot resolve the webhook's host {host}: {getattr(e, 'strerror', None) or e}") from None
    ips = sorted({str(info[4][0]) for info in infos})
    bad = [ip for ip in ips if not _allowed(host, ip, allow)]
    if bad:
        raise NotifyRefused(
            f"the webhook's host {host} is {bad[0]}, not a public address; an admin may allow it "
            "with notify_allow_hosts in the daemon's config"
        )
    return parts.scheme, host, port, ips[0]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post_webhook(url: str, payload: bytes, allow: Sequence[str] = (), timeout: float = TIMEOUT_S) -> str:
    """POST the JSON; what happened, in words for the job's history."""
    scheme, host, port, ip = check_webhook(url, allow)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = (_PinnedHTTPS if scheme == "https" else _PinnedHTTP)(host, port, ip, timeout)
    # `timeout` bounds each socket call; this bounds the whole request, so a server that
    # trickles its answer a byte at a time is cut off all the same.
    watchdog = threading.Timer(timeout, _cut, args=(conn,))
    watchdog.start()
    try:
        conn.request("POST", path, body=payload, headers={"Content-Type": "application/json", "User-Agent": "labq"})
        resp = conn.getresponse()
        resp.read(1024)
        return f"webhook to {host} answered {resp.status}"
    finally:
        watchdog.cancel()
        conn.close()


def _cut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def run_command(argv: list[str], user: str, uid: int, env: dict[str, str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    """The owner's command, as the owner (never as root for anyone else), with the job's
    facts in its environment; what happened, in words."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return f"command not run: {user} has no account here"
    if pw.pw_uid != uid or (uid == 0 and user != "root"):
        return f"command not run: the account {user} here is not uid {uid}"
    if os.geteuid() != 0 and uid != os.geteuid():
        return f"command not run: this daemon cannot act as {user}"
    full = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pw.pw_dir, "USER": user, "LOGNAME": user, **env}
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": os.getgrouplist(user, pw.pw_gid)}
    try:
        proc = subprocess.Popen(
            argv,
            env=full,
            cwd=pw.pw_dir if os.path.isdir(pw.pw_dir) else "/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            umask=0o077,
            **as_user,
        )
    except OSError as e:
        return f"command not run: {e.strerror or e}"
    try:
        code = proc.wait(timeout)
        outcome = f"command exited {code}"
    except subprocess.TimeoutExpired:
        outcome = f"command killed after {timeout:g}s"
    # A notification is not a job: nothing it started outlives it (its own session).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return outcome


def message(job: dict[str, Any]) -> str:
    """One line for a person: `labq: job 42 train.py (alice) FAILED after 1h02m: exit code 3`."""
    kind = "array" if job.get("array_size") else "job"
    text = f"labq: {kind} {job['ref']} {job['name']} ({job['user']}) {job['state']}"
    if job.get("start_time") is not None and job.get("end_time") is not None and not job.get("array_size"):
        text += f" after {format_duration(job['end_time'] - job['start_time'])}"
        if job.get("node_name"):
            text += f" on {job['node_name']}"
    if job.get("reason"):
        text += f": {job['reason']}"
    return text


class Notifier:
    """The notify thread: ended jobs with `--notify`, each told once. Each send runs in
    a thread of its own, at most MAX_PARALLEL at once and one per user, so a slow
    endpoint or command holds up only its owner's notifications; whatever one send
    raises is recorded as its outcome and never stops the rest."""

    def __init__(self, store: Any, allow: Sequence[str] = (), webhooks: bool = True, commands: bool = True) -> None:
        self.store = store
        self.allow = tuple(allow)
        self.webhooks = webhooks
        self.commands = commands
        self._lock = threading.Lock()
        self._jobs: set[int] = set()  # in flight
        self._users: set[str] = set()  # with one in flight

    def loop(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.wait(interval):
            try:
                self.once()
            except Exception:  # noqa: BLE001 - a bad notification must not end the thread
                log.exception("notifications failed")

    def once(self, wait: float = 0.0) -> int:
        """Start sending what is due; with `wait`, wait up to that long for those sends."""
        started = []
        for job in self.store.notify_due():
            with self._lock:
                if job["id"] in self._jobs or job["user"] in self._users or len(self._jobs) >= MAX_PARALLEL:
                    continue
                self._jobs.add(job["id"])
                self._users.add(job["user"])
            t = threading.Thread(target=self._one, args=(job,), name="labq-notify-send", daemon=True)
            t.start()
            started.append(t)
        for t in started:
            t.join(wait if wait > 0 else 0)
        return len(started)

    def _one(self, job: dict[str, Any]) -> None:
        try:
            try:
                outcome = self.send(job)
            except Exception as e:  # noqa: BLE001 - recorded, and the job is not sent again
                outcome = f"failed: {type(e).__name__}"
            self.store.notified(job["id"], f"{NOTIFY_EVENT}{outcome}", time.time())
        except Exception:  # noqa: BLE001 - the store refused: it is tried again next second
            log.exception("job %s: notification outcome not recorded", job.get("id"))
        finally:
            with self._lock:
                self._jobs.discard(job["id"])
                self._users.discard(job["user"])

    def send(self, job: dict[str, Any]) -> str:
        target = job["notify"]
        text = message(job)
        facts = {k: job.get(k) for k in ("id", "ref", "name", "user", "state", "exit_code", "reason", "start_time", "end_time")}
        if "webhook" in target:
            if not self.webhooks:
                return "webhooks are off on this cluster (notify_webhooks: false)"
            try:
                return post_webhook(str(target["webhook"]), json.dumps({"text": text, "job": facts}).encode(), self.allow)
            except NotifyRefused as e:
                return f"webhook refused: {e}"
            except (OSError, http.client.HTTPException) as e:
                return f"webhook failed: {type(e).__name__}: {e}"
        if not self.commands:
            return "commands are off on this cluster (notify_commands: false)"
        env = {
            "LABQ_JOB_ID": str(job["ref"]),
            "LABQ_JOB_NAME": str(job["name"]),
            "LABQ_JOB_STATE": str(job["state"]),
            "LABQ_EXIT_CODE": "" if job.get("exit_code") is None else str(job["exit_code"]),
            "LABQ_MESSAGE": text,
        }
        return run_command(list(target["command"]), job["user"], int(job["uid"]), env)
