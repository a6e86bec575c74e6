"""The client side of the local API: the CLI and the TUI both go through this.

Standard library only, so `labq submit` starts in well under a second: it must never
import Ray, Textual or pydantic (tests/unit/test_boundaries.py checks it).
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from scheduler.config import client_socket


class ClientError(Exception):
    """A refusal or failure to show the user as one line."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NoDaemon(ClientError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, socket_path: Path | None = None, timeout: float = 30.0) -> None:
        self.socket_path = socket_path or client_socket()
        self.timeout = timeout
        self._conn: _UnixConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        q = {k: v for k, v in query.items() if v is not None and v is not False}
        url = path + ("?" + urlencode(q) if q else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = _UnixConnection(str(self.socket_path), self.timeout)
            try:
                self._conn.request(method, url, body=data, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.close()
                raise NoDaemon(
                    f"no labq daemon at {self.socket_path}: start one with `labq up`"
                ) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the daemon closed: one fresh try.
                self.close()
                if attempt:
                    raise ClientError("the labq daemon closed the connection") from None
            except TimeoutError:
                self.close()
                raise ClientError(
                    f"the labq daemon at {self.socket_path} did not answer within {self.timeout:.0f}s"
                ) from None
            except PermissionError:
                self.close()
                raise ClientError(f"no permission to use {self.socket_path}") from None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise ClientError(f"the daemon sent something that is not JSON (HTTP {resp.status})") from None
        if resp.status >= 400:
            msg = payload.get("error") if isinstance(payload, dict) else None
            raise ClientError(msg or f"HTTP {resp.status}", resp.status)
        return payload

    # One method per command, mirroring the routes in api.py.
    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/v1/health")
        return out

    def submit(self, spec: dict[str, Any]) -> int:
        return int(self.request("POST", "/v1/jobs", {"spec": spec})["id"])

    def jobs(self, all: bool = False, user: str | None = None, state: str | None = None,
             limit: int | None = None) -> list[dict[str, Any]]:  # noqa: A002
        out: list[dict[str, Any]] = self.request(
            "GET", "/v1/jobs", all=1 if all else None, user=user, state=state, limit=limit
        )["jobs"]
        return out

    def job(self, job_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/v1/jobs/{int(job_id)}")
        return out

    def cancel(self, job_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", f"/v1/jobs/{int(job_id)}/cancel")
        return out

    def log(self, job_id: int, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self.request(
            "GET", f"/v1/jobs/{int(job_id)}/log", offset=offset, limit=limit
        )
        return out

    def nodes(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/v1/nodes")
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

    def shutdown(self, mode: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("POST", "/v1/shutdown", {"mode": mode})
        return out
