"""The API: JSON over HTTP/1.1. docs/api.md lists every route.

On the Unix socket the caller is whoever the kernel says is on the other end
(SO_PEERCRED), never a name the client sends. The optional TCP listener (config
`listen`, off by default) knows callers only by the bearer token an admin issued
them. One handler per command; both listeners share them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from scheduler import sessions
from scheduler.admin import Admin
from scheduler.auth import Admins, AuthError, Caller, peer_uid, socket_caller
from scheduler.codestore import KEEP_ENDED_S, CodeStore
from scheduler.config import DaemonConfig, is_loopback, parse_listen
from scheduler.conns import DeadlineHandler, LimitedServer
from scheduler.control import JobControl
from scheduler.doctor import Doctor
from scheduler.errors import DaemonError
from scheduler.gpuwatch import GpuWatch
from scheduler.logbook import LogBook
from scheduler.nodes import NodeBook
from scheduler.quota import fair_share_factor
from scheduler.raylink import RayLink
from scheduler.scheduling import Scheduler, prediction_report
from scheduler.shapes import QUEUED, JobState
from scheduler.store import JobRow, Store, StoreError, UnknownJob
from scheduler.team import Team
from scheduler.tokens import Tokens
from scheduler.views import JobViews


class Service(Protocol):
    """What the handlers use of the daemon: its parts, by name (daemon.py builds them).
    A Protocol, so this module never imports the daemon (no import cycle)."""

    config: DaemonConfig
    admins: Admins
    codes: CodeStore
    store: Store
    control: JobControl
    scheduler: Scheduler
    admin: Admin
    tokens: Tokens
    views: JobViews
    gpus: GpuWatch
    logs: LogBook
    doctor: Doctor
    ray: RayLink
    team: Team
    nodes: NodeBook

    def health(self, caller: Caller) -> dict[str, Any]: ...

    def authenticate(self, raw: str | None) -> Caller: ...

API_VERSION = 1
MAX_BODY = 4 * 1024 * 1024
MAX_LOG_READ = 1024 * 1024
PAGE = 2000  # jobs per page of a paged listing
UPLOADS = 4  # code snapshots the daemon reads into memory at once, from anyone
_UPLOADS = threading.BoundedSemaphore(UPLOADS)
_UPLOADING: set[str] = set()  # users with an upload under way
_UPLOADING_LOCK = threading.Lock()

Params = dict[str, str]
Handler = Callable[[Service, Caller, Params, Any], tuple[int, Any]]
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        # ASCII: \d would also match other scripts' digits ("/v1/jobs/٣" was job 3)
        ROUTES.append((method, re.compile(f"^{pattern}$", re.ASCII), fn))
        return fn

    return deco


_WHOLE = re.compile(r"-?[0-9]{1,18}", re.ASCII)  # fits SQLite's INTEGER and a file offset


def _int(params: Params, key: str, default: int | None = None, minimum: int | None = None) -> int:
    """A whole number from the query or the path: ASCII digits only (int() also takes
    " 10", "1_0" and other scripts' digits), and small enough for SQLite and seek()."""
    raw = params.get(key)
    if raw is None:
        if default is None:
            raise DaemonError(f"missing {key}")
        return default
    if not _WHOLE.fullmatch(raw):
        if key == "id" and raw.isascii() and raw.isdigit():
            raise DaemonError(f"no job {raw}", 404)  # more digits than any id can have
        raise DaemonError(f"{key} must be a whole number, got {raw[:40]!r}")
    value = int(raw)
    if minimum is not None and value < minimum:
        raise DaemonError(f"{key} must be {minimum} or more, got {value}")
    return value


# -- handlers -------------------------------------------------------------------------------------
@route("GET", "/v1/health")
def health(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    return 200, {**d.health(c), "caller": c.user, "caller_is_admin": c.admin, "api": API_VERSION}


@route("POST", "/v1/jobs")
def submit(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
        raise DaemonError('body must be {"spec": {...}}')
    job_id = d.control.submit(c, body["spec"], body.get("token"))
    return 201, {"id": job_id}


@route("POST", "/v1/jobs/preview")
def preview(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
        raise DaemonError('body must be {"spec": {...}}')
    return 200, d.scheduler.preview(c, body["spec"])


@route("GET", "/v1/jobs")
def list_jobs(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    states: tuple[JobState, ...] | None
    if p.get("state"):
        try:
            states = tuple(JobState(s.strip().upper()) for s in p["state"].split(","))
        except ValueError:
            raise DaemonError(f"unknown state in {p['state']!r}") from None
    elif p.get("all"):
        states = None
    else:
        states = QUEUED
    limit = max(0, _int(p, "limit", 0)) or None
    after = _int(p, "after", -1)
    if after >= 0 and limit is None:
        limit = PAGE
    # Summaries only: a listing never carries specs (they can be large, and their
    # command, directory and environment are the owner's business; see `show`).
    tasks = p.get("tasks", "") in ("1", "true", "yes")
    jobs, next_after = d.views.listing(
        c, states, p.get("user") or None, limit, after if after >= 0 else None, tasks=tasks
    )
    return 200, {"jobs": jobs, "now": time.time(), "next_after": next_after}


# A job's path: `42`, or `42.7` for task 7 of array 42 (its own row once it started).
JOB = r"(?P<id>\d+)(?:\.(?P<task>\d+))?"


def _task(p: Params) -> int | None:
    """The task index a path names (`42.7` → 7), None for a plain job id."""
    raw = p.get("task")
    if raw is None:
        return None
    if len(raw) > 9:  # more digits than any array has tasks
        raise DaemonError(f"no job {p['id']}.{raw[:40]}", 404)
    return int(raw)


def _job(d: Service, p: Params, unstarted: str = "") -> JobRow | tuple[JobRow, int]:
    """The row a path names. A task that has not started has no row: with `unstarted`
    empty, (its array, its index); else a 404 saying `unstarted`."""
    row = d.store.get(_int(p, "id"))
    index = _task(p)
    if index is None:
        return row
    task_id = d.store.task_id(row.id, index)
    if task_id is not None:
        return d.store.get(task_id)
    if not row.array_size or index not in row.job_spec().array_plan()[0]:
        raise DaemonError(f"no job {row.id}.{index}", 404)
    if unstarted:
        raise DaemonError(f"job {row.id}.{index} {unstarted}", 404)
    return row, index


@route("GET", rf"/v1/jobs/{JOB}")
def show_job(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    found = _job(d, p)
    if isinstance(found, tuple):
        return 200, d.views.unstarted_task(found[0], found[1], c)
    return 200, d.views.job(found, c, full=True)


@route("POST", rf"/v1/jobs/{JOB}/cancel")
def cancel_job(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    job_id = _int(p, "id")
    now = isinstance(body, dict) and body.get("now") is True
    index = _task(p)
    if index is not None:
        return 200, {"id": f"{job_id}.{index}", "result": d.control.cancel_task(c, job_id, index, now=now)}
    return 200, {"id": job_id, "result": d.control.cancel(c, job_id, now=now)}


@route("GET", rf"/v1/jobs/{JOB}/log")
def job_log(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    job = _job(d, p, unstarted="has not started yet: no log")
    assert not isinstance(job, tuple)
    if job.array_size:
        raise DaemonError(
            f"job {job.id} is an array: each task has its own log (labq logs {job.id}.INDEX; "
            f"labq queue --tasks lists them)"
        )
    if not c.may_see(job.user):
        raise DaemonError(f"job {job.ref}'s log belongs to {job.user}", 403)
    if job.log_removed is not None:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.log_removed))
        raise DaemonError(
            f"job {job.ref}'s log was removed on {when}: {job.user}'s logs passed the per-user cap "
            "(user_log_max_bytes), oldest first",
            410,
        )
    offset = _int(p, "offset", 0, minimum=0)
    limit = min(MAX_LOG_READ, _int(p, "limit", MAX_LOG_READ, minimum=1))
    # `tail=N`: the last N bytes (from a line's start), `before=B` with it: the N bytes
    # that end at byte B. A viewer opens a 256 MiB log at its end, then reads back
    # window by window, and never holds the whole of it.
    tail = _int(p, "tail", 0, minimum=1 if "tail" in p else None)
    before = _int(p, "before", -1, minimum=0 if "before" in p else None)
    if before >= 0 and tail <= 0:
        raise DaemonError("before is only with tail (the bytes that end there)")
    # `stream=stderr`: the current attempt's stderr alone (the log has both, in order).
    stream = p.get("stream") or "all"
    if stream not in ("all", "stderr"):
        raise DaemonError(f"stream is all or stderr, got {stream[:20]!r}")
    path = d.logs.path(job.id) if stream == "all" else d.logs.err_path(job.id, job.attempt)
    # `rank=N`: rank N's output of a job over several nodes (rank 0's is the job's log).
    rank = _int(p, "rank", 0, minimum=0)
    ranks = len(job.rank_list())
    if rank:
        if rank >= max(ranks, 1):
            has = f"ranks 0 to {ranks - 1}" if ranks else "one node: rank 0 only (its log)"
            raise DaemonError(f"job {job.ref} has {has}, no rank {rank}")
        if stream != "all":
            raise DaemonError("a rank's log has its stderr in it (no stream=stderr with rank)")
        path = d.logs.rank_path(job.id, job.attempt, rank)
    data = b""
    size = 0
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if tail > 0:
                end = size if before < 0 else min(before, size)
                start = max(0, end - min(tail, MAX_LOG_READ))
                f.seek(start)
                data = f.read(end - start)
                if start > 0:
                    nl = data.find(b"\n")
                    if 0 <= nl < len(data) - 1:
                        start, data = start + nl + 1, data[nl + 1 :]
                offset = start
                limit = len(data)
            else:
                f.seek(min(offset, size))
                data = f.read(limit)
    except FileNotFoundError:
        pass
    # Cut at a UTF-8 boundary so a multi-byte character is never split between reads.
    if offset + len(data) < size:
        cut = len(data)
        while cut > 0 and (data[cut - 1] & 0xC0) == 0x80:
            cut -= 1
        if cut > 0 and data[cut - 1] >= 0xC0:
            cut -= 1
        data = data[:cut] if cut > 0 else data
    return 200, {
        "data": data.decode("utf-8", errors="replace"),
        "start": offset,
        "offset": offset + len(data),
        "size": size,
        "state": job.state.value,
        "done": job.state.terminal,
        "yours": c.user == job.user,
        "ranks": ranks,
    }


@route("GET", "/v1/code")
def code_settings(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    """Whether jobs run frozen code here, and the size cap: the client checks before it packs."""
    return 200, {"enabled": d.config.code_snapshots, "max_bytes": d.config.code_max_bytes}


@route("POST", "/v1/code")
def code_upload(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    """A code snapshot (snapshot.py's blob, the raw body), kept as the caller's."""
    if not d.config.code_snapshots:
        raise DaemonError("code snapshots are off on this cluster (code_snapshots: false); use --no-snapshot")
    if not isinstance(body, bytes) or not body:
        raise DaemonError("send the snapshot as the request body")
    return 201, d.codes.put(c.uid, body, lambda: d.store.code_refs(time.time() - KEEP_ENDED_S))


@route("GET", rf"/v1/jobs/{JOB}/code")
def job_code(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    """A job's code: what labq read of it, and with `blob=1` the snapshot itself
    (`labq diff` unpacks it). Its owner's and admins' only, as its command is."""
    found = _job(d, p)
    row = found[0] if isinstance(found, tuple) else found
    if not c.may_see(row.user):
        raise DaemonError(f"job {row.ref}'s code belongs to {row.user}", 403)
    ref = row.spec.get("code")
    if not ref:
        raise DaemonError(f"job {row.ref} has no code snapshot: it ran its workdir as it was when it started", 404)
    out: dict[str, Any] = {"id": row.ref, "user": row.user, "code": ref, "meta": d.codes.meta(row.uid, ref["id"])}
    if p.get("blob") in ("1", "true"):
        out["blob"] = base64.b64encode(d.codes.get(row.uid, ref["id"])).decode()
    return 200, out


@route("POST", rf"/v1/jobs/{JOB}/tty")
def job_tty(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    """Type into a shell session: {"data": base64, "winsize": [rows, cols]} (either)."""
    job = _job(d, p, unstarted="has not started yet")
    assert not isinstance(job, tuple)
    if not isinstance(body, dict):
        raise DaemonError('body must be {"data": BASE64, "winsize": [ROWS, COLS]}')
    try:
        data = base64.b64decode(str(body.get("data") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise DaemonError("data must be base64") from None
    sessions.type_into(d.control.launcher, c, job, data, sessions.parse_winsize(body.get("winsize")))
    return 200, {"ok": True}


@route("GET", "/v1/nodes")
def list_nodes(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    history = p.get("history", "") in ("1", "true", "yes")
    views = d.gpus.node_views(history=history, may_see=lambda user: c.admin or (bool(user) and c.may_see(user)))
    return 200, {"nodes": views, "ray": dict(d.ray.status.__dict__), "time": time.time()}


@route("POST", r"/v1/nodes/(?P<ref>[^/]+)/(?P<verb>drain|resume)")
def drain_node(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    from urllib.parse import unquote

    return 200, d.admin.set_drained(c, unquote(p["ref"]), p["verb"] == "drain")


@route("POST", "/v1/nodes/invite")
def invite_node(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    ttl = body.get("ttl_s", 900) if isinstance(body, dict) else 900
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise DaemonError("ttl_s must be a number of seconds")
    return 200, d.team.invite(c, float(ttl))


@route("POST", "/v1/nodes/join")
def join_node(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    if not c.via.startswith("join "):
        raise DaemonError("nodes join over the head's network listener (labq join URL), not the socket", 400)
    body = body if isinstance(body, dict) else {}
    return 200, d.team.join(body.get("secret"), body.get("hostname"), c.via.removeprefix("join "))


@route("GET", "/v1/nodes/head")
def head_epoch(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    peer = c.via.removeprefix("join ") if c.via.startswith("join ") else ""
    return 200, d.team.epoch(peer, d.nodes.lost_addresses(), d.config.node_timeout_s)


@route("POST", r"/v1/nodes/(?P<ref>[^/]+)/remove")
def remove_node(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    from urllib.parse import unquote

    return 200, d.team.leave(c, unquote(p["ref"]))


@route("GET", "/v1/doctor")
def doctor(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    return 200, {"checks": d.doctor.run(c)}


def _since(p: Params, default: str) -> float:
    """The `since` window of a report, in seconds; a bad one is a one-line 400."""
    from scheduler.units import UnitError, parse_duration

    try:
        return parse_duration(p.get("since", default))
    except UnitError as e:
        raise DaemonError(f"since: {e}") from None


@route("GET", "/v1/usage")
def usage(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    since_s = _since(p, "7d")
    by = p.get("by", "user")
    if by not in ("user", "job"):
        raise DaemonError(f"by must be user or job, got {by!r}")
    return 200, d.gpus.usage_report(since_s, by)


@route("GET", "/v1/predictions")
def predictions(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    """Learned runtimes: their error on the finished runs, and what is known per kind."""
    return 200, prediction_report(d.store, c, _since(p, "30d"))


@route("GET", "/v1/quotas")
def show_quotas(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    decision = d.scheduler.decision
    quotas = d.admin.quotas
    seen = d.scheduler.usage_seen
    shares = decision.shares if decision else {}
    # The last pass ranked only those with a job; anyone else's usage is the ledger's, and
    # their factor what it would be were they to submit now (that pass's totals plus
    # theirs). Without this, usage read 0 and the factor 1 once a queue was empty.
    users = set(quotas.known_users()) | set(shares) | {u for u, used in seen.items() if used > 0}
    total_usage = sum(s.usage for s in shares.values())
    total_shares = sum(s.shares for s in shares.values())
    out = []
    for u in sorted(users):
        q = quotas.for_user(u)
        share = shares.get(u)
        used = share.usage if share else seen.get(u, 0.0)
        out.append(
            {
                "user": u,
                **q.__dict__,
                "usage_gpu_s": used,
                "factor": share.factor
                if share
                else fair_share_factor(used, total_usage + used, q.shares, total_shares + q.shares),
                "held_gpus": share.held_gpus if share else 0,
                "running_jobs": share.running_jobs if share else 0,
                "pending_jobs": share.pending_jobs if share else 0,
            }
        )
    return 200, {"quotas": out, "defaults": quotas.defaults.__dict__}


@route("PUT", r"/v1/quotas/(?P<user>[^/]+)")
def set_quota(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict):
        raise DaemonError("body must be a mapping of quota fields")
    return 200, d.admin.set_quota(c, p["user"], body)


AUDIT_MAX = 10_000  # entries in one answer


@route("GET", "/v1/audit")
def audit(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    limit = min(_int(p, "limit", 200, minimum=1), AUDIT_MAX)
    # A researcher sees what concerns them (their own actions, their quota, their jobs),
    # chosen before the limit: filtered after it, a busy admin's log hid all of theirs.
    return 200, {"audit": d.store.audit_log(limit, None if c.admin else c.user)}


@route("POST", "/v1/tokens")
def create_token(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    from scheduler.units import UnitError, parse_duration

    if not isinstance(body, dict) or not isinstance(body.get("user"), str):
        raise DaemonError('body must be {"user": NAME, "expires": DURATION?, "note": TEXT?}')
    expires = body.get("expires")
    try:
        expires_s = parse_duration(expires) if expires not in (None, "", "never") else None
    except UnitError as e:
        raise DaemonError(f"expires: {e}") from None
    note = body.get("note") or ""
    if not isinstance(note, str):
        raise DaemonError("note must be text")
    return 201, d.tokens.create(c, body["user"], expires_s, note)


@route("GET", "/v1/tokens")
def list_tokens(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    return 200, {"tokens": d.tokens.list(c), "now": time.time()}


@route("POST", r"/v1/tokens/(?P<id>[0-9a-f]{1,32})/revoke")
def revoke_token(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    return 200, d.tokens.revoke(c, p["id"])


@route("POST", "/v1/shutdown")
def shutdown(d: Service, c: Caller, p: Params, body: Any) -> tuple[int, Any]:
    mode = (body or {}).get("mode", "refuse") if isinstance(body, dict) else "refuse"
    if mode not in ("refuse", "drain", "kill"):
        raise DaemonError("mode must be refuse, drain or kill")
    return 202, d.admin.request_shutdown(c, mode)


# -- the server -------------------------------------------------------------------------------------
class _RequestHandler(DeadlineHandler):
    server: ApiServer | TcpApiServer

    def address_string(self) -> str:
        return "unix" if isinstance(self.server, ApiServer) else str(self.client_address[0])

    def setup(self) -> None:
        if isinstance(self.server, TcpApiServer) and isinstance(self.request, ssl.SSLSocket):
            # The TLS handshake happens here, in this connection's thread, not in
            # accept(); the watchdog bounds it like any read.
            self.server.watchdog.arm(self.request, self.server.timeout_s)
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                self.server.watchdog.disarm(self.request)
                self.request.close()
                raise
        super().setup()

    def _caller(self) -> Caller:
        daemon = self.server.daemon
        if isinstance(self.server, TcpApiServer):
            auth = self.headers.get("Authorization") or ""
            if not auth and urlparse(self.path).path in ("/v1/nodes/join", "/v1/nodes/head"):
                # A joining node has no token, only its invite (checked by the handler);
                # a joined one asks which head runs (public: a hash). The connection
                # stays counted against its address.
                return Caller(-1, "(joining node)", False, via=f"join {self.client_address[0]}")
            scheme, _, raw = auth.partition(" ")
            caller = daemon.authenticate(raw.strip() if scheme.lower() == "bearer" else None)
            refusal = self.server.authenticated(self.request, caller.user)
            if refusal:
                raise DaemonError(refusal, 503)
            return caller
        try:
            return socket_caller(peer_uid(self.request), daemon.admins)
        except AuthError as e:
            raise DaemonError(str(e), e.status) from None

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A malformed request gets the same JSON error shape as any refusal, not HTML."""
        # http.server treats an unparsable request line as HTTP/0.9 and would omit the
        # status line; answer as HTTP/1.1 and close.
        self.request_version = "HTTP/1.1"
        self.close_connection = True
        self._reply(code, {"error": message or "bad request"})

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        # Writing has a deadline too: a client that stops reading must not hold a thread.
        self.server.watchdog.arm(self.request, self.server.timeout_s)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        daemon = self.server.daemon
        # Tells the scheduler loop to pace itself while requests keep coming.
        daemon.scheduler.api_busy_until = time.monotonic() + 0.05
        try:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self.close_connection = True
                raise DaemonError("Content-Length is not a number") from None
            try:
                caller = self._caller()
            except DaemonError:
                self.close_connection = True  # the unread body would be taken for the next request
                raise
            url = urlparse(self.path)
            # A code snapshot is the one body that is not JSON, and may be larger.
            raw_body = method == "POST" and url.path == "/v1/code"
            most = daemon.config.code_max_bytes if raw_body else MAX_BODY
            if length < 0 or length > most:
                self.close_connection = True
                if raw_body:
                    raise DaemonError(
                        f"the code snapshot is over this daemon's cap of {most} bytes (code_max_bytes); "
                        "use --no-snapshot", 413)
                raise DaemonError(f"request body over {MAX_BODY} bytes", 413)
            if raw_body and length:
                # At most UPLOADS snapshots held in memory at once, and one per user:
                # 64 connections of one user times 20 MiB would otherwise be 1.3 GB,
                # and one user's slow uploads must not hold every slot.
                with _UPLOADING_LOCK:
                    mine = caller.user in _UPLOADING
                    _UPLOADING.add(caller.user)
                if mine:
                    self.close_connection = True
                    raise DaemonError("one code snapshot at a time per user: another upload of yours is under way", 503)
                try:
                    if not _UPLOADS.acquire(timeout=10):
                        self.close_connection = True
                        raise DaemonError("the daemon is busy taking other code snapshots; try again", 503)
                    try:
                        raw = self.rfile.read(length)
                        self.server.watchdog.disarm(self.request)
                        self._route(method, url, caller, raw)
                    finally:
                        _UPLOADS.release()
                finally:
                    with _UPLOADING_LOCK:
                        _UPLOADING.discard(caller.user)
                return
            raw = self.rfile.read(length) if length else b""
            # Read: the handler's own work is not the client's to stretch or ours to cut.
            self.server.watchdog.disarm(self.request)
            body = None
            if raw:
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    raise DaemonError("request body is not valid JSON") from None
            self._route(method, url, caller, body)
        except DaemonError as e:
            self._reply(e.status, {"error": str(e)})
        except UnknownJob as e:
            self._reply(404, {"error": str(e)})
        except StoreError as e:
            self._reply(503, {"error": str(e)})
        except OSError:
            self.close_connection = True  # the client went away, or the watchdog cut it
        except Exception as e:  # noqa: BLE001 - a bug must not kill the daemon
            import logging

            logging.getLogger("labq.api").exception("internal error")
            self._reply(500, {"error": f"internal error in the labq daemon: {type(e).__name__}: {e}"})

    def _route(self, method: str, url: Any, caller: Caller, body: Any) -> None:
        params: Params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        for m, pattern, fn in ROUTES:
            match = pattern.match(url.path)
            if match and m == method:
                params.update(match.groupdict())
                status, payload = fn(self.server.daemon, caller, params, body)
                self._reply(status, payload)
                return
        raise DaemonError(f"no such endpoint: {method} {url.path}", 404)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")


class TcpApiServer(LimitedServer, socketserver.TCPServer):
    """The network listener for remote clients: tokens always, TLS beyond loopback."""

    daemon: Service

    allow_reuse_address = True

    def __init__(self, listen: str, daemon: Service, cert: str = "", key: str = "") -> None:
        host, port = parse_listen(listen)
        if bool(cert) != bool(key):
            raise DaemonError("tls_cert and tls_key go together: give both or neither")
        if not cert and not is_loopback(host):
            raise DaemonError(
                f"listen {listen} reaches the network: give tls_cert and tls_key so tokens never "
                "cross it in clear, or listen on 127.0.0.1 and reach it through an SSH tunnel"
            )
        self.daemon = daemon
        self.setup_limits(daemon.config.max_connections_per_user, daemon.config.max_connections, daemon.config.request_timeout_s)
        self.tls: ssl.SSLContext | None = None
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ctx.load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as e:
                raise DaemonError(f"cannot load tls_cert {cert} / tls_key {key}: {e}") from None
            self.tls = ctx
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), _RequestHandler)
        except OSError as e:
            raise DaemonError(f"cannot listen on {listen}: {e.strerror or e}") from None

    def _key(self, request: Any, client_address: Any) -> tuple[str, bool]:
        # Until it shows a token, a connection counts against its address.
        return f"address {client_address[0]}", True

    def authenticated(self, sock: Any, user: str) -> str:
        """A valid token: the connection counts against its user now, not its address."""
        return self.rekey(sock, f"user {user}")

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{port}"


def prepare_socket_dir(path: Path) -> None:
    """Make (or check) the directory the socket goes in; DaemonError if it is unsafe.
    Called before Ray starts, so a bad socket path stops `labq up` at once."""
    from scheduler import safefs

    if os.geteuid() == 0:
        # Root chmods the socket by name after bind: nobody else may be able to swap
        # what that name points to, anywhere up the path.
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o755)
        problem = safefs.untrusted_ancestor(path.parent)
        if problem:
            raise DaemonError(f"socket directory {path.parent}: {problem}; use one only root can write")
    else:
        # A personal daemon's socket directory (e.g. /tmp/labq-UID) must be its own:
        # one another user made first would let them swap the socket.
        try:
            safefs.private_dir(path.parent, 0o700)
        except safefs.UnsafePath as e:
            raise DaemonError(f"socket directory: {e}") from None


class ApiServer(LimitedServer, socketserver.UnixStreamServer):
    allow_reuse_address = True
    daemon: Service

    def __init__(self, path: Path, daemon: Service) -> None:
        self.daemon = daemon
        self.setup_limits(daemon.config.max_connections_per_user, daemon.config.max_connections, daemon.config.request_timeout_s)
        prepare_socket_dir(path)
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left behind by a daemon that died
            else:
                raise DaemonError(f"another labq daemon already answers on {path}", 409)
            finally:
                probe.close()
        super().__init__(str(path), _RequestHandler)
        # Every local user reaches the same daemon; who they are comes from the kernel.
        os.chmod(path, 0o666)

    def _key(self, request: Any, client_address: Any) -> tuple[str, bool]:
        try:
            return f"uid {peer_uid(request)}", False
        except OSError:
            return "uid ?", False
