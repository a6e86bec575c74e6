"""The stdlib client on its own: reading answers, and what it prints for others' text."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from scheduler.client import _Connection
from scheduler.present import clean, clean_log


def serve_slowly(path: Path, body: bytes, chunk: int) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        data = head + body
        view = memoryview(data)
        for i in range(0, len(data), chunk):
            conn.sendall(view[i : i + chunk])
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_large_answer_in_small_pieces_is_read_in_linear_time(tmp_path: Path) -> None:
    # Before: `buf += data` on bytes copied the whole buffer for every piece, so 25 jobs
    # with 4 MB specs made one `labq queue` take 83 s.
    body = b'{"x": "' + b"a" * (64 << 20) + b'"}'
    t = serve_slowly(tmp_path / "s.sock", body, 1024)
    conn = _Connection(str(tmp_path / "s.sock"), timeout=30)
    t0 = time.monotonic()
    status, payload = conn.roundtrip("GET", "/v1/jobs", None)
    took = time.monotonic() - t0
    conn.close()
    t.join()
    assert status == 200 and payload == body
    assert took < 5, took


def test_an_answer_sent_before_the_request_was_read_is_still_read(tmp_path: Path) -> None:
    """Over its connection caps the daemon answers 503 and closes at once: a client whose
    request then hit a closed socket (EPIPE) said "the daemon closed the connection"
    instead of why (seen as a flaky test_security run)."""
    path = tmp_path / "s.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    body = b'{"error": "too many open connections from uid 1001"}'

    def run() -> None:
        conn, _ = srv.accept()
        conn.sendall(f"HTTP/1.1 503 Service Unavailable\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    conn = _Connection(str(path), timeout=5)
    t.join()  # answered and closed before the request is sent
    status, payload = conn.roundtrip("GET", "/v1/jobs", b"x" * (1 << 20))
    conn.close()
    assert (status, payload) == (503, body)


def test_clean_shows_controls_instead_of_sending_them() -> None:
    assert clean("train.py") == "train.py"
    assert clean("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert clean("x\x9b2J") == "x\\x9b2J"
    assert clean("evil\u202etxt") == "evil\\u202etxt"
    assert clean("ünïcødé 日本") == "ünïcødé 日本"
    assert clean("two\nlines", keep="\n") == "two\nlines"
    assert clean_log("ok\t1\n\x1b]0;title\x07") == "ok\t1\n\\x1b]0;title\\x07"


def test_say_writes_one_line_whatever_it_is_given(capsys: object) -> None:
    from scheduler.console import say

    say("5", "bob", "train\nFAKE 6 alice RUNNING\x1b[2J")
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.count("\n") == 1 and "\\n" in out and "\x1b" not in out


def test_idle_scrapers_do_not_keep_metrics_connections() -> None:
    """Red-team finding: prometheus_client's server kept every idle connection (and a
    thread) for good; /metrics now has the API's caps and deadlines."""
    import socket as sk
    import threading
    import time as t
    import urllib.request

    from prometheus_client.registry import CollectorRegistry

    from scheduler.metrics import MetricsServer

    srv = MetricsServer("127.0.0.1", 0, CollectorRegistry(), per_address=4, total=8, timeout_s=1.0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    try:
        idle = [sk.create_connection(("127.0.0.1", port)) for _ in range(10)]  # more than allowed
        t0 = t.monotonic()
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert page is not None and t.monotonic() - t0 < 3  # the newest pushes out the oldest idle
        deadline = t.monotonic() + 5
        while srv.limits.open() and t.monotonic() < deadline:
            t.sleep(0.1)
        assert srv.limits.open() == 0  # the watchdog closed the idle ones
        for s in idle:
            s.close()
    finally:
        srv.shutdown()
        srv.server_close()
