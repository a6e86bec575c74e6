"""The client side of the local API: the CLI and the TUI both go through this.

Standard library only, so `labq submit` starts in well under a second: it must never
import Ray, Textual or pydantic (tests/unit/test_boundaries.py checks it).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from scheduler.paths import client_socket

if TYPE_CHECKING:  # annotations only: the client need not build the TypedDicts
    from scheduler.shapes import Check, JobDetail, JobSummary


class ClientError(Exception):
    """A refusal or failure to show the user as one line."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NoDaemon(ClientError):
    pass


class Untrusted(ClientError):
    """What answers on the socket is not a daemon we may talk to: never retried."""


class Remote:
    """A daemon's TCP listener and the token that identifies us there.

    From `LABQ_URL` (https://head:7450, or http://127.0.0.1:PORT through an SSH
    tunnel) and `LABQ_TOKEN` or the file ~/.config/labq/token (which, like an SSH
    key, must not be readable by others). `LABQ_CA` names a CA bundle for a
    self-signed certificate.
    """

    def __init__(self, url: str, token: str | None = None, ca: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ClientError(f"LABQ_URL must look like https://HOST:PORT, got {url!r}")
        try:
            self.port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ClientError(f"LABQ_URL has a bad port: {url!r}") from None
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.ca = ca if ca is not None else os.environ.get("LABQ_CA") or None
        self.token = token if token is not None else _find_token()

    def connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        if not self.tls:
            return sock
        import ssl  # only remote clients pay for it

        ctx = ssl.create_default_context(cafile=self.ca)
        try:
            return ctx.wrap_socket(sock, server_hostname=self.host)
        except ssl.SSLCertVerificationError as e:
            sock.close()
            hint = "" if self.ca else " (a self-signed certificate? point LABQ_CA at it)"
            raise ClientError(f"cannot verify {self.url}: {e.verify_message}{hint}") from None
        except (ssl.SSLError, OSError):
            sock.close()
            raise


def _find_token() -> str | None:
    env = os.environ.get("LABQ_TOKEN")
    if env:
        return env.strip()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    path = os.path.join(base, "labq", "token")
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_mode & 0o077:
        raise ClientError(f"{path} is readable by others: `chmod 600 {path}` (it is a password)")
    with open(path) as f:
        return f.read().strip() or None


class _Connection:
    """A kept-alive HTTP/1.1 connection over a Unix socket (or TCP to a remote daemon).

    Hand-rolled rather than http.client: that module (and the email parser it pulls
    in) costs ~45 ms of import, a third of `labq submit`'s budget. The daemon always
    answers with Content-Length, so this is all the protocol we need.
    """

    def __init__(self, target: str | Remote, timeout: float) -> None:
        self.auth = ""
        if isinstance(target, Remote):
            self.sock = target.connect(timeout)
            if target.token:
                self.auth = f"Authorization: Bearer {target.token}\r\n"
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(target)
                _check_peer(self.sock, target)
            except (OSError, ClientError):
                self.sock.close()
                raise
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionResetError("daemon closed the connection")
        self.buf += data  # a bytearray grows in place: reading a large answer stays linear

    def roundtrip(self, method: str, url: str, body: bytes | None) -> tuple[int, bytes]:
        head = f"{method} {url} HTTP/1.1\r\nHost: labq\r\nContent-Length: {len(body or b'')}\r\n{self.auth}"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        try:
            self.sock.sendall(head.encode() + b"\r\n" + (body or b""))
        except (BrokenPipeError, ConnectionResetError):
            # A daemon over its connection caps answers 503 and closes without reading
            # the request: that answer may already be here, and it says why.
            self._fill()
        searched = 0
        while (end := self.buf.find(b"\r\n\r\n", searched)) < 0:
            searched = max(0, len(self.buf) - 3)
            self._fill()
        header = bytes(self.buf[:end])
        del self.buf[: end + 4]
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(self.buf) < length:
            self._fill()
        payload = bytes(self.buf[:length])
        del self.buf[:length]
        return status, payload


def _check_peer(sock: socket.socket, path: str) -> None:
    """Talk only to a daemon run by root or by ourselves.

    Anyone can create /tmp/labq-UID/labq.sock for someone else's UID before that user
    starts a daemon, and would then receive their submissions (environment included).
    The kernel says who is listening (SO_PEERCRED); nothing is sent before this check.
    """
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid not in (0, os.getuid()):
        try:
            import pwd

            who = pwd.getpwuid(uid).pw_name
        except (KeyError, ImportError):
            who = f"uid {uid}"
        raise Untrusted(
            f"refusing to talk to {path}: it is served by {who}, not by root or you "
            "(someone else's process; set LABQ_SOCKET to your daemon's socket)"
        )


class Client:
    """The daemon's API: over its Unix socket, or (`remote`, or `LABQ_URL` when no
    socket is named) over TCP with a token."""

    def __init__(
        self, socket_path: Path | None = None, timeout: float = 30.0, remote: Remote | None = None
    ) -> None:
        if remote is None and socket_path is None and os.environ.get("LABQ_URL"):
            remote = Remote(os.environ["LABQ_URL"])
        self.remote = remote
        self.socket_path = socket_path or client_socket()
        self.where = remote.url if remote else str(self.socket_path)
        # Found by looking in the usual places (no --socket, no LABQ_SOCKET): a daemon
        # started with its own socket (`make demo`'s) is elsewhere, and the hint says so.
        self.guessed = remote is None and socket_path is None and not os.environ.get("LABQ_SOCKET")
        self.timeout = timeout
        self._conn: _Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self, busy_until: float) -> _Connection:
        """A connection; while the daemon's accept queue is full (EAGAIN on a Unix
        socket: a burst, or someone flooding it), try again for a few seconds."""
        delay = 0.02
        while True:
            try:
                return _Connection(self.remote or str(self.socket_path), self.timeout)
            except BlockingIOError:
                if time.monotonic() + delay > busy_until:
                    raise ClientError(f"the labq daemon at {self.where} is too busy to accept connections") from None
                time.sleep(delay)
                delay = min(0.5, delay * 2)

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, **query: Any) -> Any:
        q = {k: v for k, v in query.items() if v is not None and v is not False}
        url = path + ("?" + urlencode(q) if q else "")
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        busy_until = time.monotonic() + min(5.0, self.timeout)
        attempt = 0
        while True:
            try:
                if self._conn is None:
                    self._conn = self._connect(busy_until)
                status, raw = self._conn.roundtrip(method, url, data)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.close()
                hint = "is its `listen` on?" if self.remote else "start one with `labq up`"
                if self.guessed:
                    hint += " (one started with LABQ_SOCKET set, as by `make demo`, needs the same LABQ_SOCKET here)"
                raise NoDaemon(f"no labq daemon at {self.where}: {hint}") from None
            except (BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the daemon closed: one fresh try.
                self.close()
                if attempt:
                    raise ClientError("the labq daemon closed the connection") from None
                attempt += 1
            except TimeoutError:
                self.close()
                raise ClientError(
                    f"the labq daemon at {self.where} did not answer within {self.timeout:.0f}s"
                ) from None
            except PermissionError:
                self.close()
                raise ClientError(f"no permission to use {self.where}") from None
            except (OSError, ValueError, IndexError) as e:
                self.close()
                raise ClientError(f"cannot talk to the labq daemon at {self.where}: {e}") from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise ClientError(f"the daemon sent something that is not JSON (HTTP {status})") from None
        if status >= 400:
            msg = payload.get("error") if isinstance(payload, dict) else None
            raise ClientError(msg or f"HTTP {status}", status)
        return payload

    # One method per command, mirroring the routes in api.py.
    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/v1/health")
        return out

    def submit(self, spec: dict[str, Any], token: str | None = None) -> int:
        """Queue a job. The token makes a retry safe: if the daemon stored the job but the
        reply was lost, sending the same token again returns that job instead of a second."""
        token = token or os.urandom(16).hex()
        for attempt in range(3):
            try:
                return int(self.request("POST", "/v1/jobs", {"spec": spec, "token": token})["id"])
            except (NoDaemon, Untrusted):
                raise
            except ClientError as e:
                if e.status or attempt == 2:
                    raise  # the daemon answered (a refusal), or we tried enough
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("not reached")

    def code_settings(self) -> dict[str, Any]:
        """Whether this daemon runs frozen code, and its size cap (issue 17)."""
        out: dict[str, Any] = self.request("GET", "/v1/code")
        return out

    def upload_code(self, blob: bytes) -> dict[str, Any]:
        """Keep a code snapshot (snapshot.take's blob) on the head: its id and summary."""
        out: dict[str, Any] = self.request("POST", "/v1/code", raw=blob)
        return out

    def job_code(self, job_id: int | str, blob: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/v1/jobs/{job_id}/code", blob=1 if blob else None)
        return out

    def tty(self, job_id: int | str, data: bytes = b"", winsize: tuple[int, int] | None = None) -> None:
        """Type into a shell session (and/or say its terminal's new size)."""
        import base64

        body: dict[str, Any] = {"data": base64.b64encode(data).decode()}
        if winsize is not None:
            body["winsize"] = list(winsize)
        self.request("POST", f"/v1/jobs/{job_id}/tty", body)

    def preview(self, spec: dict[str, Any]) -> dict[str, Any]:
        """What would happen if `spec` were submitted now (nothing is queued)."""
        out: dict[str, Any] = self.request("POST", "/v1/jobs/preview", {"spec": spec})
        return out

    def jobs(
        self,
        include_finished: bool = False,
        user: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        tasks: bool = False,
    ) -> list[JobSummary]:
        """Job summaries in id order: the newest `limit`, or (no limit) all of them,
        fetched a page at a time. An array is one row; `tasks`: its started tasks too."""
        query: dict[str, Any] = {"all": 1 if include_finished else None, "user": user, "state": state, "tasks": 1 if tasks else None}
        if limit:
            out: list[JobSummary] = self.request("GET", "/v1/jobs", limit=limit, **query)["jobs"]
            return out
        jobs: list[JobSummary] = []
        after = 0
        while True:
            page = self.request("GET", "/v1/jobs", after=after, **query)
            jobs.extend(page["jobs"])
            if page.get("next_after") is None:
                return jobs
            after = int(page["next_after"])

    def job(self, job_id: int | str) -> JobDetail:
        """`job_id`: 42, or "42.7" for a task of an array."""
        out: JobDetail = self.request("GET", f"/v1/jobs/{_ref(job_id)}")
        return out

    def cancel(self, job_id: int | str, now: bool = False) -> dict[str, Any]:
        """`now`: SIGKILL at once, no grace period (also for a job already stopping)."""
        out: dict[str, Any] = self.request(
            "POST", f"/v1/jobs/{_ref(job_id)}/cancel", {"now": True} if now else None
        )
        return out

    def log(
        self,
        job_id: int | str,
        offset: int = 0,
        limit: int | None = None,
        tail: int | None = None,
        before: int | None = None,
        stderr: bool = False,
        rank: int | None = None,
    ) -> dict[str, Any]:
        """Log bytes from `offset` (at most `limit`); or, with `tail`, the last `tail`
        bytes (ending at `before`), starting at a line. `start` says where `data` begins.
        `rank`: that rank's output of a job over several nodes (`ranks` says how many)."""
        out: dict[str, Any] = self.request(
            "GET",
            f"/v1/jobs/{_ref(job_id)}/log",
            offset=offset,
            limit=limit,
            tail=tail,
            before=before,
            stream="stderr" if stderr else None,
            rank=rank or None,
        )
        return out

    def nodes(self, history: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/v1/nodes", history=1 if history else None)
        return out

    def usage(self, since: str = "7d", by: str = "user") -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/v1/usage", since=since, by=by)
        return out

    def predictions(self, since: str = "30d") -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/v1/predictions", since=since)
        return out

    def drain(self, node: str, drain: bool = True) -> dict[str, Any]:
        verb = "drain" if drain else "resume"
        out: dict[str, Any] = self.request("POST", f"/v1/nodes/{quote(node, safe='')}/{verb}")
        return out

    def invite(self, ttl_s: float) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/v1/nodes/invite", body={"ttl_s": ttl_s})
        return out

    def remove_node(self, node: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", f"/v1/nodes/{quote(node, safe='')}/remove")
        return out

    def doctor(self) -> list[Check]:
        out: list[Check] = self.request("GET", "/v1/doctor")["checks"]
        return out

    def quotas(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/v1/quotas")
        return out

    def set_quota(self, user: str, fields: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.request("PUT", f"/v1/quotas/{quote(user, safe='')}", fields)
        return out

    def audit(self, limit: int = 200) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.request("GET", "/v1/audit", limit=limit)["audit"]
        return out

    def create_token(self, user: str, expires: str | None = None, note: str = "") -> dict[str, Any]:
        out: dict[str, Any] = self.request(
            "POST", "/v1/tokens", {"user": user, "expires": expires, "note": note}
        )
        return out

    def tokens(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.request("GET", "/v1/tokens")["tokens"]
        return out

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", f"/v1/tokens/{quote(token_id, safe='')}/revoke")
        return out

    def shutdown(self, mode: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/v1/shutdown", {"mode": mode})
        return out


def _ref(job_id: int | str) -> str:
    """A job's path segment: digits, or digits.digits (a task); nothing else reaches a URL."""
    text = str(job_id)
    head, dot, tail = text.partition(".")
    if not (head.isascii() and head.isdigit()) or (dot and not (tail.isascii() and tail.isdigit())):
        raise ValueError(f"{text[:40]!r} is not a job id")
    return text
