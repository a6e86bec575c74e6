"""How many API connections each caller may hold, and for how long.

Before this, ~1,000 idle connections to the Unix socket (or to the TCP listener
without a token, one byte every 20 s) used up the daemon's descriptors and threads,
and every other user was locked out. Now:

- `Limits` caps open connections per key (a Unix uid; a token's user, or an address
  for a TCP connection that has not yet shown a valid token) and in total. Over the
  cap a connection gets one JSON 503 line and is closed. An unauthenticated TCP
  connection that would go over its address's cap instead pushes out the oldest
  unauthenticated one from that address: a real client authenticates with its first
  request, within milliseconds, so only idle ones are lost.
- `Watchdog` closes a connection whose current phase (waiting for a request, reading
  it, the TLS handshake, writing the answer) has outlived its deadline. The deadline
  is for the whole phase, so a client trickling one byte at a time cannot stretch it
  (a per-read timeout would start again with every byte).

One `Limits` and one `Watchdog` per listener; both are thread-safe. The watchdog's
thread owns nothing but its table; the handler threads arm and disarm it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import ssl
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler
from typing import Any


def _hard_close(sock: Any) -> None:
    # The base class's shutdown even for an SSLSocket: it wakes the thread blocked in
    # recv/send on this connection without touching the TLS object it is using.
    with contextlib.suppress(OSError, ValueError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Watchdog:
    def __init__(self, tick: float = 0.25) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[int, tuple[Any, float]] = {}
        self._tick = tick
        self._thread: threading.Thread | None = None
        self.closed = 0  # connections it had to cut (for tests and doctor)

    def arm(self, sock: Any, seconds: float) -> None:
        with self._lock:
            self._deadlines[id(sock)] = (sock, time.monotonic() + seconds)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="labq-conn-watchdog", daemon=True)
                self._thread.start()

    def disarm(self, sock: Any) -> None:
        with self._lock:
            self._deadlines.pop(id(sock), None)

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:
                late = [k for k, (_, d) in self._deadlines.items() if d <= now]
                socks = [self._deadlines.pop(k)[0] for k in late]
                self.closed += len(socks)
            for sock in socks:
                _hard_close(sock)


class Limits:
    def __init__(self, per_key: int, total: int) -> None:
        self.per_key = max(1, per_key)
        self.total = max(1, total)
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}
        self._open = 0
        # Unauthenticated TCP connections per address, oldest first (evictable).
        self._anon: dict[str, OrderedDict[int, Any]] = {}

    def acquire(self, key: str, sock: Any, anon: bool = False) -> str:
        """'' when `sock` may proceed under `key`; else why not (one line)."""
        victims = []
        with self._lock:
            if anon and self._count.get(key, 0) >= self.per_key and self._anon.get(key):
                victims.append(self._evict(key))
            if self._open >= self.total and any(self._anon.values()):
                # Full: the oldest tokenless connection of the address holding the most
                # goes, so that many addresses of one attacker cannot keep everyone out.
                victims.append(self._evict(max((k for k, d in self._anon.items() if d), key=lambda k: len(self._anon[k]))))
            if self._open >= self.total:
                refusal = f"the labq daemon has {self._open} open connections, its limit; try again shortly"
            elif self._count.get(key, 0) >= self.per_key:
                refusal = (
                    f"too many open connections from {key} ({self.per_key}, max_connections_per_user); "
                    "close some and try again"
                )
            else:
                refusal = ""
                self._count[key] = self._count.get(key, 0) + 1
                self._open += 1
                if anon:
                    self._anon.setdefault(key, OrderedDict())[id(sock)] = sock
        for victim in victims:
            _hard_close(victim)
        return refusal

    def _evict(self, key: str) -> Any:
        """Caller holds the lock; `key` has an anonymous connection."""
        _, victim = self._anon[key].popitem(last=False)
        self._count[key] -= 1
        self._open -= 1
        return victim

    def move(self, old: str, new: str, sock: Any) -> str:
        """An anonymous TCP connection showed a token: count it under its user now."""
        with self._lock:
            anon = self._anon.get(old)
            if anon is None or id(sock) not in anon:
                return ""  # already moved, or evicted meanwhile
            if self._count.get(new, 0) >= self.per_key:
                return (
                    f"too many open connections from {new} ({self.per_key}, max_connections_per_user); "
                    "close some and try again"
                )
            del anon[id(sock)]
            self._count[old] -= 1
            self._count[new] = self._count.get(new, 0) + 1
            return ""

    def release(self, key: str, sock: Any) -> None:
        with self._lock:
            anon = self._anon.get(key)
            if anon is not None and anon.pop(id(sock), None) is None:
                return  # pushed out by a newer connection: uncounted then
            if self._count.get(key, 0) > 0:
                self._count[key] -= 1
                self._open -= 1
            if not self._count.get(key):
                self._count.pop(key, None)
                self._anon.pop(key, None)

    def open(self, key: str | None = None) -> int:
        with self._lock:
            return self._open if key is None else self._count.get(key, 0)


class LimitedServer(socketserver.ThreadingMixIn):
    """A threading server whose connections are capped (`Limits`) and timed (`Watchdog`).
    The API's listeners and the metrics endpoint are built on it. Subclasses say how
    a connection is counted (`_key`)."""

    daemon_threads = True
    # The kernel's accept queue: at the default 5 a burst of connects (or a flood from
    # one user) is refused by the kernel before the per-user caps get a say.
    request_queue_size = 1024
    limits: Limits
    watchdog: Watchdog
    timeout_s: float
    _keys: dict[int, str]
    _keys_lock: threading.Lock

    def setup_limits(self, per_key: int, total: int, timeout_s: float) -> None:
        self.limits = Limits(per_key, total)
        self.watchdog = Watchdog()
        self.timeout_s = timeout_s
        self._keys = {}
        self._keys_lock = threading.Lock()

    def _key(self, request: Any, client_address: Any) -> tuple[str, bool]:
        """(the key the connection counts under, whether it is evictable/anonymous)."""
        raise NotImplementedError

    def process_request(self, request: Any, client_address: Any) -> None:
        key, anon = self._key(request, client_address)
        refusal = self.limits.acquire(key, request, anon=anon)
        if refusal:
            refuse(request, refusal)
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        with self._keys_lock:
            self._keys[id(request)] = key
        super().process_request(request, client_address)  # type: ignore[misc]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self.watchdog.disarm(request)
            with self._keys_lock:
                key = self._keys.pop(id(request), "")
            self.limits.release(key, request)

    def rekey(self, sock: Any, new: str) -> str:
        """Count an anonymous connection under `new` from now on ('' or why not)."""
        with self._keys_lock:
            old = self._keys.get(id(sock), "")
        if old == new:
            return ""
        refusal = self.limits.move(old, new, sock)
        if not refusal:
            with self._keys_lock:
                self._keys[id(sock)] = new
        return refusal


def refuse(sock: Any, message: str) -> None:
    """Over a cap: one JSON answer, written without waiting on a slow reader."""
    data = json.dumps({"error": message}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        sock.settimeout(0.5)
        if isinstance(sock, ssl.SSLSocket):
            return  # no handshake yet: closing is all we can say
        sock.sendall(head + data)
    except OSError:
        pass


class DeadlineHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 handler whose waiting and reading run under the server's watchdog."""

    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass

    def handle_one_request(self) -> None:
        # From here until the request is read: waiting for it (a kept-alive connection
        # sits here), then reading it, whatever the pace of the bytes.
        self.server.watchdog.arm(self.request, self.server.timeout_s)
        try:
            super().handle_one_request()
        except OSError:
            self.close_connection = True
        finally:
            self.server.watchdog.disarm(self.request)
